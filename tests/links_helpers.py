"""Helpers for the emulated-link tests: our namespaces, our delay-line processes, a UDP responder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from serverzoo.clients.links import LinkedHosts
from serverzoo.clients.links.namespaces import list_namespaces

PY = [sys.executable, "-m", "serverzoo"]
needs_root_and_iproute2 = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
    reason="emulated links need root and iproute2 (ip, tc)",
)


def ours() -> list[str]:
    """Namespaces made by this test process."""
    return [n for n in list_namespaces() if n.startswith(f"szoo-{os.getpid()}-")]


def our_delay_lines() -> list[int]:
    """Delay-line processes serving this test process's namespaces (live ones, not zombies)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (
            state != "Z"
            and b"serverzoo.clients.links.delay_line" in argv
            and any(a.startswith(f"szoo-{os.getpid()}-".encode()) for a in argv)
        ):
            found.append(int(pid))
    return found


def check_nothing_left_behind(before: set[str]) -> None:
    assert set(ours()) == before, "a namespace of this test was left behind"
    host_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for dev in ("veth-srv", "veth-cli", "tun-srv", "tun-cli"):
        assert dev not in host_links
    assert not our_delay_lines(), "a delay-line process outlived its link"


def start_responder(link: LinkedHosts) -> tuple[str, int]:
    """`serverzoo udp serve` on the server host: (host, port)."""
    _, url = link.start_ready([*PY, "udp", "serve", "--host", link.server_addr])
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    return host, int(port)
