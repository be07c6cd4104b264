"""The userspace delay line across real namespaces: delay, order, rate, loss and bytes measured
from the client host, and nothing of it left after close() or after its owner is killed.

These build the delay line explicitly (delay_line=True), so they run the same on a kernel with
netem; on one without (this project's test machine) it is what a delay profile gets anyway."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from serverzoo.clients.links import LinkedHosts, LinkProfile
from serverzoo.clients.links.namespaces import list_namespaces, namespace_pids
from serverzoo.clients.udp.roundtrip import run_roundtrip
from serverzoo.clients.udp.stream import run_udp_stream

from .links_helpers import PY, check_nothing_left_behind, needs_root_and_iproute2, ours, start_responder

pytestmark = [
    needs_root_and_iproute2,
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun: no TUN devices"),
]

ETH_IP_UDP = 14 + 20 + 8  # the line counts an Ethernet header per packet, as tbf does on the veth


@pytest.fixture(autouse=True)
def nothing_left_behind():
    before = set(ours())
    yield
    check_nothing_left_behind(before)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_round_trip_and_connect_time_match_the_setting():
    with LinkedHosts(LinkProfile("t-rtt", rtt_ms=40), delay_line=True) as link:
        assert link.describe()["via"] == "delay-line"
        assert "delay 20 ms each way (40 ms RTT): userspace delay line" in link.applied[0]
        forwarder = link.line.pid
        assert forwarder in namespace_pids(link.server_ns)  # so every cleanup path finds it
        host, port = start_responder(link)
        with link.client_namespace():
            out = run_roundtrip(host, port, 64, 12, 10, tcp=True)
        udp, fresh = out["results"][0], out["results"][2]
        assert udp["failed"] == 0 and fresh["failed"] == 0
        assert 39.5 < udp["rtt_ms"]["p50"] < 45, udp["rtt_ms"]
        assert 39.5 < fresh["connect_ms"]["p50"] < 45, fresh["connect_ms"]  # SYN out, SYN-ACK back
        live = link.describe()["delay_line"]["stats"]
        assert live["client_to_server"]["sent"] > 0 and live["server_to_client"]["lateness"]["count"] > 0
    assert not alive(forwarder)
    final = link.describe()["delay_line"]["stats"]  # the figures outlive the link
    assert final["server_to_client"]["sent"] >= live["server_to_client"]["sent"]


def test_order_is_kept_while_jitter_varies_the_delay():
    with LinkedHosts(LinkProfile("t-jitter", rtt_ms=10, jitter_ms=3), delay_line=True) as link:
        host, port = start_responder(link)
        with link.client_namespace():
            out = run_udp_stream(host, port, 2e6, 500, 0.6)  # a datagram every 2 ms
    rx = out["receiver"]
    assert rx["received"] == out["sender"]["sent"] > 200
    assert rx["reordered"] == 0
    assert rx["jitter_ms"] > 0.3, rx  # +-3 ms each way; an unjittered line is far below


def test_rate_limited_delayed_link_is_measured_within_tolerance():
    with LinkedHosts(LinkProfile("t-rate", rtt_ms=20, rate_mbit=20), delay_line=True) as link:
        host, port = start_responder(link)
        with link.client_namespace():
            out = run_udp_stream(host, port, 40e6, 1000, 1.5)  # offer twice the rate
        counts = link.line.stats()["client_to_server"]
    expected = 20e6 * 1000 / (1000 + ETH_IP_UDP)
    measured = out["receiver"]["throughput_bps"]
    assert abs(measured - expected) / expected < 0.10, (measured, expected)
    assert counts["queue_drops"] > 0  # the excess was dropped at the queue's tail, not somewhere else


def test_download_across_wan_is_byte_exact(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "blob.bin").write_bytes(data)
    with LinkedHosts("wan", delay_line=True) as link:
        assert any(a.startswith("rate 100 Mbit/s") for a in link.applied)
        with link.server_process("threading", str(tmp_path)) as server, link.client_namespace():
            start = time.monotonic()
            conn = http.client.HTTPConnection(link.server_addr, server.port, timeout=30)
            conn.request("GET", "/blob.bin")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            seconds = time.monotonic() - start
    assert resp.status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert seconds > 0.25  # 3 MB at 100 Mbit/s, after a slow start at 40 ms per round trip


def test_lossy_delayed_link_loses_about_the_set_rate():
    with LinkedHosts(LinkProfile("t-lossy", rtt_ms=10, loss_percent=5), delay_line=True) as link:
        assert "loss 5% each way: the delay line (seeded random drop)" in link.applied
        host, port = start_responder(link)
        with link.client_namespace():
            out = run_udp_stream(host, port, 16e6, 500, 1.0)  # 4 000 datagrams
        counts = link.line.stats()["client_to_server"]
    rx, sent = out["receiver"], out["sender"]["sent"]
    assert sent > 3000
    path_lost = rx["lost"] - (rx["socket_drops"] or 0)
    assert 3.5 < 100 * path_lost / sent < 6.5, rx  # 5% of 4 000: sigma ~0.35 points
    # the line's own drops are what went missing (give or take the control datagrams, lost and sent again)
    assert abs(counts["lost"] - path_lost) <= 0.01 * sent, (counts, rx)


HOLDER = """
import sys, time
from serverzoo.clients.links import LinkedHosts, LinkProfile
with LinkedHosts(LinkProfile("t-hold", rtt_ms=10), delay_line=True) as link:
    print(link.server_ns, link.client_ns, link.line.pid, flush=True)
    time.sleep(30)
"""


@pytest.mark.parametrize("frozen", [False, True], ids=["line-sees-eof", "line-frozen"])
def test_the_line_and_namespaces_go_when_the_owner_is_killed(frozen):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([proc.stdout], [], [], 20)[0], "the holder never came up"
        server_ns, client_ns, forwarder = proc.stdout.readline().split()
        assert alive(int(forwarder))
        if frozen:  # it cannot notice its owner is gone: the watchdog must find it in the namespace
            os.kill(int(forwarder), signal.SIGSTOP)
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while (
            alive(int(forwarder)) or {server_ns, client_ns} & set(list_namespaces())
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(int(forwarder)), "the delay line outlived its owner"
        assert not {server_ns, client_ns} & set(list_namespaces())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


def test_net_check_measures_the_line_and_links_quote_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the measurement goes here, not to ~/.cache
    done = subprocess.run([*PY, "net", "check", "--seconds", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^tun \(userspace delay line\) +yes$", done.stdout, re.MULTILINE), done.stdout
    assert "UDP echo RTT p50" in done.stdout and "capacity: TCP bulk" in done.stdout, done.stdout
    saved = json.loads((tmp_path / "serverzoo" / "delay-line.json").read_text())
    capacity = saved["capacity"]["mbit_s"]
    assert 35 < saved["delay"]["rtt_ms"]["p50"] < 50 and capacity > 1
    # a link asking for more than that is built, and says the forwarder, not the profile, sets its rate
    with LinkedHosts(LinkProfile("t-fast", rtt_ms=1, rate_mbit=round(capacity * 3) + 1), delay_line=True) as link:
        assert link.applied[-1].startswith("WARNING: rate"), link.applied
        assert f"{capacity:.0f} Mbit/s" in link.applied[-1]
    links = subprocess.run([*PY, "net", "links"], capture_output=True, text=True, timeout=60).stdout
    wan = next(line for line in links.splitlines() if line.startswith("wan "))
    assert wan.endswith(" ok") or "ok: userspace delay line (no netem here); the delay line carried" in wan, wan
