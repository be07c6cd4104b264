"""What the userspace delay line achieves on this machine, measured across real namespaces
(`serverzoo net check`): how close its delay comes to the setting, and how much it can carry."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime

from .namespaces import LinkedHosts
from .profiles import LinkProfile

BULK_FILE_BYTES = 1 << 34  # sparse: no disk used; more than any transfer here can read
RECV_CHUNK = 1 << 20


def measure_delay(rtt_ms: float = 40.0, pings: int = 50) -> dict:
    """UDP echo round trips across a delay line set to rtt_ms and across a bare veth (what the two
    hosts' stacks and the echo tools take without any link), and the line's own lateness. Each
    way, the line adds about (RTT over the line - RTT over the veth) / 2."""
    base = _echo(LinkedHosts(LinkProfile("check-base")), pings, 5)
    line = _echo(
        LinkedHosts(LinkProfile("check-delay", rtt_ms=rtt_ms), delay_line=True), pings, pings * rtt_ms / 1e3 * 3 + 5
    )
    out = {
        "rtt_ms_set": rtt_ms,
        "rtt_ms": line["rtt_ms"],
        "failed": line["failed"],
        "veth_rtt_ms": base["rtt_ms"],
        "lateness_us": line["lateness_us"],
    }
    if line["rtt_ms"].get("count") and base["rtt_ms"].get("count"):
        out["one_way_ms"] = {p: (line["rtt_ms"][p] - base["rtt_ms"]["p50"]) / 2 for p in ("p50", "p99")}
    return out


def _echo(hosts: LinkedHosts, pings: int, seconds: float) -> dict:
    from ..udp.roundtrip import run_roundtrip

    with hosts as link:
        _, url = link.start_ready([sys.executable, "-m", "serverzoo", "udp", "serve", "--host", link.server_addr])
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        with link.client_namespace():
            result = run_roundtrip(link.server_addr, port, 64, pings, seconds, tcp=False)["results"][0]
        stats = (link.line.stats() if link.line else None) or {}
    return {
        "rtt_ms": result["rtt_ms"],
        "failed": result["failed"],
        "lateness_us": {
            leg: stats[leg]["lateness"] for leg in ("server_to_client", "client_to_server") if leg in stats
        },
    }


def measure_capacity(seconds: float = 3.0, warmup: float = 0.5, rtt_ms: float = 0.2) -> dict:
    """One TCP bulk download (HTTP, the select model with sendfile) across a delay line with
    rtt_ms and no rate cap: what the forwarder carries, in Mbit/s and packets/s."""
    with tempfile.TemporaryDirectory(prefix="szoo-capacity-") as root:
        with open(os.path.join(root, "bulk.bin"), "wb") as f:
            f.truncate(BULK_FILE_BYTES)
        with (
            LinkedHosts(LinkProfile("check-capacity", rtt_ms=rtt_ms), delay_line=True) as link,
            link.server_process("select", root) as server,
        ):
            with link.client_namespace():
                sock = socket.create_connection((link.server_addr, server.port), timeout=10)
            try:
                sock.sendall(b"GET /bulk.bin HTTP/1.1\r\nHost: capacity\r\n\r\n")
                buf = bytearray(RECV_CHUNK)
                start = time.monotonic()
                mark, received, before = None, 0, None
                while (now := time.monotonic()) - start < warmup + seconds:
                    if mark is None and now - start >= warmup:
                        mark, received, before = now, 0, link.line.stats()
                    n = sock.recv_into(buf)
                    if not n:
                        break
                    received += n
                elapsed = time.monotonic() - (mark or start)
                after = link.line.stats()
            finally:
                sock.close()
    if not before or not after:
        raise RuntimeError("the delay line stopped answering during the capacity measurement")

    def delta(key: str, leg: str | None = None) -> float:
        return (after[leg][key] - before[leg][key]) if leg else (after[key] - before[key])

    return {
        "mbit_s": received * 8 / elapsed / 1e6,
        "seconds": round(elapsed, 3),
        "rtt_ms": rtt_ms,
        "packets_s": delta("sent", "server_to_client") / elapsed,
        "ack_packets_s": delta("sent", "client_to_server") / elapsed,
        "forwarder_cpu_share": delta("cpu_s") / elapsed,
        "forwarder_saturated_share": delta("saturated_s") / elapsed,
        "forwarder_cpus": after["cpus"],
        "forwarder_policy": after["policy"],
        "lateness_us": after["server_to_client"]["lateness"],
    }


def measure(seconds: float = 3.0) -> dict:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "delay": measure_delay(),
        "capacity": measure_capacity(seconds),
    }
