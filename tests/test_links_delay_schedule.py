"""The delay line's scheduling (sans-IO, a fake clock) and how a plan chooses and describes it."""

from __future__ import annotations

import random

import pytest

from serverzoo.clients.links.delay_schedule import ETHERNET_HEADER, Direction, Lateness, LineSettings
from serverzoo.clients.links.profiles import LinkProfile, get_profile
from serverzoo.clients.links.shaping import KernelSupport, plan

NO_NETEM_TUN = KernelSupport(
    netem=False,
    netem_error="Specified qdisc kind is unknown",
    tbf=True,
    tbf_error=None,
    nft=True,
    nft_error=None,
    tun=True,
    tun_error=None,
)
NO_NETEM_NO_TUN = KernelSupport(
    netem=False,
    netem_error="Specified qdisc kind is unknown",
    tbf=True,
    tbf_error=None,
    nft=True,
    nft_error=None,
    tun=False,
    tun_error="open: No such file or directory",
)
WITH_NETEM = KernelSupport(
    netem=True, netem_error=None, tbf=True, tbf_error=None, nft=True, nft_error=None, tun=True, tun_error=None
)
EGRESS = [("S", "veth-srv", "C", "veth-cli"), ("C", "veth-cli", "S", "veth-srv")]
MEASURED = {
    "date": "2025-01-01T00:00:00+00:00",
    "capacity": {"mbit_s": 300.0, "packets_s": 25000.0},
    "delay": {"rtt_ms_set": 40, "one_way_ms": {"p50": 20.3, "p99": 21.0}},
}


def line(**kw) -> Direction:
    return Direction(LineSettings(**kw), random.Random(7))


def drain(d: Direction, until: float) -> list[tuple[float, object]]:
    return list(d.due(until))


def test_a_packet_leaves_after_the_delay_and_not_before():
    d = line(delay_s=0.020)
    assert d.offer(1.000, "a", 100) == pytest.approx(1.020)
    assert d.next_departure() == pytest.approx(1.020)
    assert drain(d, 1.0199) == []
    assert drain(d, 1.020) == [(pytest.approx(1.020), "a")]
    assert d.next_departure() is None


def test_jitter_varies_the_delay_within_its_bounds_and_keeps_order():
    d = line(delay_s=0.020, jitter_s=0.005)
    arrivals = [i * 0.001 for i in range(2000)]
    departures = [d.offer(t, i, 100) for i, t in enumerate(arrivals)]
    delays = [dep - t for dep, t in zip(departures, arrivals)]
    assert departures == sorted(departures)  # never reordered
    assert min(delays) >= 0.015 - 1e-9 and max(delays) <= 0.025 + 1e-9
    assert max(delays) - min(delays) > 0.008  # it does vary
    assert [p for _, p in drain(d, 10.0)] == list(range(2000))


def test_order_wins_over_a_shorter_jitter_draw():
    # a packet drawn shorter than the one before it waits for it: departure = max(own, previous)
    d = line(delay_s=0.010, jitter_s=0.009)
    first = d.offer(0.0, "a", 100)
    second = d.offer(0.0001, "b", 100)
    assert second >= first


def test_rate_serializes_back_to_back_packets():
    rate = 12e6
    d = line(delay_s=0.005, rate_bps=rate, queue_s=1.0)
    wire = (1500 + ETHERNET_HEADER) * 8 / rate
    departures = [d.offer(0.0, i, 1500) for i in range(10)]
    for i, dep in enumerate(departures):
        assert dep == pytest.approx(0.005 + (i + 1) * wire)
    # an idle wire: a later packet only pays its own serialization
    assert d.offer(10.0, "late", 1500) == pytest.approx(10.0 + wire + 0.005)


def test_a_full_queue_drops_at_the_tail_and_counts_it():
    rate = 8e6  # 1000 bytes of wire per ms
    d = line(rate_bps=rate, queue_s=0.0105)
    outcomes = [d.offer(0.0, i, 1000 - ETHERNET_HEADER) for i in range(30)]
    accepted = [o for o in outcomes if o is not None]
    # packet k waits k ms for the wire: 0..10 ms are within the 10.5 ms queue, the rest are dropped
    assert len(accepted) == 11 and outcomes[11:] == [None] * 19
    assert d.queue_drops == 19 and d.offered == 30
    # once the wire has drained, packets are taken again
    assert d.offer(0.020, "x", 500) is not None


def test_loss_is_random_at_the_rate_and_repeatable_with_a_seed():
    def run(seed: int) -> list[bool]:
        d = Direction(LineSettings(loss=0.05, limit_packets=10**6), random.Random(seed))
        return [d.offer(i * 1e-4, i, 100) is None for i in range(20000)]

    first = run(3)
    assert 0.045 < sum(first) / len(first) < 0.055  # 5% of 20 000: sigma ~0.15 points
    assert run(3) == first and run(4) != first


def test_the_packet_limit_bounds_an_unrated_queue():
    d = line(delay_s=1.0, limit_packets=5)
    assert [d.offer(0.0, i, 100) is not None for i in range(7)] == [True] * 5 + [False] * 2
    assert d.limit_drops == 2 and d.counters()["max_queued"] == 5


def test_lateness_percentiles():
    late = Lateness()
    for us in [10] * 98 + [500, 25_000]:
        late.record(us / 1e6)
    s = late.summary()
    assert s == {"count": 100, "p50_us": 10, "p99_us": 500, "max_us": 25_000}
    assert Lateness().summary()["p50_us"] is None


def test_settings_from_a_profile():
    s = LineSettings.from_profile(LinkProfile("x", rtt_ms=40, jitter_ms=2, rate_mbit=100, loss_percent=1, queue_ms=30))
    assert (s.delay_s, s.jitter_s, s.rate_bps, s.queue_s, s.loss) == (0.020, 0.002, 100e6, 0.030, 0.01)
    assert LineSettings.from_profile(get_profile("veth")).rate_bps is None


# -- choosing and describing the delay line -------------------------------------------------
def test_without_netem_a_delay_profile_gets_the_delay_line_and_says_so():
    p = plan(get_profile("wan"), NO_NETEM_TUN, EGRESS)
    assert p.missing == [] and p.steps == []  # no tc, no nft: the line applies the whole profile
    assert p.line == LineSettings(delay_s=0.020, rate_bps=100e6, queue_s=0.05)
    text = "\n".join(p.applied)
    assert "delay 20 ms each way (40 ms RTT): userspace delay line (TUN, netem unavailable)" in text
    assert "rate 100 Mbit/s each way" in text
    assert "precision and capacity on this machine are not measured" in text


def test_netem_stays_first_choice_and_profiles_without_delay_keep_the_veth():
    assert plan(get_profile("wan"), WITH_NETEM, EGRESS).line is None
    assert plan(get_profile("slow"), NO_NETEM_TUN, EGRESS).line is None
    assert plan(get_profile("lossy"), NO_NETEM_TUN, EGRESS).line is None
    forced = plan(get_profile("wan"), WITH_NETEM, EGRESS, delay_line=True)
    assert forced.line is not None and "chosen over netem" in forced.applied[0]


def test_without_netem_or_tun_delay_fails_naming_both():
    p = plan(get_profile("wan"), NO_NETEM_NO_TUN, EGRESS)
    assert p.line is None and p.steps == []
    assert len(p.missing) == 1 and "sch_netem" in p.missing[0] and "No such file" in p.missing[0]


def test_what_net_check_measured_is_quoted_with_warnings_where_the_profile_asks_too_much():
    lan = plan(LinkProfile("fast", rtt_ms=0.2, rate_mbit=1000), NO_NETEM_TUN, EGRESS, measured=MEASURED)
    assert lan.applied[-2].startswith(
        "WARNING: delay 0.1 ms each way is small beside what the line adds by itself (0.30 ms each way"
    )
    assert "this link's delay is about 0.40 ms each way" in lan.applied[-2]
    assert lan.applied[-1].startswith("WARNING: rate 1000 Mbit/s is more than the delay line carried")
    assert "300 Mbit/s" in lan.applied[-1] and "the forwarder, not the profile, limits the rate" in lan.applied[-1]
    wan = plan(get_profile("wan"), NO_NETEM_TUN, EGRESS, measured=MEASURED)
    assert wan.applied[-2].startswith("the line adds 0.30 ms each way to its setting (p50, measured 2025-01-01")
    assert wan.applied[-1].startswith("the delay line carried 300 Mbit/s")
    lossy = plan(LinkProfile("x", rtt_ms=10, loss_percent=2), NO_NETEM_TUN, EGRESS, measured=MEASURED)
    assert "loss 2% each way: the delay line (seeded random drop)" in lossy.applied
    assert lossy.applied[-1].endswith("it caps a link without a rate")
