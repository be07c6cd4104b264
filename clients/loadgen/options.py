"""LoadOptions: everything a run is told, checked before anything starts.

The same dataclass is the Python API's argument, what the CLI builds, and (as a dict)
the "options" object of the JSON result, so a result always says exactly how it was made.
Settings that cannot mean anything are refused with a one-line OptionError.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .stages import RateSchedule

CONN_MODES = ("keepalive", "new", "pipeline")
ARRIVALS = ("constant", "poisson")
LOOPS = ("auto", "uvloop", "asyncio")
DEFAULT_PIPELINE_DEPTH = 8


class OptionError(ValueError):
    """A setting that cannot mean anything; the message is one line, for the user."""


@dataclass
class LoadOptions:
    """How to load a server. Only url is required; the defaults follow wrk (-c 10 -d 10s).

    Workload: url (and extra urls), mix_file ("WEIGHT PATH" lines), corpus (a directory with
    manifest.json: bodies are verified against it; with zipf every corpus file is a target,
    ranked by manifest order), work ("cpu=N,wait=MS": the /_/work endpoint as one more target).
    Load: connections; duration seconds or requests (a count, exact); rate (requests/s, open loop,
    with arrivals constant or poisson) or closed loop with think_s between a response and the
    next request; conn_mode keepalive, new (a new connection per request) or pipeline (depth
    requests sent together). Phases: ramp_up_s (connections opened gradually, not counted),
    warmup_s (measured separately, excluded). Processes: workers (None: one per CPU of cpus, or
    of this process's affinity), cpus (pin worker i to cpus[i % len]), server_pid (sample its
    process tree), server_cpus (recorded, and checked against cpus).
    reconnect_after: a keep-alive client closes its connection after N responses and opens a
    new one for the next request, as real clients come and go (a server that hands out a
    thread or process per connection must then accept it again).
    Adversaries held during the run, all connected before the first active client: idle connections, slow_readers (reading slow_read_rate
    bytes/s of slow_read_path, default the largest target), slow_senders (one byte of the
    request head every slow_send_interval_s).
    A server for the run: serve (a model of `serverzoo models` or a variant such as
    asyncio-uvloop) is started on root (default: corpus) with server_args, pinned to
    server_cpus, sampled, and stopped afterwards; url and urls are then paths (/1KiB.bin).
    link (a profile of links_file) runs that server and the workers on two network
    namespaces joined by the emulated link (root and iproute2).
    loopback_sources: connect from that many addresses of 127.0.0.0/8 in turn (each has its own
    local ports), for long runs of short connections to a loopback server.
    """

    url: str
    urls: list[str] = field(default_factory=list)  # more targets on the same server, weight 1 each
    connections: int = 10
    duration: float | None = None  # seconds; default 10 when requests is not given
    requests: int | None = None
    rate: float | None = None
    arrivals: str = "constant"
    conn_mode: str = "keepalive"
    pipeline_depth: int | None = None
    think_s: float = 0.0
    warmup_s: float = 0.0
    ramp_up_s: float = 0.0
    workers: int | None = None
    cpus: list[int] | None = None
    server_pid: int | None = None
    server_cpus: list[int] | None = None
    mix_file: str | None = None
    corpus: str | None = None
    zipf: float | None = None
    work: str | None = None
    headers: list[str] = field(default_factory=list)
    expect_status: int = 200
    verify_every: int = 1  # check the body of 1 response in N (status and length: always); 0 = never
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    idle: int = 0
    slow_readers: int = 0
    slow_read_rate: float = 16384.0  # bytes/s per slow reader
    slow_read_path: str | None = None
    slow_senders: int = 0
    slow_send_interval_s: float = 1.0
    percentiles: list[float] = field(default_factory=list)
    sample_interval_s: float = 0.5
    timeline_interval_s: float = 1.0  # length of each slice of the per-interval timeline
    reconnect_after: int | None = None  # closed keep-alive loop: a client opens a new connection after N responses
    server_cgroup: str | None = None  # a cgroup v2 directory holding the server's process tree: its CPU from there
    seed: int = 0
    loop: str = "auto"  # the workers' event loop: auto (uvloop if installed), uvloop or asyncio
    live: bool = False
    serve: str | None = None  # start this server model (or variant) for the run
    root: str | None = None  # its docroot; default: corpus
    server_args: list[str] = field(default_factory=list)  # more `serverzoo serve` arguments
    link: str | None = None  # emulated link profile between the server and the workers
    links_file: str | None = None
    loopback_sources: int = 0  # connect from this many addresses of 127.0.0.0/8 (0: the kernel's choice)
    # rate stages (stages.py): the open loop's target steps or ramps over the window; rate is then its first rate
    rate_schedule: RateSchedule | None = None
    progress_fd: int | None = None  # an inherited descriptor: the live figures as a JSON line a second
    slos: list[str] = field(default_factory=list)  # goals as written (slo.parse_goal), checked at the end
    abort_on_fail: bool = False  # stop early once a goal is proven lost (slo_watch)

    # -- derived -------------------------------------------------------------------
    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def depth(self) -> int:
        if self.conn_mode != "pipeline":
            return 1
        return self.pipeline_depth or DEFAULT_PIPELINE_DEPTH

    @property
    def measured_duration(self) -> float | None:
        if self.requests is not None:
            return None
        if self.rate_schedule is not None:
            return self.rate_schedule.duration_s
        return 10.0 if self.duration is None else self.duration

    @property
    def lowest_rate(self) -> float:
        """The open loop's lowest target (the rate itself unless it has stages)."""
        assert self.rate is not None
        return self.rate_schedule.lowest if self.rate_schedule is not None else self.rate

    def resolved_workers(self) -> int:
        """workers if given; else one per CPU (of cpus, or usable here), but never more than the
        connections, or than the rate allows (each worker must send at least 1 request/s)."""
        if self.workers is not None:
            return self.workers
        if self.cpus:
            n = len(self.cpus)
        else:
            n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = min(n, max(self.connections, 1))
        if self.rate is not None and self.lowest_rate >= 1:
            n = min(n, int(self.lowest_rate))
        return max(n, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["workers_resolved"] = self.resolved_workers()
        d["duration_resolved"] = self.measured_duration
        d["pipeline_depth_resolved"] = self.depth
        return d

    # -- checks --------------------------------------------------------------------
    def validate(self) -> None:
        """Raise OptionError (one line) for settings that cannot mean anything."""
        _check(self.connections >= 1, f"--connections must be at least 1 (got {self.connections})")
        if self.duration is not None and self.requests is not None:
            raise OptionError("give --duration or --requests, not both")
        if self.duration is not None:
            _check(self.duration > 0, f"--duration must be positive (got {self.duration:g})")
        if self.requests is not None:
            _check(self.requests >= 1, f"--requests must be at least 1 (got {self.requests})")
        workers = self.resolved_workers()
        _check(workers >= 1, f"--workers must be at least 1 (got {workers})")
        _check(
            self.connections >= workers,
            f"--connections {self.connections} is below --workers {workers}: a worker would have no connection",
        )
        if self.rate is not None:
            _check(self.rate > 0, f"--rate must be positive (got {self.rate:g})")
            _check(
                self.lowest_rate >= workers,
                f"--rate {self.lowest_rate:g} is below --workers {workers}: each worker process would send "
                f"less than one request per second",
            )
            _check(self.conn_mode != "pipeline", "pipelining is a closed-loop setting; drop --rate or the pipeline")
            _check(self.think_s == 0, "--think is a closed-loop setting; the open loop sends on a schedule")
        else:
            _check(self.arrivals == "constant", "--arrivals applies to the open loop; give --rate too")
            _check(self.rate_schedule is None, "rate stages need an open loop: give -R")
        if self.rate_schedule is not None:
            _check(
                self.duration is None and self.requests is None,
                "--stage and --ramp set the measured time; drop --duration and --requests",
            )
        if self.requests is not None and self.rate is None:
            _check(
                self.requests >= self.connections,
                f"--requests {self.requests} is below --connections {self.connections}: "
                f"some connections would never send",
            )
        _check(self.arrivals in ARRIVALS, f"--arrivals must be one of {', '.join(ARRIVALS)}")
        _check(self.conn_mode in CONN_MODES, f"--conn-mode must be one of {', '.join(CONN_MODES)}")
        if self.pipeline_depth is not None:
            _check(self.conn_mode == "pipeline", "--depth applies to --conn-mode pipeline")
            _check(self.pipeline_depth >= 2, f"--depth must be at least 2 (got {self.pipeline_depth})")
        for name, value in (("--think", self.think_s), ("--warmup", self.warmup_s), ("--ramp-up", self.ramp_up_s)):
            _check(value >= 0, f"{name} cannot be negative (got {value:g})")
        _check(self.timeout_s > 0, f"--timeout must be positive (got {self.timeout_s:g})")
        _check(self.connect_timeout_s > 0, f"--connect-timeout must be positive (got {self.connect_timeout_s:g})")
        _check(self.verify_every >= 0, f"--verify-every cannot be negative (got {self.verify_every})")
        _check(100 <= self.expect_status <= 599, f"--status must be an HTTP status (got {self.expect_status})")
        for name, value in (
            ("--idle", self.idle),
            ("--slow-readers", self.slow_readers),
            ("--slow-senders", self.slow_senders),
        ):
            _check(value >= 0, f"{name} cannot be negative (got {value})")
        if self.slow_readers:
            _check(self.slow_read_rate > 0, f"--slow-read-rate must be positive (got {self.slow_read_rate:g})")
        if self.slow_senders:
            _check(
                self.slow_send_interval_s > 0,
                f"--slow-send-interval must be positive (got {self.slow_send_interval_s:g})",
            )
        if self.zipf is not None:
            _check(self.corpus is not None, "--zipf ranks the files of a corpus; give --corpus DIR too")
            _check(self.zipf >= 0, f"--zipf exponent cannot be negative (got {self.zipf:g})")
        for p in self.percentiles:
            _check(0 < p <= 100, f"percentiles are in (0, 100] (got {p:g})")
        _check(self.sample_interval_s > 0, "--sample-interval must be positive")
        _check(
            self.timeline_interval_s >= 0.01,
            f"--timeline-interval must be at least 0.01 s (got {self.timeline_interval_s:g})",
        )
        if self.reconnect_after is not None:
            _check(self.reconnect_after >= 1, f"--reconnect-after must be at least 1 (got {self.reconnect_after})")
            _check(
                self.conn_mode == "keepalive" and self.rate is None,
                "--reconnect-after applies to the closed keep-alive loop (no --rate, --conn-mode keepalive)",
            )
        if self.server_cgroup is not None:
            _check(
                os.path.isfile(os.path.join(self.server_cgroup, "cpu.stat")),
                f"--server-cgroup {self.server_cgroup}: not a cgroup v2 directory (no cpu.stat)",
            )
            _check(self.server_pid is not None, "--server-cgroup needs --server-pid (the process it samples)")
        _check(self.loop in LOOPS, f"--loop must be one of {', '.join(LOOPS)}")
        for h in self.headers:
            _check(
                re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*$", h) is not None,
                f"not a header line: {h!r} (write 'Name: value')",
            )
        self._check_goals()
        self._check_sources()
        self._check_cpus()
        self._check_serve()
        if self.server_pid is not None:
            _check(
                self.server_pid > 0 and _pid_exists(self.server_pid), f"no process with --server-pid {self.server_pid}"
            )

    def _check_goals(self) -> None:
        from .slo import SloError, parse_goals

        try:
            parse_goals(self.slos)
        except SloError as exc:
            raise OptionError(f"--slo {exc}") from None
        if self.abort_on_fail:
            _check(bool(self.slos), "--abort-on-fail stops a run whose --slo goal is lost: give --slo too")
            _check(
                self.requests is not None or self.rate is not None,
                "--abort-on-fail needs a bounded window to prove a goal lost: give -R (open loop) or -n; "
                "a closed loop with a duration has no bound on the responses still to come",
            )

    def _check_sources(self) -> None:
        if not self.loopback_sources:
            return
        from .ports import LOOPBACK_ADDRESSES

        _check(
            0 < self.loopback_sources <= LOOPBACK_ADDRESSES,
            f"--loopback-sources must be 1 to {LOOPBACK_ADDRESSES} (got {self.loopback_sources})",
        )
        if self.serve is None and not self.url.startswith("/"):
            try:
                host = urlsplit(self.url).hostname or ""
                loopback = ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")
            except ValueError:
                loopback = False
            _check(
                loopback,
                f"--loopback-sources connects from 127.0.0.0/8: the server must be on a "
                f"127.x.x.x address (got {self.url})",
            )
        _check(self.link is None, "--loopback-sources applies to loopback, not to a --link")

    def _check_cpus(self) -> None:
        if not hasattr(os, "sched_getaffinity"):
            _check(self.cpus is None, "--cpus needs Linux CPU affinity")
            return
        usable = os.sched_getaffinity(0)
        if self.cpus is not None:
            _check(len(self.cpus) > 0, "--cpus is empty")
            missing = sorted(set(self.cpus) - usable)
            _check(not missing, f"--cpus {_cpu_list(missing)} not available here (usable: {_cpu_list(sorted(usable))})")
        if self.server_cpus is not None and self.serve is not None:  # they pin the server we start
            _check(len(self.server_cpus) > 0, "--server-cpus is empty")
            missing = sorted(set(self.server_cpus) - usable)
            _check(
                not missing,
                f"--server-cpus {_cpu_list(missing)} not available here (usable: {_cpu_list(sorted(usable))})",
            )

    def _check_serve(self) -> None:
        _check(self.links_file is None or self.link is not None, "--links-file applies to --link")
        if self.serve is None:
            _check(self.link is None, "--link runs the server on the link's server host: give --serve MODEL too")
            _check(self.root is None, "--root is the directory of the server --serve starts; give --serve MODEL too")
            _check(not self.server_args, "--server-args applies to --serve")
            _check(
                not self.url.startswith("/"),
                f"{self.url} is a path: give a full URL "
                f"(http://HOST:PORT{self.url}), or --serve MODEL to start a server",
            )
            return
        from ...servers import UnknownServer, resolve

        try:
            resolve(self.serve)
        except UnknownServer as exc:
            raise OptionError(f"--serve {self.serve}: {exc}") from None
        _check(self.server_pid is None, "--serve samples the server it starts; drop --server-pid")
        root = self.root if self.root is not None else self.corpus
        _check(root is not None, "--serve needs a directory to serve: give --root DIR (or --corpus DIR)")
        _check(os.path.isdir(root), f"{'--root' if self.root is not None else '--corpus'} {root}: not a directory")
        for t in [self.url, *self.urls]:
            _check(
                "://" not in t,
                f"with --serve, give paths like /1KiB.bin, not URLs ({t}): "
                f"the server's address is known once it starts",
            )
        _check(self.url.startswith("/"), f"with --serve, the first target is a path starting with /: {self.url!r}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise OptionError(message)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cpu_list(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def parse_cpu_list(text: str) -> list[int]:
    """'1', '0,2', '2-3', '0-1,4' -> CPU numbers in order, without repeats."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise OptionError(f"not a CPU list: {text!r} (examples: 1, 0,2, 2-3)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise OptionError(f"not a CPU range: {part!r}")
        out.extend(c for c in range(lo, hi + 1) if c not in out)
    return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|m|h)?\s*$")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'10' or '10s', '500ms', '1.5m', '1h' -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise OptionError(f"not a duration: {text!r} (examples: 10, 10s, 500ms, 2m)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
