"""`serverzoo load` and `serverzoo corpus`."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from typing import TYPE_CHECKING, NoReturn

import click

from ..links.cli_support import EXIT_NO_LINK, link_options
from .corpus import DEFAULT_SIZES, CorpusError, parse_size
from .options import ARRIVALS, CONN_MODES, LOOPS, LoadOptions, OptionError, parse_cpu_list, parse_duration
from .slo import exit_status, parse_goals, slo_text
from .stages import parse_rate

if TYPE_CHECKING:
    from .capacity import SearchSettings
    from .cluster import ClusterOptions


class _ParsedText(click.ParamType):
    """An option written as text and read by one of the options' parsers, whose error becomes click's
    usage message; a value already of a parsed type (a default, or a value the benchmark runner
    passes on) is only normalised."""

    def __init__(self, name: str, parse, errors: tuple[type[Exception], ...], parsed: tuple[type, ...], normal) -> None:
        self.name = name
        self.parse = parse
        self.errors = errors
        self.parsed = parsed
        self.normal = normal

    def convert(self, value, param, ctx):
        if isinstance(value, self.parsed):
            return self.normal(value)
        try:
            return self.parse(value)
        except self.errors as exc:
            self.fail(str(exc), param, ctx)


def _size(text: str) -> float:
    try:
        return float(text)  # a plain number of bytes, as the benchmark runner writes it
    except ValueError:
        return float(parse_size(text))


class _LoopbackCount(click.ParamType):
    name = "N|all"

    def convert(self, value, param, ctx):
        from .ports import LOOPBACK_ADDRESSES

        if isinstance(value, int):
            return value
        if value == "all":
            return LOOPBACK_ADDRESSES
        try:
            return int(value)
        except ValueError:
            self.fail(f"not a count of addresses: {value!r} (a number, or all)", param, ctx)


class _Goal(click.ParamType):
    name = "GOAL"

    def convert(self, value, param, ctx):
        from .slo import SloError, parse_goal

        try:
            return parse_goal(value).text
        except SloError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _ParsedText("DURATION", parse_duration, (OptionError,), (int, float), float)
CPUS = _ParsedText("CPUS", parse_cpu_list, (OptionError,), (list,), list)
SIZE = _ParsedText("BYTES", _size, (CorpusError,), (int, float), float)
LOOPBACK_COUNT, GOAL = _LoopbackCount(), _Goal()
EXIT_SLO = 5  # a --slo goal was not met

EPILOG = """\b
Examples:
  serverzoo load http://127.0.0.1:8000/1KiB.bin -c 64 -d 10s
  serverzoo load http://127.0.0.1:8000/ --corpus corpus --zipf 1.0 -R 2000 --json run.json
  serverzoo load http://127.0.0.1:8000/1KiB.bin --conn-mode new -n 10000
  serverzoo load 'http://127.0.0.1:8000/_/work?cpu=20&wait=5' -c 32 --cpus 1 --server-pid 1234
  serverzoo load /1KiB.bin --serve asyncio-uvloop --corpus corpus -c 64 -d 10s --server-cpus 0 --cpus 1
  serverzoo load /64KiB.bin --serve threading --corpus corpus --link lossy -n 2000
  serverzoo load http://10.0.0.5:8000/1KiB.bin -c 256 -d 30s --cluster tcp://10.0.0.2:8786
\b
With --serve MODEL the run starts its own server (on --root, or the --corpus directory),
samples it, and stops it afterwards; the targets are then paths. --link NAME (root) puts
that server and the generator on the two ends of an emulated link (`serverzoo net links`).
\b
Exit status: 0 when every request succeeded, 1 when some failed, 2 for bad settings or a
server that did not start, 3 when the --link cannot be built here, 4 when the --cluster
cannot be reached or lost a worker mid-run (then the --json result is written, marked partial),
5 when a --slo goal was not met (before 1: with an errors goal, failed requests within it
are not an error), or when --find-capacity found no rate at which every goal held.
"""


@click.command("load", epilog=EPILOG)
@click.argument("urls", nargs=-1, required=True, metavar="URL|PATH [URL|PATH...]")
@click.option("-c", "--connections", type=int, default=10, show_default=True, help="Connections (virtual clients).")
@click.option("-d", "--duration", type=DURATION, help="Measured time, e.g. 10s, 500ms, 2m. [10s]")
@click.option("-n", "--requests", type=int, help="Measure exactly this many requests instead of a duration.")
@click.option(
    "-R",
    "--rate",
    "rate_text",
    metavar="RATE",
    help="Open loop: requests per second in total (wrk2's -R); 1000,2000,4000 with --stage, or 1000..8000 with --ramp.",
)
@click.option(
    "--arrivals",
    type=click.Choice(ARRIVALS),
    default="constant",
    show_default=True,
    help="Open loop: evenly spaced or Poisson arrivals.",
)
@click.option(
    "--conn-mode",
    type=click.Choice(CONN_MODES),
    default="keepalive",
    show_default=True,
    help="keepalive; new: a new connection per request; pipeline: --depth requests per write.",
)
@click.option("--depth", "pipeline_depth", type=int, help="Pipeline depth (with --conn-mode pipeline). [8]")
@click.option(
    "--think", "think_s", type=DURATION, default=0, help="Closed loop: pause between a response and the next request."
)
@click.option(
    "--warmup", "warmup_s", type=DURATION, default=0, help="Run this long first; measured separately, excluded."
)
@click.option(
    "--ramp-up",
    "ramp_up_s",
    type=DURATION,
    default=0,
    help="Open the connections gradually over this time (not counted).",
)
@click.option("-w", "--workers", type=int, help="Generator processes. [one per CPU of --cpus, or per usable CPU]")
@click.option("--cpus", type=CPUS, help="Pin the generator: worker i on the i-th CPU of this list (e.g. 1 or 2-3).")
@click.option(
    "--server-pid", type=int, help="Sample this process tree's CPU and RSS during the run. [--serve: its own]"
)
@click.option(
    "--server-cpus",
    type=CPUS,
    help="Where the server is pinned (recorded, checked against --cpus); --serve pins it there.",
)
@click.option(
    "--serve",
    metavar="MODEL",
    help="Start `serverzoo serve MODEL` for this run (a model of `serverzoo models`, or a variant such "
    "as asyncio-uvloop), pinned to --server-cpus, sampled, stopped afterwards. Targets are paths.",
)
@click.option("--root", type=click.Path(), help="Directory the --serve server serves. [the --corpus directory]")
@click.option(
    "--server-args", metavar="'ARGS'", help="More `serverzoo serve` arguments for --serve, e.g. '--workers 2'."
)
@link_options
@click.option("--mix", "mix_file", type=click.Path(dir_okay=False), help="Request mix: lines 'WEIGHT PATH'.")
@click.option("--corpus", type=click.Path(), help="Corpus directory (manifest.json): bodies are verified against it.")
@click.option("--zipf", type=float, help="Request every corpus file, by Zipf popularity with this exponent.")
@click.option("--work", help="Add the work endpoint to the mix: cpu=N,wait=MS.")
@click.option("-H", "--header", "headers", multiple=True, help="Extra request header 'Name: value' (repeatable).")
@click.option("--status", "expect_status", type=int, default=200, show_default=True, help="Expected status.")
@click.option(
    "--verify-every",
    type=int,
    default=1,
    show_default=True,
    help="Check the body of one response in N (0: never); status and length are always checked.",
)
@click.option("--timeout", "timeout_s", type=DURATION, default=10, show_default=True, help="Response timeout.")
@click.option("--connect-timeout", "connect_timeout_s", type=DURATION, default=5, show_default=True)
@click.option("--idle", type=int, default=0, help="Adversary: connections held open without a request.")
@click.option("--slow-readers", type=int, default=0, help="Adversary: connections reading slowly.")
@click.option("--slow-read-rate", type=SIZE, default="16KiB", show_default=True, help="Bytes/s per slow reader.")
@click.option("--slow-read-path", help="What slow readers fetch. [the largest target]")
@click.option("--slow-senders", type=int, default=0, help="Adversary: connections dribbling their request head.")
@click.option(
    "--slow-send-interval",
    "slow_send_interval_s",
    type=DURATION,
    default=1,
    show_default=True,
    help="Slow senders send one byte per interval.",
)
@click.option(
    "--loopback-sources",
    type=LOOPBACK_COUNT,
    default="0",
    help="Connect from N addresses of 127.0.0.0/8 in turn (or all), each with its own local ports; "
    "for long runs of new connections to a loopback server. [0: the kernel's choice]",
)
@click.option("-p", "--percentile", "percentiles", type=float, multiple=True, help="Report this percentile too.")
@click.option(
    "--sample-interval",
    "sample_interval_s",
    type=DURATION,
    default=0.5,
    show_default=True,
    help="How often the server is sampled.",
)
@click.option(
    "--timeline-interval",
    "timeline_interval_s",
    type=DURATION,
    default=1,
    show_default=True,
    help="Length of each slice of the result's per-interval timeline, e.g. 100ms.",
)
@click.option("--reconnect-after", type=int, help="Keep-alive clients open a new connection after N responses.")
@click.option(
    "--server-cgroup",
    type=click.Path(file_okay=False),
    help="A cgroup v2 directory holding the --server-pid tree: its CPU is read from there (exited children included).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the mix draws and Poisson arrivals.")
@click.option(
    "--loop",
    type=click.Choice(LOOPS),
    default="auto",
    show_default=True,
    help="Workers' event loop (auto: uvloop when installed).",
)
@click.option(
    "--cluster",
    metavar="SCHED",
    help="Generate on a Dask cluster: tcp://HOST:8786 (its scheduler), or local:N (N worker processes "
    "here). One generator process per Dask worker; -c and -R are split between them.",
)
@click.option(
    "--cluster-workers",
    type=int,
    help="How many Dask workers generate (those with resource client=1 if any has it). [all]",
)
@click.option(
    "--cluster-timeout",
    type=DURATION,
    default=10,
    show_default=True,
    help="How long to try reaching the --cluster scheduler.",
)
# -- service-level goals and the capacity search (docs/capacity.md) --
@click.option(
    "--slo",
    "slos",
    type=GOAL,
    multiple=True,
    help="A goal checked at the end (repeatable): p99<10ms, p99.9<=50ms, errors<0.1%, rps>5000. "
    "Exit status 5 when one is not met; the JSON says each goal's measure and margin.",
)
@click.option(
    "--abort-on-fail",
    is_flag=True,
    help="Stop as soon as a --slo goal can no longer be met, whatever the rest of the run brings "
    "(needs -R or -n: a bound on the responses still to come).",
)
@click.option(
    "--find-capacity",
    is_flag=True,
    help="Search the open-loop rate for the highest one at which every --slo goal holds and the rate "
    "is achieved: grow x2, then bisect; print the latency-against-load curve it walked. -d and "
    "--warmup set each step's shortest window and warm-up.",
)
@click.option("--search-start", type=float, help="First rate of the search, req/s. [-R, or 100]")
@click.option(
    "--search-resolution",
    type=float,
    default=0.05,
    show_default=True,
    help="Stop bisecting when the failing rate is within this fraction of the holding one.",
)
@click.option("--search-steps", type=int, default=20, show_default=True, help="At most this many steps.")
@click.option(
    "--search-time",
    type=DURATION,
    default="3m",
    show_default=True,
    help="The search ends before this much time has passed (a step that would not fit is not run).",
)
# -- end of the goals' options --
@click.option("--json", "json_path", metavar="PATH|-", help="Write the result document (- for stdout).")
@click.option(
    "--live/--quiet",
    default=None,
    help="Live view, redrawn every second (on a pipe: a plain line a second). [on when stderr is a terminal]",
)
# -- live figures, exports and rate stages (docs/live-and-timeseries.md) --
@click.option(
    "--stage",
    "stage_s",
    type=DURATION,
    help="Rate stages: each rate of -R 1000,2000,4000 held this long; with a --ramp, the length of its "
    "reported segments. Each stage is reported apart.",
)
@click.option(
    "--ramp", "ramp_s", type=DURATION, help="A linear ramp of -R FROM..TO over this long (the measured time)."
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False),
    help="Write the per-interval timeline (--timeline-interval) as CSV.",
)
@click.option(
    "--hdr-log",
    "hdr_log_path",
    type=click.Path(dir_okay=False),
    help="Write the timeline's interval histograms as an HdrHistogram log (microseconds).",
)
@click.option(
    "--progress-fd",
    type=int,
    hidden=True,
    help="Write the live figures as one JSON line a second to this inherited file descriptor.",
)
def load_command(
    urls: tuple[str, ...],
    json_path: str | None,
    live: bool | None,
    server_args: str | None,
    cluster: str | None,
    cluster_workers: int | None,
    cluster_timeout: float,
    rate_text: str | None,
    stage_s: float | None,
    ramp_s: float | None,
    csv_path: str | None,
    hdr_log_path: str | None,
    progress_fd: int | None,
    find_capacity: bool,
    search_start: float | None,
    search_resolution: float,
    search_steps: int,
    search_time: float,
    **kwargs,
) -> None:
    """Load URL's server (or, with --serve, one started for the run) with HTTP/1.1 requests
    and report throughput, latency and errors.

    Every response is verified (status, Content-Length, and the body against --corpus's
    manifest or the work endpoint's known reply). Closed loop by default; -R gives an open
    loop whose latency is timed from each request's scheduled time (no coordinated
    omission), reported beside the uncorrected view.
    """
    from ..links import LinkUnavailable
    from ..links.profiles import ProfileError
    from . import LoadError, run_load
    from .capacity import MIN_STEP_S, MIN_WARMUP_S, SearchSettings
    from .cluster import ClusterOptions
    from .coordinator import check_options

    kwargs["headers"] = list(kwargs["headers"])
    kwargs["percentiles"] = list(kwargs["percentiles"])
    kwargs["slos"] = list(kwargs["slos"])
    if live is None:
        live = sys.stderr.isatty()
    try:
        extra = shlex.split(server_args or "")
    except ValueError as exc:
        _fail(f"--server-args {server_args!r}: {exc}", 2)
    if rate_text is None and (stage_s is not None or ramp_s is not None):
        _fail("--stage and --ramp are rate stages of the open loop: give -R too", 2)
    try:
        rate, schedule = parse_rate(rate_text, stage_s, ramp_s) if rate_text is not None else (None, None)
    except OptionError as exc:
        _fail(str(exc), 2)
    opts = LoadOptions(
        url=urls[0],
        urls=list(urls[1:]),
        live=live,
        server_args=extra,
        rate=rate,
        rate_schedule=schedule,
        progress_fd=progress_fd,
        **kwargs,
    )
    if find_capacity:
        if cluster is not None:
            _fail("--find-capacity runs its steps from this machine; it is not available with --cluster", 2)
        settings = SearchSettings(
            start=search_start or opts.rate or 100.0,
            resolution=search_resolution,
            max_steps=search_steps,
            max_time_s=search_time,
            min_step_s=opts.duration or MIN_STEP_S,
            min_warmup_s=max(opts.warmup_s, MIN_WARMUP_S),
        )
        _search_capacity(opts, settings, json_path)
    if cluster is not None:
        _load_on_cluster(
            opts, ClusterOptions(cluster, cluster_workers, cluster_timeout), json_path, (csv_path, hdr_log_path)
        )
    if cluster_workers is not None:
        _fail("--cluster-workers applies to --cluster", 2)
    try:
        check_options(opts)  # before a link is built: that takes a moment
        doc = run_load(opts)
    except (OptionError, LoadError) as exc:
        _fail(str(exc), 2)
    except (LinkUnavailable, ProfileError) as exc:
        _fail(f"--link {opts.link}: {exc}", EXIT_NO_LINK)
    _emit(doc, _summary(doc), json_path)
    _export(doc, csv_path, hdr_log_path)
    sys.exit(exit_status(doc, EXIT_SLO))


def _search_capacity(opts: LoadOptions, settings: SearchSettings, json_path: str | None) -> NoReturn:
    from ..links import LinkUnavailable
    from ..links.profiles import ProfileError
    from . import LoadError
    from .capacity import capacity_text, find_capacity
    from .coordinator import check_options
    from .report import fmt_us

    def progress(row: dict) -> None:
        if opts.live:
            held = "held" if row["held"] else "did not hold"
            click.echo(
                f"  step {row['step']}: {row['target_rate']:g} req/s, p99 {fmt_us(row['latency_us']['p99'])}, {held}",
                err=True,
            )

    opts.rate = settings.start  # what the checks below see; each step sets its own
    try:
        check_options(opts)
        doc = find_capacity(opts, settings, progress)
    except (OptionError, LoadError) as exc:
        _fail(str(exc), 2)
    except (LinkUnavailable, ProfileError) as exc:
        _fail(f"--link {opts.link}: {exc}", EXIT_NO_LINK)
    _emit(doc, capacity_text(doc), json_path)
    sys.exit(0 if doc["capacity_rps"] is not None else EXIT_SLO)


def _summary(doc: dict, extra: str = "") -> str:
    """The run's summary, its cluster part if any, and the goals' verdicts if any were given."""
    from .report import summary_text

    parts = [summary_text(doc), extra] + ([slo_text(doc["slo"])] if doc.get("slo") else [])
    return "\n".join(p for p in parts if p)


def _export(doc: dict, csv_path: str | None, hdr_log_path: str | None) -> None:
    from .exports import write_hdr_log, write_timeline_csv

    for path, write in ((csv_path, write_timeline_csv), (hdr_log_path, write_hdr_log)):
        if path is None:
            continue
        try:
            write(doc, path)
        except OSError as exc:
            _fail(f"cannot write {path}: {exc.strerror or exc}", 2)


def _load_on_cluster(
    opts: LoadOptions, cluster: ClusterOptions, json_path: str | None, exports: tuple[str | None, str | None]
) -> NoReturn:
    from distributed.utils import silence_logging_cmgr

    from .cluster import EXIT_CLUSTER, ClusterError, ClusterPartial, cluster_text, run_cluster_load
    from .coordinator import LoadError

    if opts.abort_on_fail:
        _fail("--abort-on-fail watches the workers of one machine; it is not available with --cluster", 2)
    try:
        with silence_logging_cmgr(logging.CRITICAL):  # Dask's own reports of a fault: our one line says it
            doc = run_cluster_load(opts, cluster)
    except ClusterPartial as exc:
        if exc.document is None:
            _fail(f"{exc}; nothing was measured", EXIT_CLUSTER)
        _add_goals(exc.document, opts)
        _emit(exc.document, _summary(exc.document, cluster_text(exc.document)), json_path)
        _fail(f"{exc}; the result covers the other workers and is marked partial", EXIT_CLUSTER)
    except ClusterError as exc:
        _fail(str(exc), EXIT_CLUSTER)
    except (OptionError, LoadError) as exc:
        _fail(str(exc), 2)
    _add_goals(doc, opts)
    _emit(doc, _summary(doc, cluster_text(doc)), json_path)
    _export(doc, *exports)
    sys.exit(exit_status(doc, EXIT_SLO))


def _add_goals(doc: dict, opts: LoadOptions) -> None:
    """A cluster run's goals, checked on its merged result (it has no --abort-on-fail)."""
    from .coordinator import add_slo_section

    if opts.slos:
        add_slo_section(doc, parse_goals(opts.slos), None)


def _emit(doc: dict, text: str, json_path: str | None) -> None:
    """The summary on stdout (stderr when the JSON goes to stdout), and the JSON document."""
    if json_path == "-":
        click.echo(text, err=True)
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        click.echo(text)
        if json_path:
            try:
                with open(json_path, "w") as f:
                    json.dump(doc, f, indent=1)
                    f.write("\n")
            except OSError as exc:
                click.echo(f"serverzoo load: cannot write {json_path}: {exc.strerror or exc}", err=True)
                sys.exit(2)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"serverzoo load: {message}", err=True)
    sys.exit(code)


@click.command("corpus")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "-s",
    "--size",
    "sizes",
    multiple=True,
    metavar="SIZE[*COUNT]",
    help=f"A file size, optionally with a count: 1KiB, 64k, 1MiB*10 (repeatable). [{' '.join(DEFAULT_SIZES)}]",
)
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed writes the same bytes.")
@click.option("--check", is_flag=True, help="Verify an existing corpus against its manifest instead.")
def corpus_command(directory: str, sizes: tuple[str, ...], seed: int, check: bool) -> None:
    """Write a reproducible corpus to DIRECTORY: files of the given sizes and manifest.json.

    File names say their size (1KiB.bin, 64KiB-0001.bin, ...); the manifest lists name,
    size and sha256 in rank order, which --zipf uses for popularity.
    """
    from .corpus import load_manifest, verify_corpus, write_corpus

    try:
        if check:
            manifest = load_manifest(directory)
            bad = verify_corpus(directory, manifest)
            if bad:
                click.echo(
                    f"serverzoo corpus: {len(bad)} of {len(manifest)} files differ from the manifest: "
                    + ", ".join(bad[:5])
                    + (" ..." if len(bad) > 5 else ""),
                    err=True,
                )
                sys.exit(1)
            click.echo(f"{directory}: {len(manifest)} files match the manifest")
            return
        manifest = write_corpus(directory, sizes or DEFAULT_SIZES, seed)
    except CorpusError as exc:
        click.echo(f"serverzoo corpus: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"serverzoo corpus: cannot write {directory}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    total = sum(f.size for f in manifest)
    click.echo(f"wrote {len(manifest)} files ({total:,} bytes) and manifest.json to {directory} (seed {seed})")
