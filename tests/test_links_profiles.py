"""Link profiles and shaping plans: pure logic, no root needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serverzoo.clients.links import namespaces, shaping
from serverzoo.clients.links.profiles import LinkProfile, ProfileError, get_profile, load_profiles
from serverzoo.clients.links.shaping import KernelSupport, LinkUnavailable, plan

NO_NETEM = KernelSupport(
    netem=False, netem_error="Specified qdisc kind is unknown", tbf=True, tbf_error=None, nft=True, nft_error=None
)
WITH_NETEM = KernelSupport(netem=True, netem_error=None, tbf=True, tbf_error=None, nft=True, nft_error=None)
BARE = KernelSupport(
    netem=False, netem_error="unknown", tbf=False, tbf_error="unknown", nft=False, nft_error="nft is not installed"
)
EGRESS = [("S", "veth-srv", "C", "veth-cli"), ("C", "veth-cli", "S", "veth-srv")]


def argv_lines(p) -> list[str]:
    return [" ".join(step.argv) for step in p.steps]


def test_default_links_file_has_the_named_profiles():
    profiles = load_profiles()
    assert {"veth", "lan", "wan", "lossy"} <= set(profiles)
    assert profiles["wan"].rtt_ms == 40 and profiles["wan"].rate_mbit == 100 and profiles["wan"].delay_ms == 20
    assert profiles["lossy"].loss_percent == 1
    assert profiles["veth"].summary() == "nothing added"


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[links.a]\nspeed = 3\n", "unknown key(s) speed"),
        ("[links.a]\nrate_mbit = -1\n", "must be a number >= 0"),
        ("[links.a]\nrate_mbit = 0\n", "rate_mbit must be > 0"),
        ("[links.a]\nloss_percent = 120\n", "at most 100"),
        ("[links.a]\njitter_ms = 2\n", "needs a delay"),
        ("[links.a]\nrtt_ms = 'far'\n", "must be a number"),
        ("links = 3\n", "no [links.NAME] tables"),
        ("[links]\na = 1\n", "must be a table"),
        ("[links.a\n", "links file"),
    ],
)
def test_bad_links_files_are_one_clear_error(tmp_path, toml, message):
    path = tmp_path / "links.toml"
    path.write_text(toml)
    with pytest.raises(ProfileError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_profiles(str(path))


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ProfileError, match="known: veth, lan"):
        get_profile("moon")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profiles("/nonexistent/links.toml")


def test_delay_without_netem_or_tun_is_missing_not_skipped():
    p = plan(get_profile("wan"), NO_NETEM, EGRESS)  # (NO_NETEM has no TUN either: tun defaults to False)
    assert p.steps == [] and p.line is None
    assert len(p.missing) == 1 and "sch_netem" in p.missing[0] and "40 ms RTT" in p.missing[0]
    assert "TUN device for the userspace delay line" in p.missing[0]


def test_loss_without_netem_drops_on_arrival_with_nftables():
    p = plan(get_profile("lossy"), NO_NETEM, EGRESS)
    nft = [s for s in p.steps if s.what == "nftables"]
    # the rule for traffic leaving the server is installed on the client side, and the other way round
    assert [s.argv[3] for s in nft] == ["C", "S"]
    assert 'iifname "veth-cli" numgen random mod 1000000 < 10000' in nft[0].stdin  # where it arrives
    assert "hook prerouting" in nft[0].stdin
    assert not any("netem" in line for line in argv_lines(p))
    assert any("nftables" in a for a in p.applied)


def test_rate_without_netem_is_a_root_tbf():
    p = plan(LinkProfile("x", rate_mbit=100), NO_NETEM, EGRESS)
    tbf = [line for line in argv_lines(p) if " tbf " in line]
    assert tbf == [
        "tc -n S qdisc add dev veth-srv root handle 10: tbf rate 100mbit burst 16384 latency 50ms",
        "tc -n C qdisc add dev veth-cli root handle 10: tbf rate 100mbit burst 16384 latency 50ms",
    ]


def test_with_netem_delay_and_loss_go_to_netem_and_rate_to_its_tbf_child():
    p = plan(LinkProfile("x", rtt_ms=40, jitter_ms=2, rate_mbit=1000, loss_percent=0.5), WITH_NETEM, EGRESS)
    lines = argv_lines(p)
    assert "tc -n S qdisc add dev veth-srv root handle 1: netem delay 20ms 2ms loss 0.5% limit 10000" in lines
    assert "tc -n S qdisc add dev veth-srv parent 1:1 handle 10: tbf rate 1000mbit burst 125000 latency 50ms" in lines
    assert not [s for s in p.steps if s.what == "nftables"]
    assert p.missing == []


def test_nothing_to_shape_changes_nothing():
    p = plan(get_profile("veth"), BARE, EGRESS)
    assert p.steps == [] and p.missing == []


def test_every_missing_part_is_named():
    p = plan(LinkProfile("x", rtt_ms=10, rate_mbit=5, loss_percent=1), BARE, EGRESS)
    text = " ".join(p.missing)
    assert "delay" in text and "rate 5 Mbit/s" in text and "loss 1%" in text


def test_without_root_or_iproute2_support_is_refused(monkeypatch):
    monkeypatch.setattr(namespaces.os, "geteuid", lambda: 1000)
    with pytest.raises(LinkUnavailable, match="need root"):
        namespaces.require_support()
    monkeypatch.setattr(namespaces.os, "geteuid", lambda: 0)
    monkeypatch.setattr(namespaces.shutil, "which", lambda name: None)
    with pytest.raises(LinkUnavailable, match="iproute2"):
        namespaces.require_support()


def test_missing_helper_binary_is_named():
    with pytest.raises(LinkUnavailable, match="not installed"):
        shaping.sh(["serverzoo-no-such-binary"])


def test_net_links_lists_every_profile():
    done = subprocess.run(
        [sys.executable, "-m", "serverzoo", "net", "links"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for name in load_profiles():
        assert any(line.startswith(name + " ") for line in done.stdout.splitlines())


def test_only_lossy_links_give_up_segmentation_offload():
    assert not [s for s in plan(LinkProfile("x", rate_mbit=10), NO_NETEM, EGRESS).steps if s.what == "gso"]
    gso = [s.argv for s in plan(get_profile("lossy"), NO_NETEM, EGRESS).steps if s.what == "gso"]
    assert gso == [
        ["ip", "-n", "S", "link", "set", "dev", "veth-srv", "gso_max_segs", "1"],
        ["ip", "-n", "C", "link", "set", "dev", "veth-cli", "gso_max_segs", "1"],
    ]
