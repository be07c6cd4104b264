"""`serverzoo udp serve` and `serverzoo udp test`."""

from __future__ import annotations

import json
import os
import re
import sys

import click

from ..links.cli_support import link_options, linked_hosts_or_exit
from .control import UdpTestError, parse_target
from .responder import MODES

SCHEMA = "serverzoo.udp/1"
TEST_MODES = ("stream", "sweep", "rr", "tcp")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)(?:bit|bps|b)?(?:/s)?\s*$")


def parse_rate(text: str) -> float:
    """'100M', '1.5G', '500k', '2000000' -> bits per second."""
    m = _RATE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{text!r}: a positive bit rate like 500k, 100M or 1.5G")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]


def _rate(_ctx, _param, value):
    return None if value is None else parse_rate(value)


@click.group("udp")
def udp_group() -> None:
    """UDP beside TCP, measured: a responder and an iperf-style tester."""


@udp_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (IPv4 or IPv6).")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="both",
    show_default=True,
    help="both: count test streams and echo pings and foreign datagrams; echo: echo everything; "
    "sink: count, echo nothing.",
)
@click.option("--no-tcp", is_flag=True, help="No TCP echo/sink listener on the same port number.")
@click.option(
    "--rcvbuf",
    type=click.IntRange(1024),
    default=4 << 20,
    show_default=True,
    help="UDP receive buffer to ask for (bytes; the kernel caps it at net.core.rmem_max). A large one "
    "keeps a briefly descheduled responder from dropping what the path delivered.",
)
@click.option(
    "--time",
    "max_seconds",
    type=click.FloatRange(0.1),
    default=None,
    help="Stop after this many seconds. [run until SIGTERM or Ctrl-C]",
)
def serve_command(host: str, port: int, mode: str, no_tcp: bool, rcvbuf: int | None, max_seconds: float | None) -> None:
    """Answer `udp test`: prints `READY udp://HOST:PORT/` once listening.

    The same port number also takes TCP (echo or sink) for the TCP side of the comparison.
    """
    from .responder import serve

    try:
        code = serve(host, port, mode, not no_tcp, rcvbuf, max_seconds)
    except OSError as exc:
        click.echo(f"serverzoo udp serve: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    sys.exit(code)


@udp_group.command("test")
@click.argument("target", required=False)
@click.option(
    "--mode",
    type=click.Choice(TEST_MODES),
    default="stream",
    show_default=True,
    help="stream: paced UDP; sweep: find where loss begins; rr: request/response latency, UDP vs "
    "TCP; tcp: one TCP stream as fast as it goes.",
)
@click.option("--rate", callback=_rate, default="100M", show_default=True, help="stream: UDP payload bit rate.")
@click.option("--size", type=int, default=None, help="Datagram / request bytes. [stream, sweep: 1400; rr: 64]")
@click.option(
    "--time",
    "duration",
    type=click.FloatRange(0.1, 3600),
    default=5.0,
    show_default=True,
    help="Seconds: the stream's length; rr and tcp: at most this long.",
)
@click.option(
    "--count", type=click.IntRange(1, 1_000_000), default=1000, show_default=True, help="rr: requests of each kind."
)
@click.option("--udp-only", is_flag=True, help="rr: skip the TCP requests.")
@click.option("--sweep-from", callback=_rate, default="10M", show_default=True, help="sweep: first rate.")
@click.option("--sweep-to", callback=_rate, default="4G", show_default=True, help="sweep: highest rate tried.")
@click.option(
    "--step-time", type=click.FloatRange(0.2, 60), default=1.0, show_default=True, help="sweep: seconds per rate."
)
@click.option(
    "--loss-threshold",
    type=click.FloatRange(0, 100),
    default=0.1,
    show_default=True,
    help="sweep: loss (%) above which a rate counts as lossy.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Write the result as JSON to this file ('-': stdout, instead of the summary).",
)
@link_options
def test_command(
    target: str | None,
    mode: str,
    rate: float,
    size: int | None,
    duration: float,
    count: int,
    udp_only: bool,
    sweep_from: float,
    sweep_to: float,
    step_time: float,
    loss_threshold: float,
    json_path: str | None,
    link: str | None,
    links_file: str | None,
) -> None:
    """Measure UDP (and TCP beside it) against a `udp serve` at TARGET (udp://HOST:PORT/).

    With --link NAME no TARGET is given: a responder is started on the server side of the
    emulated link and the test runs on the client side.
    """
    if link and target:
        raise click.UsageError("give a TARGET or --link, not both (--link starts its own responder)")
    if not link and not target:
        raise click.UsageError("missing TARGET (udp://HOST:PORT/ from `serverzoo udp serve`), or --link NAME")
    if size is None:
        size = 64 if mode == "rr" else 1400
    options = {
        "mode": mode,
        "rate_bps": rate,
        "size": size,
        "time_s": duration,
        "count": count,
        "udp_only": udp_only,
        "sweep_from_bps": sweep_from,
        "sweep_to_bps": sweep_to,
        "step_time_s": step_time,
        "loss_threshold_percent": loss_threshold,
        "link": link,
    }
    try:
        with linked_hosts_or_exit(link, links_file) as hosts:
            if hosts is None:
                host, port = parse_target(target)
                doc = _run(mode, host, port, options)
            else:
                _, url = hosts.start_ready(
                    [sys.executable, "-m", "serverzoo", "udp", "serve", "--host", hosts.server_addr]
                )
                host, port = parse_target(url)
                with hosts.client_namespace():
                    doc = _run(mode, host, port, options)
        if hosts is not None:  # described once the link is down: a delay line's final counters
            doc["link"] = hosts.describe()
    except UdpTestError as exc:
        raise click.ClickException(str(exc)) from None
    from ...machine import describe_machine

    doc = {"schema": SCHEMA, "tool": "serverzoo udp test", "machine": describe_machine(), "options": options, **doc}
    doc.setdefault("link", None)
    doc["warnings"] = sorted({w for r in doc["results"] for w in r.get("warnings", [])})
    if json_path:
        text = json.dumps(doc, indent=2) + "\n"
        if json_path == "-":
            sys.stdout.write(text)
            return
        with open(json_path, "w") as f:
            f.write(text)
    _print_summary(doc)


def _run(mode: str, host: str, port: int, o: dict) -> dict:
    from . import roundtrip, stream

    target = f"udp://[{host}]:{port}/" if ":" in host else f"udp://{host}:{port}/"
    if mode == "stream":
        return {"target": target, "results": [stream.run_udp_stream(host, port, o["rate_bps"], o["size"], o["time_s"])]}
    if mode == "tcp":
        return {"target": target, "results": [stream.run_tcp_stream(host, port, o["time_s"])]}
    if mode == "sweep":
        sweep = stream.run_sweep(
            host, port, o["size"], o["step_time_s"], o["sweep_from_bps"], o["sweep_to_bps"], o["loss_threshold_percent"]
        )
        return {"target": target, "results": sweep["steps"], "summary": sweep["summary"]}
    rr = roundtrip.run_roundtrip(host, port, o["size"], o["count"], o["time_s"], tcp=not o["udp_only"])
    return {"target": target, "results": rr["results"], "summary": {"rounds": rr["rounds"]}}


# -- human-readable summary ------------------------------------------------------------------
def _mbit(bps: float | None) -> str:
    return "-" if bps is None else f"{bps / 1e6:.1f} Mbit/s"


def _print_summary(doc: dict) -> None:
    mode = doc["options"]["mode"]
    out = []
    if doc.get("link"):
        out.append(f"link {doc['link']['profile']['name']}: " + "; ".join(doc["link"]["applied"]))
    if mode == "stream":
        out += _stream_lines(doc["results"][0])
    elif mode == "sweep":
        out.append(f"sweep of {doc['options']['size']} B datagrams -> {doc['target']}")
        out.append(f"  {'target':>14} {'sent':>14} {'received':>14} {'loss':>9} {'jitter':>10} {'rcvbuf drops':>12}")
        for r in doc["results"]:
            rx = r["receiver"]
            out.append(
                f"  {_mbit(r['target_bps']):>14} {_mbit(r['sender']['achieved_bps']):>14} "
                f"{_mbit(rx['throughput_bps']):>14} {rx['loss_percent']:>8.3f}% {rx['jitter_ms']:>7.3f} ms "
                f"{rx.get('socket_drops') if rx.get('socket_drops') is not None else '-':>12}"
            )
        s = doc["summary"]
        if s["loss_begins_bps"]:
            out.append(
                f"  loss above {s['loss_threshold_percent']:g}% begins near {_mbit(s['loss_begins_bps'])} "
                f"(clean at {_mbit(s['max_clean_bps'])})"
            )
        elif s["sender_limit_bps"]:
            out.append(f"  no loss up to the sender's own limit, {_mbit(s['sender_limit_bps'])}")
        else:
            out.append(f"  no loss up to {_mbit(s['max_clean_bps'])}")
    elif mode == "tcp":
        r = doc["results"][0]
        tx, rx = r["sender"], r["receiver"]
        out.append(f"TCP stream for {r['duration_s']:g} s -> {doc['target']}")
        out.append(
            f"  sender:   {tx['bytes']} bytes written, goodput {_mbit(tx['goodput_bps'])} "
            f"(until the receiver's count came back)"
        )
        out.append(
            f"  receiver: {rx['bytes']} bytes, {'every byte' if rx['complete'] else 'INCOMPLETE'}, "
            f"{_mbit(rx['throughput_bps'])} over its own span"
        )
    else:
        out.append(
            f"request/response, {doc['options']['size']} B each way, {doc['summary']['rounds']} rounds "
            f"-> {doc['target']}"
        )
        out.append(f"  {'':<22} {'ok':>6} {'failed':>6} {'p50':>9} {'p90':>9} {'p99':>9} {'p99.9':>9} {'max':>9}  (ms)")
        for r in doc["results"]:
            q = r["rtt_ms"]
            cells = " ".join(f"{q.get(k, float('nan')):>9.3f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
            out.append(f"  {r['proto'] + ' ' + r['connection']:<22} {q['count']:>6} {r['failed']:>6} {cells}")
        by = {r["connection"]: r["rtt_ms"] for r in doc["results"]}
        if by.get("fresh", {}).get("count") and by.get("keep-alive", {}).get("count"):
            out.append(
                f"  a fresh TCP connection costs {by['fresh']['p50'] - by['keep-alive']['p50']:.3f} ms more "
                f"at the median than a kept-alive one"
            )
    click.echo("\n".join(out))


def _stream_lines(r: dict) -> list[str]:
    tx, rx = r["sender"], r["receiver"]
    errors = sum(tx["send_errors"].values())
    lines = [
        f"UDP {r['size']} B datagrams at {_mbit(r['target_bps'])} for {r['duration_s']:g} s",
        f"  sender:   {tx['sent']} datagrams, {_mbit(tx['achieved_bps'])} achieved, {errors} send errors, "
        f"at most {tx['max_behind_ms']:.1f} ms behind schedule",
        f"  receiver: {rx['received']} received, {rx['lost']} lost ({rx['loss_percent']:.3f}%), "
        f"{rx['duplicates']} duplicates, {rx['reordered']} reordered, jitter {rx['jitter_ms']:.3f} ms, "
        f"{_mbit(rx['throughput_bps'])}",
    ]
    lines += [f"  warning: {w}" for w in r["warnings"]]
    return lines


@udp_group.command("compare")
@click.option(
    "--links",
    default="veth,lossy,slow,lossy-slow,lan,wan",
    show_default=True,
    help="Comma-separated link profiles to measure after loopback ('' for loopback only).",
)
@click.option(
    "--links-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML file with [links.NAME] tables. [clients/links/links.toml]",
)
@click.option("--rate", callback=_rate, default="50M", show_default=True, help="UDP stream's offered rate.")
@click.option("--size", type=click.IntRange(28, 65507), default=1400, show_default=True)
@click.option(
    "--time",
    "seconds",
    type=click.FloatRange(0.2, 600),
    default=5.0,
    show_default=True,
    help="Seconds per UDP stream, TCP stream and latency run.",
)
@click.option(
    "--count",
    type=click.IntRange(1, 1_000_000),
    default=2000,
    show_default=True,
    help="Requests of each kind in the latency run (at most --time seconds).",
)
@click.option(
    "--step-time", type=click.FloatRange(0.2, 60), default=1.0, show_default=True, help="Seconds per rate in the sweep."
)
@click.option("--sweep-from", callback=_rate, default="5M", show_default=True)
@click.option("--sweep-to", callback=_rate, default="4G", show_default=True)
@click.option(
    "--cpus", default="0,1", show_default=True, help="CPU for the responder and for the tester ('' to not pin)."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write everything here; `serverzoo report FILE` renders it as the TCP-vs-UDP report.",
)
def compare_command(
    links: str,
    links_file: str | None,
    rate: float,
    size: int,
    seconds: float,
    count: int,
    step_time: float,
    sweep_from: float,
    sweep_to: float,
    cpus: str,
    json_path: str | None,
) -> None:
    """TCP vs UDP, measured: loopback, then each emulated link this machine can build.

    Prints a Markdown table; with --json, `serverzoo report FILE.json` renders the "TCP vs UDP" report
    (HTML with charts, and Markdown). Links need root; ones the kernel cannot build are listed with the reason.
    """
    from ...machine import describe_machine
    from .compare import SCHEMA, markdown_table, run_compare

    _check_writable("--json", json_path)  # now, not after minutes of measuring
    names = [n.strip() for n in links.split(",") if n.strip()]
    try:
        pinned = tuple(int(c) for c in cpus.split(",")) if cpus else None
    except ValueError:
        raise click.BadParameter("--cpus takes SERVER,CLIENT, e.g. 0,1") from None
    if pinned is not None and len(pinned) != 2:
        raise click.BadParameter("--cpus takes SERVER,CLIENT, e.g. 0,1")
    options = {
        "links": names,
        "rate_bps": rate,
        "size": size,
        "time_s": seconds,
        "count": count,
        "step_time_s": step_time,
        "sweep_from_bps": sweep_from,
        "sweep_to_bps": sweep_to,
        "cpus": list(pinned) if pinned else None,
    }
    try:
        result = run_compare(
            names,
            links_file,
            rate,
            size,
            seconds,
            count,
            sweep_from,
            sweep_to,
            step_time,
            pinned,
            progress=lambda m: click.echo(m, err=True),
        )
    except UdpTestError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"--cpus {cpus}: {exc.strerror or exc}") from None
    doc = {
        "schema": SCHEMA,
        "tool": "serverzoo udp compare",
        "machine": describe_machine(),
        "command": ["serverzoo", *sys.argv[1:]],
        "options": options,
        **result,
    }
    if json_path:
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    click.echo(markdown_table(doc))


def _check_writable(option: str, path: str | None) -> None:
    folder = os.path.dirname(os.path.abspath(path)) if path else None
    if folder and not os.path.isdir(folder):
        raise click.BadParameter(f"{path}: no folder {folder}", param_hint=option)
    if folder and not os.access(folder, os.W_OK):
        raise click.BadParameter(f"{path}: {folder} is not writable", param_hint=option)
