"""The conversation with one client over a blocking socket.

Shared by every model that gives each connection its own flow of control (iterative,
threads, processes, greenlets): those models differ only in who runs this function,
which is what their files show. Timeouts are deadlines, not per-recv timeouts, so a
client dribbling one byte at a time cannot hold a worker past the header timeout.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from ...protocol import HttpConnection, ResponsePlan, cpu_kernel
from .context import ServerContext
from .io_sizes import RECV_BYTES
from .sendfile import open_slice, stream_file


def serve_connection(
    sock: socket.socket,
    ctx: ServerContext,
    sleep: Callable[[float], None] = time.sleep,
    use_sendfile: bool = True,
    conn: HttpConnection | None = None,
    plans: list[ResponsePlan] | None = None,
) -> None:
    """Answer requests on sock until the client leaves, a timeout fires, or shutdown; then close it.

    conn and plans: a conversation the caller began (its core, and the plans of the first
    bytes it read); by default a fresh one.
    """
    conn = conn or ctx.new_connection()
    limits = ctx.limits
    state = ctx.connections.add(sock, conn)
    try:
        deadline = time.monotonic() + limits.header_timeout
        was_partial = False
        while True:
            if plans is None:  # read the next bytes
                if conn.closed:
                    break
                # idle from here on: a shutdown that comes now wakes recv() by shutting it down; one
                # that came before shows in ctx.stopping (set before drain() looks at this flag)
                state[1] = not conn.has_partial_request
                if ctx.stopping and state[1]:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    late = conn.error_for_timeout()
                    if late is not None:
                        sock.settimeout(limits.write_timeout)
                        send_plan(sock, late, use_sendfile)
                    break
                sock.settimeout(left)
                try:
                    data = sock.recv(RECV_BYTES)
                except TimeoutError:
                    continue  # the deadline check above decides between 408 and a quiet close
                state[1] = False
                was_partial = conn.has_partial_request
                plans = conn.receive(data)
            if plans:
                sock.settimeout(limits.write_timeout)
                for plan in plans:
                    if plan.work is not None:
                        cpu_kernel(plan.work.cpu)
                        if plan.work.wait_s:
                            sleep(plan.work.wait_s)
                    if not send_plan(sock, plan, use_sendfile):
                        return
            if conn.has_partial_request:
                if not was_partial or plans:  # a new request head started: its clock starts now
                    deadline = time.monotonic() + limits.header_timeout
            else:
                deadline = time.monotonic() + limits.keepalive_timeout
            plans = None
    except OSError:
        pass  # reset by peer, broken pipe, write timeout: this client is gone, the server is not
    finally:
        ctx.connections.remove(sock)
        sock.close()


def send_plan(sock: socket.socket, plan: ResponsePlan, use_sendfile: bool = True) -> bool:
    """Send one planned response; False if the file ended early and the connection must drop."""
    if plan.file is None:
        sock.sendall(plan.head + plan.body if plan.body else plan.head)
        return True
    fd = open_slice(plan.file)  # before the head: a file that cannot be opened now gets no 200 head
    try:
        sock.sendall(plan.head, socket.MSG_MORE)
    except BaseException:
        os.close(fd)
        raise
    return stream_file(sock, plan.file, use_sendfile, fd=fd) == plan.file.length
