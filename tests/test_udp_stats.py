"""Unit tests of the UDP arithmetic: loss net of reordering, duplicates, RFC 3550 jitter,
percentiles, the wire format and option parsing. No sockets."""

from __future__ import annotations

import click
import pytest

from serverzoo.clients.udp import wire
from serverzoo.clients.udp.control import UdpTestError, check_size, parse_target
from serverzoo.clients.udp.receiver_stats import ReceiverStats
from serverzoo.clients.udp.roundtrip import percentiles
from serverzoo.clients.udp.udp_cli import parse_rate

MS = 1_000_000  # ns


def feed(stats: ReceiverStats, seqs: list[int], transit_ns: int = MS, gap_ns: int = MS, size: int = 100) -> None:
    """Datagram seq was sent at seq*gap and arrives, in list order, at a steady pace."""
    for i, seq in enumerate(seqs):
        stats.record(seq, sent_ns=seq * gap_ns, arrival_ns=i * gap_ns + transit_ns, size=size)


def test_in_order_stream_has_nothing_to_report():
    s = ReceiverStats()
    feed(s, list(range(1000)))
    out = s.summary(sent=1000)
    assert (out["received"], out["lost"], out["duplicates"], out["reordered"]) == (1000, 0, 0, 0)
    assert out["loss_percent"] == 0.0
    assert out["bytes"] == 100_000


def test_loss_is_net_of_reordering_and_duplicates():
    s = ReceiverStats()
    # 4 and 6 never arrive; 2 arrives after 3 (late, not lost); 5 arrives twice
    feed(s, [0, 1, 3, 2, 5, 5, 7])
    out = s.summary(sent=8)
    assert out["received"] == 6
    assert out["lost"] == 2
    assert out["duplicates"] == 1
    assert out["reordered"] == 1
    assert out["reorder_max_distance"] == 1
    assert out["loss_percent"] == pytest.approx(25.0)


def test_heavy_reordering_loses_nothing():
    s = ReceiverStats()
    feed(s, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    out = s.summary(sent=10)
    assert out["lost"] == 0
    assert out["reordered"] == 9
    assert out["reorder_max_distance"] == 9


def test_tail_loss_needs_the_senders_count():
    s = ReceiverStats()
    feed(s, list(range(10)))
    assert s.summary()["lost"] == 0  # the receiver alone cannot see the last two vanish
    assert s.summary(sent=12)["lost"] == 2
    assert s.summary(sent=12)["expected"] == 12


def test_duplicate_of_everything_counts_once():
    s = ReceiverStats()
    feed(s, [0, 1, 2] * 4)
    out = s.summary(sent=3)
    assert (out["received"], out["duplicates"], out["lost"]) == (3, 9, 0)


def test_out_of_range_sequence_numbers_are_counted_not_tracked():
    s = ReceiverStats(max_seq=100)
    s.record(100, 0, 0, 10)
    s.record(-1, 0, 0, 10)
    s.record(5, 0, 0, 10)
    assert s.out_of_range == 2
    assert s.received == 1


def test_jitter_of_constant_transit_is_zero():
    s = ReceiverStats()
    feed(s, list(range(200)), transit_ns=7 * MS)
    assert s.summary()["jitter_ms"] == 0.0


def test_jitter_follows_rfc3550_recurrence():
    # transit alternates 1 ms, 2 ms: |D| = 1 ms for every packet after the first,
    # so J_k = J_{k-1} + (1 - J_{k-1}) / 16 -> J_k = 1 - (15/16)^k ms
    s = ReceiverStats()
    for i in range(40):
        transit = MS if i % 2 == 0 else 2 * MS
        s.record(i, i * 10 * MS, i * 10 * MS + transit, 100)
    assert s.summary()["jitter_ms"] == pytest.approx(1 - (15 / 16) ** 39, rel=1e-12)


def test_jitter_uses_arrival_order_and_skips_duplicates():
    s = ReceiverStats()
    # seq 1 sent at 10 ms arrives at 31 ms (transit 21), seq 0 sent at 0 arrives at 32 ms (transit 32)
    s.record(1, 10 * MS, 31 * MS, 100)
    s.record(0, 0, 32 * MS, 100)
    s.record(0, 0, 40 * MS, 100)  # a duplicate: ignored for jitter
    assert s.summary()["jitter_ms"] == pytest.approx(11 / 16)


def test_throughput_over_the_receivers_span():
    s = ReceiverStats()
    feed(s, list(range(11)), gap_ns=MS, size=1000)  # 10 gaps of 1 ms carry 10 x 1000 B
    assert s.throughput_bps() == pytest.approx(8_000_000)
    assert ReceiverStats().throughput_bps() is None


def test_percentiles_nearest_rank():
    out = percentiles([float(v) for v in range(100, 0, -1)])
    assert (out["p50"], out["p90"], out["p99"], out["p99.9"]) == (50, 90, 99, 100)
    assert (out["min"], out["max"], out["count"]) == (1, 100, 100)
    assert percentiles([]) == {"count": 0}
    assert percentiles([3.0])["p99.9"] == 3.0


def test_wire_round_trip_and_garbage():
    data = wire.make(wire.DATA, 7, 123456789012, 42, b"x" * 10)
    hdr = wire.parse(data)
    assert (hdr.kind, hdr.run, hdr.seq, hdr.sent_ns) == (wire.DATA, 7, 123456789012, 42)
    assert wire.parse(b"") is None
    assert wire.parse(b"SZu1") is None  # truncated
    assert wire.parse(b"XXXX" + data[4:]) is None  # wrong magic
    assert wire.parse(data[:4] + b"Z" + data[5:]) is None  # unknown kind
    assert wire.body_json(wire.make(wire.HELLO, 1, 0, 0, b"\xff\xfe")) is None
    assert wire.body_json(wire.make(wire.HELLO, 1, 0, 0, b"[1, 2]")) is None
    assert wire.body_json(wire.make_json(wire.HELLO, 1, 0, 0, {"a": 1})) == {"a": 1}


@pytest.mark.parametrize(
    "text, bps",
    [("100M", 100e6), ("1.5G", 1.5e9), ("500k", 500e3), ("2000", 2000.0), ("10Mbit", 10e6), ("10 mbps", 10e6)],
)
def test_parse_rate(text, bps):
    assert parse_rate(text) == bps


@pytest.mark.parametrize("text", ["", "fast", "-5M", "0", "10T"])
def test_parse_rate_rejects(text):
    with pytest.raises(click.BadParameter):
        parse_rate(text)


def test_parse_target_forms():
    assert parse_target("udp://127.0.0.1:9000/") == ("127.0.0.1", 9000)
    assert parse_target("localhost:53") == ("localhost", 53)
    assert parse_target("[::1]:7") == ("::1", 7)
    for bad in ("127.0.0.1", "http://x:1/", "udp://:5/", "host:99999"):
        with pytest.raises(UdpTestError):
            parse_target(bad)


def test_size_bounds():
    check_size(wire.HEADER_SIZE)
    check_size(wire.MAX_DATAGRAM)
    for bad in (wire.HEADER_SIZE - 1, wire.MAX_DATAGRAM + 1):
        with pytest.raises(UdpTestError):
            check_size(bad)
