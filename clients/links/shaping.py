"""What the kernel offers for shaping, and the commands that give a link its profile.

Two ways to build a link:
- a veth pair shaped by the kernel (first choice). Each direction is shaped on the egress of
  the veth end that sends it:
- delay and jitter: netem;
- rate: tbf (a child of netem when netem is used, else the root qdisc);
- loss: netem where the kernel has it; else an nftables rule on the *receiving* side's
  prerouting hook that drops at random (dropping on the sender's own output hook would hand
  the sending socket an EPERM, which no real network does).
A lossy link is also set to MTU-sized packets (gso_max_segs 1): else the stack hands the veth
64 KiB TCP super-packets, and one random drop would take out ~45 wire packets at once. Links
without loss keep the offload, as a real host with TSO does (tbf cuts super-packets itself).
- where a profile needs delay and the kernel has no netem: two TUN devices joined by the
  userspace delay line (delay_line.py), which applies the whole profile itself (delay,
  jitter, rate, queue, loss) and carries only as much as one Python process can forward;
  `applied` says so, with the capacity `serverzoo net check` measured here. No kernel: the
  profile fails, naming each missing part, and never runs without it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

from .delay_line import TUN_MTU
from .delay_schedule import LineSettings
from .profiles import LinkProfile

NETEM_LIMIT = 10000  # packets netem may hold: enough for 1 Gbit/s x 100 ms of delay
MIN_BURST = 16 * 1024  # tbf bucket, bytes: at least a few MTU-sized packets


class LinkUnavailable(Exception):
    """This link cannot be built here; the message (one line) says what is missing."""


def sh(argv: list[str], stdin: str | None = None, timeout: float = 15.0) -> subprocess.CompletedProcess:
    """Run a helper command; LinkUnavailable with its stderr if it fails."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LinkUnavailable(f"{argv[0]} is not installed (Debian: iproute2 / nftables)") from None
    except subprocess.TimeoutExpired:
        raise LinkUnavailable(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise LinkUnavailable(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip() or 'failed'}")
    return done


def try_sh(argv: list[str], stdin: str | None = None) -> str | None:
    """None if the command worked, else its one-line error."""
    try:
        sh(argv, stdin)
    except LinkUnavailable as exc:
        # "tc ... : Error: Specified qdisc kind is unknown." -> "Specified qdisc kind is unknown"
        message = str(exc).split(": ", 1)[-1].strip()
        return message.removeprefix("Error: ").rstrip(".")
    return None


@dataclass
class KernelSupport:
    netem: bool
    netem_error: str | None
    tbf: bool
    tbf_error: str | None
    nft: bool
    nft_error: str | None
    tun: bool = False
    tun_error: str | None = "not probed"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def probe(ns: str) -> KernelSupport:
    """Try each mechanism on the loopback device of namespace ns (which must exist), and undo it."""

    def qdisc(kind_args: list[str]) -> str | None:
        error = try_sh(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", *kind_args])
        if error is None:
            try_sh(["tc", "-n", ns, "qdisc", "del", "dev", "lo", "root"])
        return error

    netem_error = qdisc(["netem", "delay", "1ms"])
    tbf_error = qdisc(["tbf", "rate", "10mbit", "burst", "16kb", "latency", "50ms"])
    if shutil.which("nft") is None:
        nft_error = "nft is not installed (Debian package nftables)"
    else:
        nft_error = try_sh(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"], "table inet szoo_probe {}\ndelete table inet szoo_probe\n"
        )
    tun_error = try_sh(["ip", "-n", ns, "tuntap", "add", "dev", "szoo-probe", "mode", "tun"])
    if tun_error is None:
        try_sh(["ip", "-n", ns, "tuntap", "del", "dev", "szoo-probe", "mode", "tun"])
    return KernelSupport(
        netem_error is None,
        netem_error,
        tbf_error is None,
        tbf_error,
        nft_error is None,
        nft_error,
        tun_error is None,
        tun_error,
    )


@dataclass
class Step:
    what: str
    argv: list[str]
    stdin: str | None = None


@dataclass
class ShapingPlan:
    steps: list[Step] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # plain-language, one per part
    missing: list[str] = field(default_factory=list)  # parts this kernel cannot do
    line: LineSettings | None = None  # set: build the userspace delay line, no steps


def plan(
    profile: LinkProfile,
    support: KernelSupport,
    egress: list[tuple[str, str, str, str]],
    delay_line: bool | None = None,
    measured: dict | None = None,
) -> ShapingPlan:
    """Commands for the profile. egress: (namespace, device, peer namespace, peer device) for each
    direction; the profile applies to each. delay_line: None chooses (netem first, the delay line
    for delay without netem), True always uses it, False never. measured: what `serverzoo net
    check` measured of the delay line here (tun_link.load_measurement())."""
    p = ShapingPlan()
    needs_delay = profile.rtt_ms > 0 or profile.jitter_ms > 0
    if delay_line or (delay_line is None and needs_delay and not support.netem):
        if support.tun:
            p.line = LineSettings.from_profile(profile)
            p.applied = _line_applied(profile, support, measured)
            return p
        if delay_line:
            p.missing.append(f"the userspace delay line needs a TUN device ({support.tun_error})")
            return p
    if needs_delay and not support.netem:
        p.missing.append(_delay_needs(profile, support))
    if profile.rate_mbit and not support.tbf:
        p.missing.append(f"rate {profile.rate_mbit:g} Mbit/s needs tbf ({support.tbf_error})")
    loss_by_netem = profile.loss_percent > 0 and support.netem
    if profile.loss_percent > 0 and not support.netem and not support.nft:
        p.missing.append(
            f"loss {profile.loss_percent:g}% needs sch_netem ({support.netem_error}) or nftables ({support.nft_error})"
        )
    if p.missing:
        return p

    per_packet = profile.loss_percent > 0
    for ns, dev, peer_ns, peer_dev in egress:
        parent = ["root", "handle", "10:"]
        if needs_delay or loss_by_netem:
            args = []
            if needs_delay:
                args += ["delay", f"{profile.delay_ms:g}ms"] + (
                    [f"{profile.jitter_ms:g}ms"] if profile.jitter_ms else []
                )
            if loss_by_netem:
                args += ["loss", f"{profile.loss_percent:g}%"]
            p.steps.append(
                Step(
                    "netem",
                    [
                        "tc",
                        "-n",
                        ns,
                        "qdisc",
                        "add",
                        "dev",
                        dev,
                        "root",
                        "handle",
                        "1:",
                        "netem",
                        *args,
                        "limit",
                        str(NETEM_LIMIT),
                    ],
                )
            )
            parent = ["parent", "1:1", "handle", "10:"]
        if profile.rate_mbit:
            rate_bytes = profile.rate_mbit * 1e6 / 8
            burst = max(int(rate_bytes / 1000), MIN_BURST)  # 1 ms at the rate
            p.steps.append(
                Step(
                    "tbf",
                    [
                        "tc",
                        "-n",
                        ns,
                        "qdisc",
                        "add",
                        "dev",
                        dev,
                        *parent,
                        "tbf",
                        "rate",
                        f"{profile.rate_mbit:g}mbit",
                        "burst",
                        str(burst),
                        "latency",
                        f"{profile.queue_ms:g}ms",
                    ],
                )
            )
        if profile.loss_percent > 0 and not loss_by_netem:
            per_million = round(profile.loss_percent * 10000)
            rules = (
                f"table inet szoo_link {{\n chain loss {{\n"
                f"  type filter hook prerouting priority -300; policy accept;\n"
                f'  iifname "{peer_dev}" numgen random mod 1000000 < {per_million} counter drop\n'
                f" }}\n}}\n"
            )
            p.steps.append(Step("nftables", ["ip", "netns", "exec", peer_ns, "nft", "-f", "-"], rules))
        if per_packet:
            p.steps.append(Step("gso", ["ip", "-n", ns, "link", "set", "dev", dev, "gso_max_segs", "1"]))

    if needs_delay:
        p.applied.append(
            f"delay {profile.delay_ms:g} ms each way ({profile.rtt_ms:g} ms RTT)"
            + (f", jitter {profile.jitter_ms:g} ms" if profile.jitter_ms else "")
            + ": netem"
        )
    if profile.rate_mbit:
        p.applied.append(f"rate {profile.rate_mbit:g} Mbit/s each way, queue {profile.queue_ms:g} ms: tbf")
    if profile.loss_percent:
        how = "netem" if loss_by_netem else "nftables numgen random drop on arrival (no sch_netem here)"
        p.applied.append(f"loss {profile.loss_percent:g}% each way: {how}")
    if per_packet:
        p.applied.append("packets kept MTU-sized on the veth (gso_max_segs 1), so loss hits single packets")
    if not p.applied:
        p.applied.append("nothing added: the bare veth pair")
    return p


def _delay_needs(profile: LinkProfile, support: KernelSupport) -> str:
    return (
        f"delay ({profile.rtt_ms:g} ms RTT"
        + (f", jitter {profile.jitter_ms:g} ms" if profile.jitter_ms else "")
        + f") needs sch_netem, which this kernel lacks ({support.netem_error}), or a TUN device for the "
        f"userspace delay line ({support.tun_error})"
    )


def _line_applied(profile: LinkProfile, support: KernelSupport, measured: dict | None) -> list[str]:
    how = "userspace delay line (TUN, " + ("netem unavailable)" if not support.netem else "chosen over netem)")
    applied = []
    if profile.rtt_ms or profile.jitter_ms:
        applied.append(
            f"delay {profile.delay_ms:g} ms each way ({profile.rtt_ms:g} ms RTT)"
            + (f", jitter ±{profile.jitter_ms:g} ms uniform, order kept" if profile.jitter_ms else "")
            + f": {how}"
        )
    else:
        applied.append(f"no delay: {how}")
    if profile.rate_mbit:
        applied.append(
            f"rate {profile.rate_mbit:g} Mbit/s each way, queue {profile.queue_ms:g} ms: the delay line "
            "(serialized at the rate, tail drop)"
        )
    if profile.loss_percent:
        applied.append(f"loss {profile.loss_percent:g}% each way: the delay line (seeded random drop)")
    applied.append(f"packets MTU-sized ({TUN_MTU}, no segmentation offload), each moved by one Python process")
    applied += measured_notes(profile, measured)
    return applied


def measured_notes(profile: LinkProfile, measured: dict | None) -> list[str]:
    """What `serverzoo net check` measured of the delay line here, as it bears on this profile:
    what it adds to the delay, what it can carry; WARNING where the profile asks for less delay
    than the line adds by itself, or for more rate than it carries."""
    capacity = (measured or {}).get("capacity")
    if not capacity:
        return [
            "the delay line's precision and capacity on this machine are not measured (`serverzoo net check` "
            "measures them)" + (f": it may carry less than {profile.rate_mbit:g} Mbit/s" if profile.rate_mbit else "")
        ]
    when = f"measured {measured.get('date', '?')[:16]} by `serverzoo net check`"
    notes = []
    delay = measured.get("delay", {})
    if "one_way_ms" in delay:
        added = delay["one_way_ms"]["p50"] - delay["rtt_ms_set"] / 2
        if profile.delay_ms and added > 0.25 * profile.delay_ms:
            notes.append(
                f"WARNING: delay {profile.delay_ms:g} ms each way is small beside what the line adds by "
                f"itself ({added:.2f} ms each way, p50, {when}): this link's delay is about "
                f"{profile.delay_ms + added:.2f} ms each way"
            )
        else:
            notes.append(f"the line adds {added:.2f} ms each way to its setting (p50, {when})")
    carried = f"{capacity['mbit_s']:.0f} Mbit/s, {capacity['packets_s'] / 1000:.1f}k packets/s (TCP bulk, {when})"
    if profile.rate_mbit and profile.rate_mbit > capacity["mbit_s"]:
        notes.append(
            f"WARNING: rate {profile.rate_mbit:g} Mbit/s is more than the delay line carried on this "
            f"machine ({carried}): across this link the forwarder, not the profile, limits the rate"
        )
    else:
        notes.append(
            f"the delay line carried {carried} here" + ("" if profile.rate_mbit else ": it caps a link without a rate")
        )
    return notes


def apply(p: ShapingPlan) -> None:
    for step in p.steps:
        sh(step.argv, step.stdin)
