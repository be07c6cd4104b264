"""`udp serve` and `udp test` as real processes on loopback."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from serverzoo.clients.udp import wire
from serverzoo.clients.udp.control import UdpTestError, exchange, parse_target
from serverzoo.clients.udp.roundtrip import run_roundtrip
from serverzoo.clients.udp.stream import run_tcp_stream, run_udp_stream

PY = [sys.executable, "-m", "serverzoo"]


class Responder:
    """A `serverzoo udp serve` child; stopped by PID with SIGTERM (then SIGKILL)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*PY, "udp", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("READY udp://"):
            self.stop()
            raise RuntimeError(f"no READY line: {line!r} {self.proc.stderr.read().decode()[-500:]}")
        self.url = line.split()[1]
        self.host, self.port = parse_target(self.url)

    def stop(self, timeout: float = 5.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, err


@pytest.fixture
def responder():
    r = Responder()
    yield r
    r.stop()


def test_exact_counts_without_loss_on_loopback(responder):
    # 1 s at 16 Mbit/s in 1000 B datagrams = 2000 datagrams, well within the receive buffer
    out = run_udp_stream(responder.host, responder.port, 16e6, 1000, 1.0)
    tx, rx = out["sender"], out["receiver"]
    assert tx["sent"] == rx["expected"] == rx["received"]
    assert 1900 <= tx["sent"] <= 2001
    assert (rx["lost"], rx["duplicates"], rx["reordered"], rx["out_of_range"]) == (0, 0, 0, 0)
    assert rx["bytes"] == tx["bytes"] == tx["sent"] * 1000
    assert rx["socket_drops"] == 0
    assert tx["send_errors"] == {}


def test_request_response_udp_beside_tcp(responder):
    out = run_roundtrip(responder.host, responder.port, size=100, count=50, duration=20)
    kinds = [(r["proto"], r["connection"]) for r in out["results"]]
    assert kinds == [("udp", "datagram"), ("tcp", "keep-alive"), ("tcp", "fresh")]
    assert out["rounds"] == 50
    for r in out["results"]:
        assert r["failed"] == 0
        assert r["rtt_ms"]["count"] == 50
        assert 0 < r["rtt_ms"]["p50"] <= r["rtt_ms"]["p99"] <= r["rtt_ms"]["max"]
    assert out["results"][2]["connect_ms"]["count"] == 50


def test_tcp_stream_delivers_every_byte(responder):
    out = run_tcp_stream(responder.host, responder.port, 0.3)
    assert out["receiver"]["complete"] is True
    assert out["receiver"]["bytes"] == out["sender"]["bytes"] > 0


def test_responder_survives_a_garbage_flood():
    r = Responder()
    try:
        rng = random.Random(6)
        target = (r.host, r.port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            payloads = [b"", b"SZu1", wire.MAX_DATAGRAM * b"\xff", bytes(wire.HEADER_SIZE)]
            for kind in b"DPHRAZ":  # every kind with a random or truncated body, and one unknown kind
                payloads.append(
                    wire.make(
                        kind,
                        rng.getrandbits(32),
                        rng.getrandbits(64),
                        rng.getrandbits(64),
                        rng.randbytes(rng.randrange(0, 50)),
                    )
                )
                payloads.append(wire.make(kind, 1, 2, 3)[: rng.randrange(4, wire.HEADER_SIZE)])
            payloads.append(wire.make(wire.REPORT, 5, 0, 0, b'{"sent": "many"}'))
            payloads.append(wire.make(wire.REPORT, 5, 0, 0, b'{"sent": -3}'))
            payloads.append(wire.make(wire.DATA, 9, (1 << 64) - 1, 0))  # a sequence number far out of range
            payloads += [rng.randbytes(rng.randrange(0, 1500)) for _ in range(3000)]
            for p in payloads:
                try:
                    s.sendto(p, target)
                except BlockingIOError:
                    time.sleep(0.001)
        # TCP garbage too: an unknown role byte, a half-sent line, a connection dropped at once
        for junk in (b"GET / HTTP/1.1\r\n\r\n", b"E", b"S" + rng.randbytes(1000), b""):
            with socket.create_connection(target, timeout=5) as c:
                c.sendall(junk)
        # still alive and still exact
        out = run_udp_stream(r.host, r.port, 8e6, 500, 0.5)
        assert out["receiver"]["received"] == out["sender"]["sent"] > 0
        assert out["receiver"]["lost"] == 0
    finally:
        code, err = r.stop()
    assert code == 0, err
    assert "Traceback" not in err
    counters = json.loads(err.split("stopped; ", 1)[1])
    assert counters["foreign"] >= 3000


def test_sigterm_stops_promptly_with_code_zero():
    r = Responder()
    start = time.monotonic()
    code, err = r.stop()
    assert code == 0
    assert time.monotonic() - start < 3
    assert "Traceback" not in err


def test_echo_mode_returns_any_datagram():
    r = Responder("--mode", "echo", "--no-tcp")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(b"hello, anything", (r.host, r.port))
            assert s.recvfrom(100)[0] == b"hello, anything"
            # a stream test needs counting: an echo-only responder is named as the reason
            s.connect((r.host, r.port))
            with pytest.raises(UdpTestError, match="echoes"):
                exchange(s, wire.HELLO, 1, 0, {}, attempts=2)
    finally:
        r.stop()


def test_nothing_listening_is_one_clear_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UdpTestError, match="nothing listens"):
        run_udp_stream("127.0.0.1", port, 1e6, 100, 0.2)


def test_cli_json_and_summary(responder, tmp_path):
    path = tmp_path / "out.json"
    done = subprocess.run(
        [*PY, "udp", "test", responder.url, "--rate", "4M", "--size", "1000", "--time", "0.3", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "0 lost" in done.stdout
    doc = json.loads(path.read_text())
    assert doc["schema"] == "serverzoo.udp/1"
    assert doc["machine"]["cpus"] == os.cpu_count()
    assert doc["options"]["rate_bps"] == 4e6
    assert doc["link"] is None
    assert doc["results"][0]["receiver"]["received"] == doc["results"][0]["sender"]["sent"]


def test_cli_sweep_is_bounded_and_summarised(responder):
    done = subprocess.run(
        [
            *PY,
            "udp",
            "test",
            responder.url,
            "--mode",
            "sweep",
            "--sweep-from",
            "2M",
            "--sweep-to",
            "8M",
            "--step-time",
            "0.2",
            "--json",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [s["target_bps"] for s in doc["results"]][:3] == [2e6, 4e6, 8e6][: len(doc["results"])]
    assert set(doc["summary"]) >= {"max_clean_bps", "loss_begins_bps", "sender_limit_bps"}


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["udp", "test"], 2, "missing TARGET"),
        (["udp", "test", "nonsense"], 1, "expected udp://HOST:PORT/"),
        (["udp", "test", "127.0.0.1:9", "--size", "5"], 1, "at least 28"),
        (["udp", "test", "127.0.0.1:9", "--rate", "fast"], 2, "positive bit rate"),
        (["udp", "test", "127.0.0.1:9", "--link", "veth"], 2, "not both"),
        (["udp", "serve", "--host", "203.0.113.1"], 2, "cannot listen"),  # TEST-NET-3: not ours, bind fails
    ],
)
def test_cli_bad_input_is_one_line(args, code, text):
    done = subprocess.run([*PY, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == code
    assert text in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_compare_on_loopback_prints_the_table(tmp_path):
    path = tmp_path / "compare.json"
    done = subprocess.run(
        [
            *PY,
            "udp",
            "compare",
            "--links",
            "",
            "--time",
            "0.3",
            "--step-time",
            "0.2",
            "--sweep-from",
            "2M",
            "--sweep-to",
            "4M",
            "--count",
            "20",
            "--cpus",
            "",
            "--json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "| loopback |" in done.stdout
    doc = json.loads(path.read_text())
    assert doc["schema"] == "serverzoo.udp-compare/1"
    place = doc["places"][0]
    assert place["tcp_stream"]["receiver"]["complete"] is True
    assert place["udp_stream"]["receiver"]["lost"] == 0
