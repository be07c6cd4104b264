"""Memory per idle connection: how much the server's tree grows for each keep-alive client it holds.

The server is warmed with one request on a connection of its own (so lazily built
caches are not charged to the first idle client), measured, then given N connections
one after another, each sending one request, reading its answer and staying open:
an idle keep-alive client, which the server must now keep (a thread, a process, a
task or a registered socket). Growth of the tree's RSS and PSS divided by the
connections held is the cost of one. A model that serves a bounded number of
connections at once (iterative, prefork, a capped forking server) stops answering
once that many are held; the rest wait in the kernel's listen backlog, costing the
server nothing, and the figure is over the connections it did take.
"""

from __future__ import annotations

import http.client
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any

from .proc_tree import tree_memory, tree_threads

ANSWER_TIMEOUT_S = 1.0  # no answer this long: the server holds no more connections
SETTLE_S = 0.2
MIN_HELD = 10  # below this many, growth per connection is noise, not a figure
FD_MARGIN = 64


@dataclass
class IdleMemory:
    asked: int
    held: int
    rss_before_bytes: int
    rss_after_bytes: int
    pss_before_bytes: int
    pss_after_bytes: int
    processes_after: int
    threads_after: int
    rss_per_connection_bytes: int | None
    pss_per_connection_bytes: int | None
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def raise_fd_limit(connections: int) -> None:
    """Room for the connections in this process (and in a server started after this call)."""
    need = connections + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise OSError(f"{connections} idle connections need {need} open files; the limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _request(conn: http.client.HTTPConnection, path: str) -> bool:
    """One GET on a kept-open connection; False when the server does not answer in time."""
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException):
        return False
    return resp.status == 200 and not resp.will_close


def measure_idle_memory(pid: int, host: str, port: int, path: str, count: int) -> IdleMemory:
    """Hold up to count idle keep-alive connections to the server and measure its tree's growth."""
    warm = http.client.HTTPConnection(host, port, timeout=ANSWER_TIMEOUT_S * 5)
    _request(warm, path)
    warm.close()
    time.sleep(SETTLE_S)
    rss0, pss0 = tree_memory(pid)
    held: list[http.client.HTTPConnection] = []
    note = None
    try:
        for _ in range(count):
            conn = http.client.HTTPConnection(host, port, timeout=ANSWER_TIMEOUT_S)
            if not _request(conn, path):
                conn.close()
                note = (
                    f"held {len(held)} of {count} idle connections: the next got no answer within "
                    f"{ANSWER_TIMEOUT_S:g} s (it waits in the listen backlog)"
                )
                break
            held.append(conn)
        time.sleep(SETTLE_S)
        rss1, pss1 = tree_memory(pid)
        procs, threads = tree_threads(pid)
    finally:
        for conn in held:
            conn.close()
    n = len(held)
    enough = n >= MIN_HELD
    if not enough:
        note = (note or "") + f"; fewer than {MIN_HELD} held, so no per-connection figure"
    return IdleMemory(
        asked=count,
        held=n,
        rss_before_bytes=rss0,
        rss_after_bytes=rss1,
        pss_before_bytes=pss0,
        pss_after_bytes=pss1,
        processes_after=procs,
        threads_after=threads,
        rss_per_connection_bytes=round((rss1 - rss0) / n) if enough else None,
        pss_per_connection_bytes=round((pss1 - pss0) / n) if enough else None,
        note=note,
    )
