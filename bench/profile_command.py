"""`serverzoo profile MODEL`: where one model's time goes under one scenario, measured in untimed passes."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from .plan import REFERENCE, build_plan, parse_cpus
from .scenarios import ConfigError

DEFAULT_SCENARIO = "small-keepalive"


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"serverzoo profile: {message}", err=True)
    sys.exit(code)


@click.command("profile")
@click.argument("model")
@click.option("--scenario", default=DEFAULT_SCENARIO, show_default=True, help="A scenario of the scenarios file.")
@click.option(
    "--level",
    type=click.IntRange(1),
    help="Connections (closed loop) or requests/s (open loop). [the scenario's top level]",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Write the profile here; the flame graph SVG goes beside it. [results/profile-MODEL-SCENARIO-LEVEL.json]",
)
@click.option("--preset", default="quick", show_default=True, help="The preset whose levels and duration apply.")
@click.option("--duration", type=click.FloatRange(0.05), help="Seconds of load per pass. [the scenario's, at most 2]")
@click.option(
    "--idle",
    default=1000,
    show_default=True,
    type=click.IntRange(0),
    help="Idle keep-alive connections held for the memory figure (0: skip it).",
)
@click.option("--scenarios-file", type=click.Path(dir_okay=False), help="Your copy of bench/scenarios.toml.")
@click.option("--corpus", type=click.Path(file_okay=False), help="An existing corpus. [written beside the JSON]")
@click.option("--server-cpus", help="CPUs for the server, e.g. 0. [first half]")
@click.option("--client-cpus", help="CPUs for the load generator, e.g. 1. [the rest]")
def profile_command(
    model: str,
    scenario: str,
    level: int | None,
    json_path: str | None,
    preset: str,
    duration: float | None,
    idle: int,
    scenarios_file: str | None,
    corpus: str | None,
    server_cpus: str | None,
    client_cpus: str | None,
) -> None:
    """Profile MODEL (a model or a variant of the scenarios file) under one scenario's load.

    Separate passes, none of them a benchmark: server CPU user/system, context switches
    and threads (no profiler attached); system calls by name, threads and processes
    created (strace); a flame graph (py-spy, SVG beside the JSON); memory per idle
    keep-alive connection. Figures are per request served. Without strace or py-spy, or
    without ptrace permission, only that pass is skipped, with the reason.
    """
    from serverzoo.machine import describe_machine

    from .corpus import check_corpus, default_corpus_dir, ensure_corpus
    from .profiling import ProfileError, Profiler
    from .scenarios import load_suite

    try:
        if model == REFERENCE:
            raise ConfigError("nginx is the yardstick, not a Python model: it has no profile here")
        suite = load_suite(scenarios_file)
        if preset not in suite.presets:
            raise ConfigError(f"unknown preset {preset!r}; choose from: {', '.join(suite.presets)}")
        known = suite.scenarios(preset)
        if scenario not in known:
            raise ConfigError(f"unknown scenario {scenario!r}; choose from: {', '.join(known)}")
        sc = known[scenario]
        if sc.mode == "capacity":
            raise ConfigError(f"{scenario} is a capacity search, not a load at one level: profile another scenario")
        levels = [level] if level else None
        plan = build_plan(
            suite,
            preset,
            models=[model],
            scenarios=[scenario],
            reference=False,
            concurrency=levels if sc.mode == "closed" else None,
            rates=levels if sc.mode == "open" else None,
            server_cpus=parse_cpus(server_cpus, "server-cpus"),
            client_cpus=parse_cpus(client_cpus, "client-cpus"),
        )
        top = max(plan.scenarios[scenario].levels)
        json_path = json_path or os.path.join("results", f"profile-{model}-{scenario}-{sc.level_key(top)}.json")
        out_dir = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(out_dir, exist_ok=True)
        if corpus:
            corpus_root = os.path.abspath(corpus)
            check_corpus(corpus_root, plan.corpus)
        else:
            corpus_root = ensure_corpus(os.path.abspath(default_corpus_dir(out_dir, plan.corpus)), plan.corpus)
    except ConfigError as exc:
        _fail(str(exc))
        return
    except OSError as exc:
        _fail(f"cannot write beside {json_path}: {exc.strerror or exc}")
        return
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    svg_path = os.path.splitext(os.path.abspath(json_path))[0] + ".svg"
    profiler = Profiler(plan, corpus_root, window_s=duration, idle=idle, log=lambda line: click.echo(line, err=True))
    try:
        record = profiler.profile(model, scenario, top, svg_path)
    except ProfileError as exc:
        _fail(str(exc), 1)
        return
    except KeyboardInterrupt:  # every pass has stopped its server and its profiler on the way out
        _fail("interrupted", 130)
        return
    record["machine"] = describe_machine()
    record["command"] = ["serverzoo", *sys.argv[1:]]
    try:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    except OSError as exc:
        _fail(f"cannot write {json_path}: {exc.strerror or exc}")
        return
    click.echo(describe_profile(record))
    click.echo(f"json: {json_path}")
    figures = (
        "cpu_us_per_request",
        "context_switches_per_request",
        "syscalls_per_request",
        "flamegraph",
        "rss_per_idle_connection_bytes",
    )
    if all(record[key] is None for key in figures):
        _fail("no pass gave a figure (see skipped above)", 1)


def describe_profile(r: dict[str, Any]) -> str:
    """The profile as a few lines of text, skipped parts with their reasons."""
    from .report import format_bytes

    lines = [f"{r['server']} / {r['scenario']} / {r['level_key']} ({r['window_s']:g} s of load per pass)"]
    cpu = r["cpu_us_per_request"]
    if cpu:
        lines.append(
            f"  CPU per request: user {cpu['user']:.1f} us, system {cpu['system']:.1f} us "
            f"({r['passes']['counters']['requests_served']} requests)"
        )
    cs = r["context_switches_per_request"]
    if cs:
        lines.append(
            f"  context switches per request: {cs['voluntary']:.2f} voluntary, {cs['involuntary']:.2f} involuntary"
        )
    if r["threads_peak"] is not None:
        lines.append(
            f"  alive at once: {r['threads_peak']} threads at most, processes "
            f"{r['processes_min']}-{r['processes_peak']}"
        )
    sys_calls = r["syscalls_per_request"]
    if sys_calls is not None:
        top = ", ".join(f"{name} {n:g}" for name, n in list(sys_calls.items())[:8])
        lines.append(f"  syscalls per request: {r['syscalls_total_per_request']:g} ({top})")
        info = r["passes"]["syscalls"]
        lines.append(
            f"  created: {r['threads_created']} threads, {r['processes_created']} processes for "
            f"{info['connections_accepted']} connections accepted ({info['connections']} opened)"
        )
    if r["rss_per_idle_connection_bytes"] is not None:
        m = r["idle_memory"]
        lines.append(
            f"  per idle connection: RSS {format_bytes(r['rss_per_idle_connection_bytes'])}, "
            f"PSS {format_bytes(r['pss_per_idle_connection_bytes'])} ({m['held']} held)"
        )
    if r["flamegraph"]:
        lines.append(f"  flame graph: {r['flamegraph']} (beside the JSON)")
    for part, reason in r["skipped"].items():
        lines.append(f"  {part}: skipped: {reason}")
    return "\n".join(lines)
