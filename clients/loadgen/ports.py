"""Local ports: spreading connections over loopback source addresses, and saying when ports ran out.

Every connection to one server address needs a distinct (source address, source port) pair.
From one source address the kernel hands out ports of net.ipv4.ip_local_port_range, and a
port stays taken while its connection sits in TIME_WAIT, so a long run of short connections
can use them all up; connect then fails with EADDRNOTAVAIL. On loopback every address of
127.0.0.0/8 is local, so connecting from many of them multiplies the ports available.
"""

from __future__ import annotations

LOOPBACK_ADDRESSES = (1 << 24) - 2  # 127.0.0.1 ... 127.255.255.254
PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


class LoopbackSources:
    """Source addresses 127.0.0.1, 127.0.0.2, ... (count of them), handed out in turn."""

    __slots__ = ("count", "i")

    def __init__(self, count: int, start: int = 0) -> None:
        self.count = count
        self.i = start % count

    def next(self) -> str:
        i = self.i
        self.i = i + 1 if i + 1 < self.count else 0
        k = i + 1
        return f"127.{k >> 16}.{(k >> 8) & 255}.{k & 255}"


def local_port_range() -> tuple[int, int] | None:
    try:
        with open(PORT_RANGE_FILE) as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):
        return None
    return low, high


def time_wait_sockets() -> int | None:
    """TCP sockets in TIME_WAIT on this host (network namespace) now."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("tw") + 1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def explain_no_local_port(failed: int, sources: int) -> str:
    """One line: what ran out, how many, what to change."""
    span = local_port_range()
    tw = time_wait_sockets()
    ports = f"ports {span[0]}-{span[1]} ({span[1] - span[0] + 1} per source address)" if span else "the local ports"
    waiting = f"; {tw} in TIME_WAIT now" if tw is not None else ""
    fix = (
        "widen net.ipv4.ip_local_port_range or use more with --loopback-sources"
        if sources
        else "connect from more loopback addresses with --loopback-sources N (or all), or widen "
        "net.ipv4.ip_local_port_range"
    )
    return f"{failed} connects found no free local port: {ports} were all in use (open or in TIME_WAIT{waiting}); {fix}"
