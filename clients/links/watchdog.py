"""Removes a run's namespaces once the process that made them is gone, however it went.

Started by LinkedHosts with the read end of a pipe as stdin; the owner holds the write end
and writes "PID STARTTIME" for every process it starts on either host. When the owner exits,
even by SIGKILL, the kernel closes that end and our read returns EOF: we end those processes
(by pid, whether or not they had entered their namespace yet), then everything still inside
the namespaces, then the namespaces. A normal close() does all that first, so then there is
nothing left to do.
"""

from __future__ import annotations

import os
import signal
import sys


def main(names: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner's Ctrl-C is the owner's to handle
    received = bytearray()
    while chunk := os.read(0, 4096):
        received += chunk
    from .namespaces import end_processes, list_namespaces, remove_namespace, still_running

    started = []
    for line in received.decode(errors="replace").splitlines():
        pid, _, start = line.partition(" ")
        if pid.isdigit() and start.isdigit():
            started.append((int(pid), int(start)))
    end_processes(still_running(started))
    present = set(list_namespaces())
    for name in names:
        if name in present:
            remove_namespace(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
