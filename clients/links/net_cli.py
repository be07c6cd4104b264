"""`serverzoo net`: emulated links (list, check the kernel, hold one up, clean up leftovers)."""

from __future__ import annotations

import time

import click

from .cli_support import NoLinkError, linked_hosts_or_exit
from .profiles import ProfileError, load_profiles
from .shaping import LinkUnavailable


@click.group("net")
def net_group() -> None:
    """Emulated network links between two network namespaces (root)."""


def _require() -> None:
    from .namespaces import require_support

    try:
        require_support()
    except LinkUnavailable as exc:
        raise NoLinkError(str(exc)) from None


@net_group.command("cleanup")
@click.option("--all", "everything", is_flag=True, help="Also remove namespaces of runs still alive (they will fail).")
def cleanup_command(everything: bool) -> None:
    """Remove serverzoo's namespaces left by runs that died (and the processes inside them)."""
    _require()
    from .namespaces import cleanup_leftovers, list_namespaces

    removed = cleanup_leftovers(everything)
    for name in removed:
        click.echo(f"removed {name}")
    left = list_namespaces()
    if not removed:
        click.echo("nothing to remove" + (f" ({len(left)} namespaces of live runs kept)" if left else ""))
    elif left:
        click.echo(f"{len(left)} namespaces of live runs kept")


def _support():
    """What this kernel can do, probed in a scratch namespace; None without root."""
    from .namespaces import LinkedHosts, require_support
    from .profiles import LinkProfile

    try:
        require_support()
        with LinkedHosts(LinkProfile("probe")) as hosts:
            return hosts.support
    except LinkUnavailable:
        return None


@net_group.command("links")
@click.option("--links-file", type=click.Path(dir_okay=False), default=None, help="[clients/links/links.toml]")
def links_command(links_file: str | None) -> None:
    """List the link profiles, and whether (and how) each can be built on this machine."""
    from .shaping import measured_notes, plan
    from .tun_link import load_measurement

    try:
        profiles = load_profiles(links_file)
    except ProfileError as exc:
        raise click.ClickException(str(exc)) from None
    support = _support()
    measured = load_measurement()
    width = max(map(len, profiles))
    for name, p in profiles.items():
        if support is None:
            verdict = "? (needs root and iproute2 to check)"
        else:
            built = plan(p, support, [("ns", "dev", "peer", "peerdev")], measured=measured)
            if built.missing:
                verdict = "NOT HERE: " + "; ".join(built.missing)
            elif built.line:
                notes = measured_notes(p, measured)
                verdict = "ok: userspace delay line (no netem here); " + "; ".join(
                    [n for n in notes if n.startswith("WARNING")] or notes[-1:]
                )
            else:
                verdict = "ok"
        click.echo(f"{name:<{width}}  {p.summary():<32} {verdict}")


@net_group.command("check")
@click.option(
    "--measure/--no-measure",
    default=True,
    show_default=True,
    help="Measure the userspace delay line: its delay against the setting, and its capacity.",
)
@click.option(
    "--seconds", type=click.FloatRange(0.5, 60), default=3.0, show_default=True, help="Length of the capacity transfer."
)
def check_command(measure: bool, seconds: float) -> None:
    """Say what this machine offers: root, iproute2, netem, tbf, nftables, TUN; measure the delay line."""
    _require()
    support = _support()
    for what, ok, error in (
        ("netem (delay, jitter, loss)", support.netem, support.netem_error),
        ("tbf (rate)", support.tbf, support.tbf_error),
        ("nftables (loss without netem)", support.nft, support.nft_error),
        ("tun (userspace delay line)", support.tun, support.tun_error),
    ):
        click.echo(f"{what:<32} {'yes' if ok else 'no: ' + str(error)}")
    if not measure or not support.tun:
        return
    from .line_check import measure as measure_line
    from .tun_link import save_measurement

    click.echo("the userspace delay line, measured now (a shared or busy machine makes these worse):")
    try:
        doc = measure_line(seconds)
    except (LinkUnavailable, OSError, RuntimeError) as exc:
        raise click.ClickException(f"measuring the delay line failed: {exc}") from None
    delay, cap = doc["delay"], doc["capacity"]
    rtt = delay["rtt_ms"]
    if rtt.get("count"):
        click.echo(
            f"  delay: set {delay['rtt_ms_set'] / 2:g} ms each way ({delay['rtt_ms_set']:g} ms RTT); "
            f"UDP echo RTT p50 {rtt['p50']:.2f} ms, p99 {rtt['p99']:.2f} ms, max {rtt['max']:.2f} ms "
            f"({rtt['count']} pings, {delay['failed']} lost)"
        )
    else:
        click.echo(f"  delay: no UDP echo came back ({delay['failed']} lost)")
    if "one_way_ms" in delay:
        one_way = delay["one_way_ms"]
        click.echo(
            f"  over a bare veth the same echo takes p50 {delay['veth_rtt_ms']['p50']:.2f} ms: so each way the "
            f"line adds p50 {one_way['p50']:.2f} ms, p99 {one_way['p99']:.2f} ms "
            f"(setting {delay['rtt_ms_set'] / 2:g} ms)"
        )
    for leg, late in delay["lateness_us"].items():
        click.echo(
            f"  {leg.replace('_', ' ')}: packets left p50 {late['p50_us']} us, p99 {late['p99_us']} us, "
            f"max {late['max_us']} us after their departure time"
        )
    cpus = ",".join(map(str, cap["forwarder_cpus"]))
    click.echo(
        f"  capacity: TCP bulk across a {cap['rtt_ms']:g} ms RTT line without a rate: "
        f"{cap['mbit_s']:.0f} Mbit/s, {cap['packets_s'] / 1000:.1f}k data + {cap['ack_packets_s'] / 1000:.1f}k "
        f"ack packets/s, forwarder busy {cap['forwarder_cpu_share']:.0%} of a CPU "
        f"({cap['forwarder_policy']}, CPUs {cpus}), saturated {cap['forwarder_saturated_share']:.0%} "
        f"of the time"
    )
    click.echo(
        f"  saved to {save_measurement(doc)}: links built with the delay line quote it, and warn "
        "when a profile's rate is beyond it"
    )


@net_group.command("up")
@click.argument("name")
@click.option(
    "--links-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML file with [links.NAME] tables. [clients/links/links.toml]",
)
@click.option(
    "--time",
    "seconds",
    type=click.FloatRange(1, 3600),
    default=300,
    show_default=True,
    help="Remove the link after this many seconds.",
)
def up_command(name: str, links_file: str | None, seconds: float) -> None:
    """Build link NAME and keep it until Ctrl-C, SIGTERM or --time, for experiments by hand."""
    with linked_hosts_or_exit(name, links_file) as hosts:
        click.echo(f"link {name}: " + "; ".join(hosts.applied))
        click.echo(f"server host: ip netns exec {hosts.server_ns} ...   ({hosts.server_addr})")
        click.echo(f"client host: ip netns exec {hosts.client_ns} ...   ({hosts.client_addr})")
        if hosts.line is not None:
            started = hosts.line.started
            click.echo(
                f"delay line: pid {started.get('pid')}, {started.get('policy')}, CPUs "
                f"{','.join(map(str, started.get('cpus', [])))}"
            )
        click.echo(f"READY {hosts.server_ns} {hosts.client_ns}", color=False)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            pass
    click.echo("link removed")


@net_group.command("fetch")
@click.argument("name")
@click.argument("path")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False), help="Directory to serve.")
@click.option("--model", default="threading", show_default=True, help="Server model on the server host.")
@click.option(
    "--links-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML file with [links.NAME] tables. [clients/links/links.toml]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=120,
    show_default=True,
    help="Give up on the download after this many seconds.",
)
def fetch_command(name: str, path: str, root: str, model: str, links_file: str | None, timeout: float) -> None:
    """Serve --root on the server host of link NAME, download PATH on the client host, check its sha256."""
    import hashlib
    import http.client
    import os
    from urllib.parse import quote

    local = os.path.join(root, path.lstrip("/"))
    if not os.path.isfile(local):
        raise click.BadParameter(f"{path} is not a file under {root}")
    with (
        linked_hosts_or_exit(name, links_file) as hosts,
        hosts.server_process(model, root) as server,
        hosts.client_namespace(),
    ):
        start = time.monotonic()
        conn = http.client.HTTPConnection(hosts.server_addr, server.port, timeout=timeout)
        try:
            conn.request("GET", "/" + quote(path.lstrip("/")))
            resp = conn.getresponse()
            digest, size = hashlib.sha256(), 0
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                if time.monotonic() - start > timeout:
                    raise click.ClickException(f"download exceeded --timeout {timeout:g} s")
        except OSError as exc:
            raise click.ClickException(f"download failed: {exc}") from None
        finally:
            conn.close()
        seconds = time.monotonic() - start
    with open(local, "rb") as f:
        expected = hashlib.file_digest(f, "sha256").hexdigest()
    same = resp.status == 200 and digest.hexdigest() == expected
    click.echo(
        f"link {name} ({'; '.join(hosts.applied)}): HTTP {resp.status}, {size} bytes in {seconds:.2f} s, "
        f"{size * 8 / seconds / 1e6:.1f} Mbit/s, sha256 {'matches' if same else 'DIFFERS'}"
    )
    if not same:
        raise SystemExit(1)
