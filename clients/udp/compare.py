"""`serverzoo udp compare`: the TCP-vs-UDP table, on loopback and across emulated links.

For each place (loopback, then each named link) it starts a responder, then measures from
the client side: a UDP stream at a fixed offered rate, a rate sweep for where loss begins,
one TCP stream, and request/response latency (UDP, TCP keep-alive, TCP fresh). Links this
kernel cannot build are listed as such, with the reason, not measured without their parts.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from contextlib import ExitStack

from ..links import LinkedHosts, LinkUnavailable
from ..links.profiles import ProfileError
from . import roundtrip, stream
from .control import parse_target

SCHEMA = "serverzoo.udp-compare/1"


def _start_local_responder(stack: ExitStack, cpu: int | None) -> str:
    preexec = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "serverzoo", "udp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        preexec_fn=preexec,
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()

    stack.callback(stop)
    line = proc.stdout.readline().decode() if select.select([proc.stdout], [], [], 20)[0] else ""
    if not line.startswith("READY "):
        raise RuntimeError("the local responder did not start")
    return line.split()[1]


def measure_place(
    host: str,
    port: int,
    rate_bps: float,
    size: int,
    seconds: float,
    rr_count: int,
    sweep_from: float,
    sweep_to: float,
    step_s: float,
) -> dict:
    return {
        "udp_stream": stream.run_udp_stream(host, port, rate_bps, size, seconds),
        "udp_sweep": stream.run_sweep(host, port, size, step_s, sweep_from, sweep_to),
        "tcp_stream": stream.run_tcp_stream(host, port, seconds),
        "roundtrip": roundtrip.run_roundtrip(host, port, 64, rr_count, seconds),
    }


def run_compare(
    links: list[str],
    links_file: str | None,
    rate_bps: float,
    size: int,
    seconds: float,
    rr_count: int,
    sweep_from: float,
    sweep_to: float,
    step_s: float,
    cpus: tuple[int, int] | None,
    progress=print,
) -> dict:
    server_cpu, client_cpu = cpus or (None, None)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    args = (rate_bps, size, seconds, rr_count, sweep_from, sweep_to, step_s)
    places = []
    progress("loopback ...")
    with ExitStack() as stack:
        host, port = parse_target(_start_local_responder(stack, server_cpu))
        places.append({"place": "loopback", "link": None, **measure_place(host, port, *args)})
    for name in links:
        progress(f"link {name} ...")
        try:
            with LinkedHosts(name, links_file) as link:
                argv = [sys.executable, "-m", "serverzoo", "udp", "serve", "--host", link.server_addr]
                if server_cpu is not None:
                    argv = ["taskset", "-c", str(server_cpu), *argv]
                _, url = link.start_ready(argv)
                host, port = parse_target(url)
                with link.client_namespace():
                    measured = measure_place(host, port, *args)
            # described once it is down: a delay line's final figures (and warnings) cover the measurements
            places.append({"place": f"link {name}", "link": link.describe(), **measured})
        except (LinkUnavailable, ProfileError) as exc:
            places.append({"place": f"link {name}", "link": None, "unavailable": str(exc)})
    return {"places": places}


PARTS = ("udp_stream", "udp_sweep", "tcp_stream", "roundtrip")


def document_problem(doc: object) -> str | None:
    """Why doc is not a complete udp-compare result (one phrase), or None when it is."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        return "not a udp-compare result"
    for key in ("machine", "options", "places"):
        if not isinstance(doc.get(key), (dict, list)):
            return f"no {key!r}"
    for i, place in enumerate(doc["places"]):
        if not isinstance(place, dict) or "place" not in place:
            return f"place {i} has no name"
        if "unavailable" not in place:
            missing = [k for k in PARTS if not isinstance(place.get(k), dict)]
            if missing:
                return f"{place['place']} has no {', '.join(missing)}"
    return None


def mbit(bps: float | None) -> str:
    """Bits per second as the table shows them, in Mbit/s (no unit)."""
    return "-" if bps is None else f"{bps / 1e6:.0f}" if bps >= 10e6 else f"{bps / 1e6:.1f}"


def rtt_by_kind(place: dict) -> dict[str, dict]:
    """The latency results keyed 'udp', 'keep-alive', 'fresh'."""
    return {"udp" if r["proto"] == "udp" else r["connection"]: r for r in place["roundtrip"]["results"]}


def table(doc: dict) -> tuple[list[str], list[list[str]]]:
    """The figures a reader compares, one row per place: (header cells, rows of cells).

    The one source of the comparison table: `udp compare` prints it, `serverzoo report` shows it."""
    o = doc["options"]
    head = [
        "path",
        f"UDP {mbit(o['rate_bps'])} Mbit/s offered: received, lost, jitter",
        "UDP clean up to (loss <= 0.1%)",
        "TCP stream goodput, every byte?",
        "RTT p50 / p99 ms: UDP · TCP keep-alive · TCP fresh",
    ]
    rows = []
    for p in doc["places"]:
        if "unavailable" in p:
            name = p["place"].removeprefix("link ")  # the row names the link already
            reason = p["unavailable"].removeprefix(f"link {name!r} cannot be built here: ")
            rows.append([p["place"], f"not measured: {reason}", "", "", ""])
            continue
        u = p["udp_stream"]["receiver"]
        tx = p["udp_stream"]["sender"]
        held = f" (sender reached only {mbit(tx['achieved_bps'])})" if tx["sender_limited"] else ""
        s = p["udp_sweep"]["summary"]
        if s["max_clean_bps"] is None:
            clean = f"lossy from the first rate tried, {mbit(o['sweep_from_bps'])} Mbit/s"
        else:
            clean = f"{mbit(s['max_clean_bps'])} Mbit/s"
            if s["sender_limit_bps"] and not s["loss_begins_bps"]:
                clean += " (the sender's own limit)"
        t = p["tcp_stream"]
        rtt = " · ".join(
            f"{r['rtt_ms'].get('p50', float('nan')):.3f} / {r['rtt_ms'].get('p99', float('nan')):.3f}"
            + (f" ({r['failed']} lost)" if r["failed"] else "")
            for r in p["roundtrip"]["results"]
        )
        rows.append(
            [
                p["place"],
                f"{mbit(u['throughput_bps'])} Mbit/s, {u['loss_percent']:.2f}% lost, {u['jitter_ms']:.3f} ms{held}",
                clean,
                f"{mbit(t['sender']['goodput_bps'])} Mbit/s, {'yes' if t['receiver']['complete'] else 'NO'}",
                rtt,
            ]
        )
    return head, rows


def markdown_table(doc: dict) -> str:
    """The comparison table as Markdown."""
    head, rows = table(doc)
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    )
