"""Streams: the paced UDP sender, the TCP bulk stream beside it, and the rate sweep."""

from __future__ import annotations

import errno
import socket
import time

from . import wire
from .control import UdpTestError, check_size, connect_udp, cpu_seconds, exchange, new_run_id, size_warnings
from .receiver_stats import MAX_SEQ

DRAIN_S = 0.5  # after the last datagram: time for the queues of a slow link to empty
SLEEP_MIN_NS = 20_000  # ahead of schedule by less than this: send now rather than sleep
SENDER_LIMITED = 0.95  # achieved / target below this: the sender did not keep to the schedule
BLOCKED_CPU_SHARE = 0.6  # ... and used less CPU than this share of the time: it was blocked, not busy
TCP_CHUNK = 64 * 1024
TCP_ANSWER_TIMEOUT_S = 30.0


def run_udp_stream(host: str, port: int, rate_bps: float, size: int, duration: float) -> dict:
    """Send DATA at rate_bps (UDP payload bits) for duration seconds, then fetch the receiver's view."""
    check_size(size)
    if rate_bps <= 0 or duration <= 0:
        raise UdpTestError("rate and duration must be positive")
    planned = rate_bps * duration / (8 * size)
    if planned >= MAX_SEQ:
        raise UdpTestError(
            f"{planned:.0f} datagrams planned; the receiver tracks at most {MAX_SEQ}: shorten --time or enlarge --size"
        )
    run = new_run_id()
    with connect_udp(host, port) as sock:
        hello = exchange(sock, wire.HELLO, run, 0, {"size": size})
        warnings = size_warnings(sock, size, hello.get("rcvbuf"))
        sender = _send_paced(sock, run, rate_bps, size, duration)
        time.sleep(DRAIN_S)
        receiver = exchange(sock, wire.REPORT, run, 1, {"sent": sender["sent"]})
    if "error" in receiver:
        raise UdpTestError(f"the responder: {receiver['error']}")
    if sender["sender_limited"]:
        reached = f"it reached {sender['achieved_bps'] / 1e6:.1f} of {rate_bps / 1e6:.1f} Mbit/s"
        if sender["cpu_s"] < BLOCKED_CPU_SHARE * sender["elapsed_s"]:
            warnings.append(
                f"sender held back: {reached} while mostly idle, blocked in send() on a full socket "
                "buffer: a queue on this host pushed back (an emulated link's rate limiter, or a "
                "slow NIC); a bottleneck further away would drop instead"
            )
        else:
            warnings.append(
                f"sender-limited: {reached} with its CPU busy (one Python thread): the sender, "
                "not the path, set this rate"
            )
    if receiver.get("socket_drops"):
        warnings.append(
            f"the responder's socket dropped {receiver['socket_drops']} datagrams (receive buffer "
            "full): the receiving process, not the path, lost those"
        )
    return {
        "proto": "udp",
        "target_bps": rate_bps,
        "size": size,
        "duration_s": duration,
        "sender": sender,
        "receiver": receiver,
        "warnings": warnings,
    }


def _send_paced(sock: socket.socket, run: int, rate_bps: float, size: int, duration: float) -> dict:
    interval_ns = size * 8e9 / rate_bps
    buf = bytearray(size)
    pack, send, clock, sleep = wire.HEADER.pack_into, sock.send, time.monotonic_ns, time.sleep
    magic, kind = wire.MAGIC, wire.DATA
    errors: dict[str, int] = {}
    seq = 0
    max_behind_ns = 0
    cpu0 = cpu_seconds()
    start = clock()
    end = start + int(duration * 1e9)
    scheduled = float(start)
    while True:
        now = clock()
        if now >= end:
            break
        ahead = scheduled - now
        if ahead > SLEEP_MIN_NS:
            sleep(ahead / 1e9)
            continue
        max_behind_ns = max(max_behind_ns, -ahead)
        pack(buf, 0, magic, kind, run, seq, now)
        try:
            send(buf)
        except OSError as exc:  # ENOBUFS, or ECONNREFUSED from an earlier ICMP error: counted, not fatal
            name = type(exc).__name__ if exc.errno is None else _errno_name(exc.errno)
            errors[name] = errors.get(name, 0) + 1
            if isinstance(exc, ConnectionRefusedError) and errors[name] > 100:
                raise UdpTestError(
                    "the target refuses datagrams (ICMP port unreachable): the responder went away"
                ) from None
        seq += 1
        scheduled += interval_ns
    elapsed = (clock() - start) / 1e9
    failed = sum(errors.values())
    sent = seq - failed
    achieved = sent * size * 8 / elapsed
    return {
        "attempted": seq,
        "sent": sent,
        "bytes": sent * size,
        "elapsed_s": elapsed,
        "achieved_bps": achieved,
        "send_errors": errors,
        "max_behind_ms": max_behind_ns / 1e6,
        "sender_limited": achieved < SENDER_LIMITED * rate_bps,
        "cpu_s": cpu_seconds() - cpu0,
    }


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def run_tcp_stream(host: str, port: int, duration: float) -> dict:
    """One TCP connection pushing bytes as fast as it can for duration seconds; the responder
    counts what arrived and says so, so 'every byte delivered' is checked, not assumed."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UdpTestError(f"cannot resolve {host}: {exc.strerror}") from None
    chunk = bytes(TCP_CHUNK)
    sent = 0
    cpu0 = cpu_seconds()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10.0)
        start = time.monotonic()
        try:
            sock.connect(addr)
        except OSError as exc:
            raise UdpTestError(
                f"TCP connect to {host}:{port} failed: {exc.strerror or exc} (`udp serve --no-tcp`, or not serverzoo?)"
            ) from None
        connected = time.monotonic()
        end = connected + duration
        try:
            sock.sendall(b"S")
            while time.monotonic() < end:
                sent += sock.send(chunk)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(TCP_ANSWER_TIMEOUT_S)
            answer = b""
            while not answer.endswith(b"\n") and len(answer) < 100:
                part = sock.recv(100)
                if not part:
                    break
                answer += part
        except OSError as exc:
            raise UdpTestError(f"TCP stream to {host}:{port} failed after {sent} bytes: {exc}") from None
        done = time.monotonic()
    try:
        received, span_ns = (int(x) for x in answer.split())
    except ValueError:
        raise UdpTestError(f"the responder's TCP sink answered {answer[:60]!r}, not 'BYTES SPAN_NS'") from None
    return {
        "proto": "tcp",
        "duration_s": duration,
        "sender": {
            "bytes": sent,
            "connect_ms": (connected - start) * 1e3,
            "elapsed_s": done - connected,
            "goodput_bps": received * 8 / (done - connected),
            "cpu_s": cpu_seconds() - cpu0,
        },
        "receiver": {
            "bytes": received,
            "span_s": span_ns / 1e9,
            "throughput_bps": received * 8e9 / span_ns if span_ns else None,
            "complete": received == sent,
        },
    }


def rate_steps(start_bps: float, max_bps: float) -> list[float]:
    steps = []
    rate = start_bps
    while rate <= max_bps and len(steps) < 32:
        steps.append(rate)
        rate *= 2
    return steps


def run_sweep(
    host: str,
    port: int,
    size: int,
    step_s: float,
    start_bps: float,
    max_bps: float,
    loss_threshold: float = 0.1,
    refine: int = 3,
) -> dict:
    """Double the rate until loss exceeds loss_threshold percent (or the sender tops out), then
    bisect between the last clean rate and the first lossy one `refine` times."""
    if not 0 < start_bps <= max_bps:
        raise UdpTestError("the sweep needs 0 < start rate <= max rate")
    steps: list[dict] = []

    def step(rate: float) -> bool:
        result = run_udp_stream(host, port, rate, size, step_s)
        steps.append(result)
        return result["receiver"]["loss_percent"] <= loss_threshold

    clean = lossy = None
    sender_limit = None
    for rate in rate_steps(start_bps, max_bps):
        ok = step(rate)
        if not ok:
            lossy = rate
            break
        clean = rate
        if steps[-1]["sender"]["sender_limited"]:
            sender_limit = steps[-1]["sender"]["achieved_bps"]
            break
    if lossy is not None and clean is not None:
        for _ in range(refine):
            mid = (clean + lossy) / 2
            if step(mid):
                clean = mid
            else:
                lossy = mid
    summary = {
        "loss_threshold_percent": loss_threshold,
        "max_clean_bps": clean,
        "loss_begins_bps": lossy,
        "loss_begins_achieved_bps": next(
            (s["sender"]["achieved_bps"] for s in steps if s["target_bps"] == lossy), None
        ),
        "sender_limit_bps": sender_limit,
    }
    return {"steps": steps, "summary": summary}
