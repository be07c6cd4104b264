"""`serverzoo bench`, `serverzoo report` and `serverzoo compare`."""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .plan import REFERENCE, BenchPlan, build_plan, format_duration, parse_cpus, parse_list
from .scenarios import ConfigError
from .store import SCHEMA, ResultsError, read_run, write_atomic

if TYPE_CHECKING:
    from serverzoo.clients.links import LinkedHosts, LinkProfile

    from .scenarios import Suite

EXIT_INTERRUPTED = 130
EXIT_NO_LINK = 3  # as every other --link: the link cannot be named, or built here
MATRIX_OPTIONS = (
    "preset",
    "models",
    "scenarios",
    "concurrency",
    "rates",
    "repeat",
    "duration",
    "warmup",
    "scenarios_file",
    "corpus",
    "reference",
    "server_cpus",
    "client_cpus",
    "link",
    "links_file",
    "budget",
)
REPORT_RESERVE_S = 15.0  # of the budget, kept for writing the report after the last cell


class LinkError(ConfigError):
    """--link names no profile, or this machine cannot build links (one line, exit code 3)."""


def _fail(command: str, message: str, code: int = 2) -> NoReturn:
    click.echo(f"serverzoo {command}: {message}", err=True)
    sys.exit(code)


@click.command("bench")
@click.option(
    "--preset",
    default="quick",
    show_default=True,
    help="quick (every model and scenario, about 5 min "
    "on 2 cores) or full (wider, longer, 3 repetitions), as the scenarios file defines them.",
)
@click.option("--models", help="Comma-separated models or variants (and nginx); default: the preset's.")
@click.option("--scenarios", help="Comma-separated scenario names; default: all.")
@click.option("--concurrency", help="Closed-loop levels, e.g. 1,64 (replaces each scenario's).")
@click.option("--rates", help="Open-loop offered loads in requests/s, e.g. 500,2000.")
@click.option("--repeat", type=int, help="Repetitions per cell in the first pass. [preset]")
@click.option(
    "--budget",
    type=float,
    help="Seconds the whole run may take: after the first pass, extra "
    "repetitions go where contenders are close until it is spent. [preset]",
)
@click.option("--duration", type=float, help="Measured seconds per cell (replaces each scenario's).")
@click.option("--warmup", type=float, help="Warm-up seconds per cell, excluded from figures.")
@click.option(
    "--out",
    default="results",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the run's JSON, its reports and the corpus.",
)
@click.option("--resume", "resume", type=click.Path(dir_okay=False), help="Complete an interrupted RUN.json.")
@click.option("--scenarios-file", type=click.Path(dir_okay=False), help="Your copy of bench/scenarios.toml.")
@click.option("--corpus", type=click.Path(file_okay=False), help="An existing corpus (default: written under --out).")
@click.option("--reference/--no-reference", default=None, help="nginx as a yardstick row when installed. [on]")
@click.option("--server-cpus", help="CPUs for the server, e.g. 0. [first half]")
@click.option("--client-cpus", help="CPUs for the load generator, e.g. 1. [the rest]")
@click.option(
    "--link",
    "link",
    metavar="NAME",
    help="Run every cell across the emulated link NAME: the server in "
    "one network namespace, the load generator in another (root and iproute2; `serverzoo net links`).",
)
@click.option(
    "--links-file", type=click.Path(dir_okay=False), help="TOML file with [links.NAME] tables. [the scenarios file]"
)
@click.option(
    "--cluster",
    metavar="SCHED",
    help="Run each cell's server on the Dask worker with resource server=1 "
    "and its load on the workers with client=1, via the scheduler tcp://HOST:8786 (docs/cluster.md).",
)
@click.option("--max-cells", type=click.IntRange(1), help="Stop after N cells; the run stays resumable.")
@click.option("--dry-run", is_flag=True, help="Print the plan and the time estimate, run nothing.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write the HTML and Markdown report.")
@click.option(
    "--profile",
    is_flag=True,
    help="After the cells, profile every server at each scenario's top level "
    "(untimed passes: CPU, switches, syscalls, memory, flame graph; `serverzoo profile`).",
)
@click.pass_context
def bench_command(ctx: click.Context, **o: Any) -> None:
    started = time.monotonic()
    """Run the benchmark matrix: server x scenario x level x repetition.

    Each cell starts a fresh server pinned to the server CPUs, runs `serverzoo load`
    pinned to the others (warm-up, then the measured run), and stops the server
    gracefully. Results are saved after every cell in OUT/bench-RUN.json: Ctrl-C
    keeps them, and --resume completes the run.

    After the first pass, each scenario's leader and the servers within its confidence
    interval are measured again, closest races first, until each race is decided or
    measured as precisely as the preset asks, or the budget is spent.

    With --link NAME the whole run goes across one emulated link, built once and
    removed at the end (also on Ctrl-C and errors); --resume rebuilds the same link.
    """
    try:
        if o["resume"]:
            given = [
                n
                for n in MATRIX_OPTIONS
                if ctx.get_parameter_source(n) not in (click.core.ParameterSource.DEFAULT, None)
            ]
            if given:
                raise ConfigError(f"--resume runs the run's own configuration; drop --{given[0].replace('_', '-')}")
            plan, doc, path, corpus_root = _resume(o["resume"], o["dry_run"])
        else:
            plan, doc, path, corpus_root = _new_run(o)
    except LinkError as exc:
        _fail("bench", str(exc), EXIT_NO_LINK)
    except (ConfigError, ResultsError) as exc:
        _fail("bench", str(exc))
    from .matrix import pending_cells

    todo = pending_cells(plan, doc)
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(plan.describe(), err=True)
    if o["resume"]:
        click.echo(
            f"resuming: {len(doc['cells'])} cells kept, {len(todo)} to run, about "
            f"{format_duration(plan.estimate_seconds(todo))}",
            err=True,
        )
    if o["dry_run"]:
        for cell in todo:
            click.echo(cell.id)
        return
    from serverzoo.clients.links.cli_support import NoLinkError, linked_hosts_or_exit
    from serverzoo.clients.loadgen.cluster import EXIT_CLUSTER, ClusterError

    from .matrix import run_matrix

    if o["cluster"] is not None and plan.link is not None:
        _fail("bench", "--cluster and --link cannot be combined: a link joins two namespaces of this machine")
    try:
        # one link for the whole run: up before the first cell, removed after the last, on Ctrl-C and on errors
        with linked_hosts_or_exit(plan.link) as hosts, _cluster_placement(o["cluster"]) as placement:
            if hosts is not None:
                _record_link(doc, hosts, resumed=bool(o["resume"]))
                click.echo(
                    f"link {plan.link.name} up: server host {hosts.server_addr}, client host "
                    f"{hosts.client_addr}; {'; '.join(hosts.applied) or 'nothing shaped'}",
                    err=True,
                )
            write_atomic(path, doc)
            click.echo(f"results: {path}", err=True)
            budget = plan.adaptive.budget
            deadline = started + budget - REPORT_RESERVE_S if budget is not None else None  # per invocation
            status = run_matrix(
                plan,
                doc,
                path,
                corpus_root,
                max_cells=o["max_cells"],
                hosts=hosts,
                deadline=deadline,
                placement=placement,
            )
    except NoLinkError as exc:
        _fail("bench", exc.message, EXIT_NO_LINK)
    except ClusterError as exc:
        _fail("bench", str(exc), EXIT_CLUSTER)
    except KeyboardInterrupt:  # while the link was being built: nothing was measured
        _fail("bench", "interrupted before the first cell", EXIT_INTERRUPTED)
    if plan.link is not None:
        click.echo(f"link {plan.link.name} removed", err=True)
    if status == "interrupted":
        click.echo(
            f"interrupted: {len(doc['cells'])} cells kept in {path}\nresume with: serverzoo bench --resume {path}",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    if status == "partial":
        click.echo(
            f"stopped after --max-cells: {len(doc['cells'])} cells in {path}; "
            f"resume with: serverzoo bench --resume {path}",
            err=True,
        )
    if o["profile"] and status == "complete":
        from .profile_pass import profile_run

        profile_run(plan, doc, path, corpus_root)
    if o["report"]:
        from .report import write_reports

        stem = os.path.splitext(path)[0]
        for written in write_reports([path], stem + ".html", stem + ".md"):
            click.echo(f"report: {written}", err=True)


def _link_profile(name: str | None, links_file: str | None, suite: Suite) -> LinkProfile | None:
    """The LinkProfile --link names: from --links-file when given, else the scenarios file's own
    [links.NAME] tables, else serverzoo's link profiles (serverzoo.clients.links)."""
    from serverzoo.clients.links.profiles import ProfileError, get_profile

    if not name:
        if links_file:
            raise ConfigError("--links-file is read only with --link NAME")
        return None
    if links_file:
        try:
            return get_profile(name, links_file)
        except ProfileError as exc:
            raise LinkError(f"--link {name}: {exc}") from None
    if name in suite.links:
        return suite.links[name]
    try:
        return get_profile(name)
    except ProfileError as exc:
        own = f"; {os.path.basename(suite.path)} adds {', '.join(suite.links)}" if suite.links else ""
        raise LinkError(f"--link {name}: {exc}{own}") from None


def _check_link_support(plan: BenchPlan, dry_run: bool) -> None:
    """Without root or iproute2, say so now (one line), before the corpus is written; a dry run only notes it."""
    from serverzoo.clients.links import LinkUnavailable, require_support

    if plan.link is None:
        return
    try:
        require_support()
    except LinkUnavailable as exc:
        if not dry_run:
            raise LinkError(f"--link {plan.link.name}: {exc}") from None
        plan.notes.append(f"--link {plan.link.name} cannot run here: {exc}")


def _cluster_placement(scheduler: str | None) -> AbstractContextManager:
    """--cluster: the run's Dask placement (one Client for every cell), or None on this machine."""
    if scheduler is None:
        return nullcontext(None)
    from .cluster import open_placement

    return open_placement(scheduler)


def _record_link(doc: dict[str, Any], hosts: LinkedHosts, resumed: bool) -> None:
    """The link as built, in the run's configuration (and, on resume, beside the resumption)."""
    built = hosts.describe()
    if not resumed:
        doc["config"]["link"] = doc["config"]["link"] | built
        return
    doc["resumed"][-1]["link_applied"] = built["applied"]
    before = doc["config"]["link"].get("applied")
    if before is not None and before != built["applied"]:
        doc["notes"].append(
            f"resumed over link {hosts.profile.name} applied as: {'; '.join(built['applied'])} "
            f"(the run began with: {'; '.join(before)})"
        )


def _new_run(o: dict[str, Any]) -> tuple[BenchPlan, dict[str, Any], str, str]:
    from serverzoo.clients.links.namespaces import SERVER_ADDR
    from serverzoo.machine import describe_machine

    from .corpus import check_corpus, default_corpus_dir, ensure_corpus
    from .nginx import NginxError, NginxServer, check_world_readable, nginx_binary
    from .scenarios import load_suite

    suite = load_suite(o["scenarios_file"])
    link = _link_profile(o["link"], o["links_file"], suite)
    if o["preset"] not in suite.presets:
        raise ConfigError(f"unknown preset {o['preset']!r}; choose from: {', '.join(suite.presets)}")
    plan = build_plan(
        suite,
        o["preset"],
        models=parse_list(o["models"], "models"),
        scenarios=parse_list(o["scenarios"], "scenarios"),
        concurrency=parse_list(o["concurrency"], "concurrency", number=True),
        rates=parse_list(o["rates"], "rates", number=True),
        repeat=o["repeat"],
        duration=o["duration"],
        warmup=o["warmup"],
        reference=o["reference"],
        server_cpus=parse_cpus(o["server_cpus"], "server-cpus"),
        client_cpus=parse_cpus(o["client_cpus"], "client-cpus"),
        nginx_available=nginx_binary() is not None,
        link=link,
        budget=o["budget"],
    )
    _check_link_support(plan, o["dry_run"])
    out = o["out"]
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"--out {out} is not writable")
    if o["corpus"]:
        corpus_root = os.path.abspath(o["corpus"])
        check_corpus(corpus_root, plan.corpus)
    elif o["dry_run"]:
        corpus_root = os.path.abspath(default_corpus_dir(out, plan.corpus))
    else:
        corpus_root = ensure_corpus(os.path.abspath(default_corpus_dir(out, plan.corpus)), plan.corpus)
    reference = None
    if REFERENCE in plan.servers and not o["dry_run"]:
        try:
            check_world_readable(corpus_root)
            ngx = NginxServer(
                corpus_root, tuned=True, cpus=plan.server_cpus, host=SERVER_ADDR if plan.link else "127.0.0.1"
            )
            ngx.prefix, ngx.port = "$PREFIX", "$PORT"  # one template for every cell; each gets its own
            reference = {
                "server": REFERENCE,
                "binary": ngx.binary,
                "version": _nginx_version(ngx.binary),
                "tuned": True,
                "config": ngx.config_text(),
            }
        except (NginxError, OSError) as exc:
            del plan.servers[REFERENCE]
            plan.notes.append(f"no nginx yardstick: {exc}")
    created = _dt.datetime.now(_dt.UTC)
    run_id = f"{created:%Y%m%dT%H%M%SZ}-{plan.preset}"
    config = plan.to_config() | {
        "scenarios_file": suite.path,
        "scenarios_sha256": suite.sha256,
        "scenarios_toml": suite.text,
        "corpus_dir": corpus_root,
        "corpus_given": bool(o["corpus"]),
        "reference": reference,
        "generator": {
            "how": "a `serverzoo load` process per cell, pinned to the client CPUs"
            + (", on the link's client host" if plan.link else "")
        },
    }
    if plan.link:
        config["link"]["source"] = o["links_file"] or suite.path
    doc = {
        "schema": SCHEMA,
        "run_id": run_id,
        "created": created.isoformat(timespec="seconds"),
        "finished": None,
        "status": "new",
        "machine": describe_machine(),
        "command": ["serverzoo", *sys.argv[1:]],
        "notes": list(plan.notes),
        "resumed": [],
        "config": config,
        "cells": [],
        "summary_note": "summary: per server/scenario/level medians, spreads and flags, derived from cells by "
        "serverzoo.bench.analysis after every cell (reports recompute it from cells)",
        "summary": [],
    }
    path = os.path.join(out, f"bench-{run_id}.json")  # written once the link, if any, is up
    return plan, doc, path, corpus_root


def _resume(path: str, dry_run: bool = False) -> tuple[BenchPlan, dict[str, Any], str, str]:
    from serverzoo.machine import describe_machine

    from .corpus import check_corpus, ensure_corpus

    doc = read_run(path)
    plan = BenchPlan.from_config(doc["config"])  # with the run's recorded link profile, rebuilt as it was
    _check_link_support(plan, dry_run)
    here, there = describe_machine(), doc["machine"]
    for key in ("hostname", "cpu_model", "cpus"):
        if here.get(key) != there.get(key):
            raise ConfigError(
                f"{path} was measured on {there.get(key)!r} ({key}); this machine is {here.get(key)!r}: "
                "one run must come from one machine"
            )
    if here.get("git_commit") != there.get("git_commit"):
        doc["notes"].append(
            f"resumed at git commit {here.get('git_commit')} (the run began at {there.get('git_commit')})"
        )
    corpus_root = doc["config"]["corpus_dir"]
    if doc["config"].get("corpus_given"):
        check_corpus(corpus_root, plan.corpus)
    else:
        ensure_corpus(corpus_root, plan.corpus)  # the same seed writes the same bytes
    if REFERENCE in plan.servers and not doc["config"].get("reference"):
        del plan.servers[REFERENCE]
    doc["resumed"].append(
        {
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "git_commit": here.get("git_commit"),
            "cells_before": len(doc["cells"]),
        }
    )
    return plan, doc, path, corpus_root


def _nginx_version(binary: str) -> str | None:
    import subprocess

    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ") or None


# -- report ----------------------------------------------------------------------------


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write the HTML report here.")
@click.option("--md", "md_path", type=click.Path(dir_okay=False), help="Write the Markdown summary here.")
@click.option(
    "--baseline",
    help="A server to take ratios against in the scenarios where it ran unflagged. "
    "[nginx, else each scenario's median model]",
)
@click.option(
    "--noise-floor",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="With several runs: the smallest change the delta table calls real.",
)
def report_command(
    runs: tuple[str, ...], html_path: str | None, md_path: str | None, baseline: str | None, noise_floor: float
) -> None:
    """Turn RUN.json (one or more) into a self-contained HTML report and a Markdown summary.

    With neither --html nor --md, writes both next to the last RUN (RUN.html, RUN.md).
    With several runs, the last is reported in full and each earlier run gets a delta
    table against it; an earlier run over another network (loopback vs --link wan) is
    put side by side with it instead, rows labelled "model @link". A RUN may also be a
    `serverzoo udp compare --json` result, in any position: it becomes the report's
    "TCP vs UDP" section (a report of those alone is that section).
    """
    from .report import write_reports

    if html_path is None and md_path is None:
        stem = os.path.splitext(runs[-1])[0]
        html_path, md_path = stem + ".html", stem + ".md"
    try:
        written = write_reports(list(runs), html_path, md_path, baseline=baseline, noise_floor=noise_floor)
    except ResultsError as exc:
        _fail("report", str(exc))
    except OSError as exc:
        _fail("report", f"cannot write the report: {exc.strerror or exc} ({exc.filename})")
    for path in written:
        click.echo(path)


# -- compare ---------------------------------------------------------------------------

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


@click.command("compare")
@click.argument("before", type=click.Path(dir_okay=False))
@click.argument("after", type=click.Path(dir_okay=False))
@click.option(
    "--threshold",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 10),
    help="Smallest relative change that can count, on top of the runs' own measured noise.",
)
@click.option("--all", "show_all", is_flag=True, help="List every compared cell, not only the changes.")
def compare_command(before: str, after: str, threshold: float, show_all: bool) -> None:
    """Compare two runs cell by cell; the exit code is a CI regression gate.

    A change counts only when it is larger than --threshold and stands out from the measured
    noise of both cells. Two runs are two server starts, so the noise that counts is the one
    between server starts: a cell measured once (one repetition) has none measured, is
    reported "unmeasured", and never fails the gate. The cells are judged together: each
    change's p-value is adjusted for the number of cells compared (false discovery rate 5%),
    so two runs of the same code fail the gate by luck in at most 5% of comparisons, however
    many cells they share. Run both sides with `--repeat 3` for a gate that can catch a
    regression. Exit codes: 0 no regression;
    1 at least one cell regressed beyond noise or newly fails; 2 the runs cannot be read,
    have no cell in common, or went over different networks (loopback and an emulated link,
    or two links): `serverzoo report` puts those side by side.
    """
    from . import agreement, verdicts
    from .analysis import DifferentLinks, RunView, deltas, format_value, newly_failed
    from .store import load_run

    try:
        a, b = RunView(load_run(before)), RunView(load_run(after))
    except ResultsError as exc:
        _fail("compare", str(exc), EXIT_BAD_INPUT)
    try:
        rows = deltas(a, b, floor=threshold)
        broken = newly_failed(a, b)
    except DifferentLinks as exc:
        # a gate over two networks would call the link's effect a regression (or hide one behind it)
        _fail(
            "compare",
            f"{exc}: a regression gate compares runs over the same network "
            f"(`serverzoo report {before} {after}` puts them side by side)",
            EXIT_BAD_INPUT,
        )
    if not rows and not broken:
        _fail("compare", "the two runs have no successfully measured cell in common", EXIT_BAD_INPUT)
    click.echo(
        f"{a.run.run_id} -> {b.run.run_id} (both over {b.link}): {len(rows)} cells compared "
        f"(a change must exceed {threshold:.0%} and the noise, judged over all the cells measured "
        f"more than once at a 5% false discovery rate)"
    )
    ma, mb = a.run.machine, b.run.machine
    if (ma.get("hostname"), ma.get("cpu_model")) != (mb.get("hostname"), mb.get("cpu_model")):
        click.echo(
            f"note: different machines ({ma.get('hostname')}: {ma.get('cpu_model')} / "
            f"{mb.get('hostname')}: {mb.get('cpu_model')}); changes may be the machine's"
        )
    for d in rows:
        if not (d.regression or d.improvement or show_all):
            continue
        word = {"regression": "REGRESSION"}.get(d.verdict, d.verdict)
        noise = f"noise ±{d.noise:.1%}" if d.noise is not None else "noise unmeasured"
        click.echo(
            f"  {d.server}/{d.scenario}/{d.level}: {format_value(d.metric, d.before.value)} -> "
            f"{format_value(d.metric, d.after.value)} ({d.change:+.1%}, {noise}) {word}: {d.why}"
        )
    for server, scenario, level in broken:
        click.echo(f"  {server}/{scenario}/{level}: measured before, FAILS now")
    regressions = sum(d.regression for d in rows) + len(broken)
    improvements = sum(d.improvement for d in rows)
    unmeasured = sum(d.verdict == "unmeasured" for d in rows)
    click.echo(
        f"{regressions} regression(s), {improvements} improvement(s) beyond noise; "
        f"{unmeasured} cell(s) unmeasured (one repetition: no noise between server starts to judge by)"
    )
    agreeing = agreement.compare(verdicts.of_run(a.run, a), verdicts.of_run(b.run, b))
    if agreeing:
        click.echo(agreement.summary(agreeing))
        for row in agreeing:
            if row.status == agreement.DIFFERENT:
                click.echo(f"  {row.scenario}: {agreement.label(row.before)} -> {agreement.label(row.after)}")
    sys.exit(EXIT_REGRESSION if regressions else EXIT_OK)
