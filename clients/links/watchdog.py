"""Removes a run's namespaces once the process that made them is gone, however it went.

Started by LinkedHosts with the read end of a pipe as stdin; the owner holds the write end.
When the owner exits, even by SIGKILL, the kernel closes that end and our read returns EOF.
A normal close() removes the namespaces first, so then there is nothing left to do.
"""

from __future__ import annotations

import os
import signal
import sys


def main(names: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner's Ctrl-C is the owner's to handle
    while os.read(0, 4096):
        pass
    from .namespaces import list_namespaces, remove_namespace
    present = set(list_namespaces())
    for name in names:
        if name in present:
            remove_namespace(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
