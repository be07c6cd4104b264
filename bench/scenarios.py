"""The scenarios file (bench/scenarios.toml or a user's copy), read and checked.

Every mistake in the file is a ConfigError with one line naming the scenario and the
key, raised before anything runs: a typo in a file people edit by hand must not turn
into a half-run matrix.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any

from serverzoo.clients.links.profiles import LinkProfile, ProfileError, profiles_from_tables

DEFAULT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios.toml")

# metric name -> (label for tables and axes, True when higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "rps": ("requests/s", True),
    "mb_per_s": ("MB/s", True),
    "p99_us": ("p99 latency (ms)", False),
    "capacity_rps": ("requests/s sustained at the goal", True),
}
# closed: N connections; open: a fixed offered rate; capacity: `serverzoo load --find-capacity`, the
# highest open-loop rate at which the scenario's goal holds (clients/loadgen/capacity.py)
MODES = ("closed", "open", "capacity")
CONNECTIONS = ("keep-alive", "close")
# Where a scenario's server and load generator run: "split" gives the server the first half of
# the CPUs and the generator the rest (neither disturbs the other); "server-all" gives the server
# every CPU and the generator shares one of them, for work where the server needs the cores and
# the generator's share is small (CPU-bound requests: what processes buy over threads shows only
# when there are cores to spread over).
PLACEMENTS = ("split", "server-all")


class ConfigError(Exception):
    """A one-line message about bad configuration; nothing has run yet."""


@dataclass(frozen=True)
class SlowReaders:
    count: int
    rate: int  # bytes per second each slow reader accepts
    path: str


@dataclass(frozen=True)
class ZipfMix:
    dir: str  # corpus folder whose files form the population
    s: float  # Zipf exponent


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    about: str
    mode: str  # "closed" or "open"
    paths: tuple[str, ...]
    zipf: ZipfMix | None
    connection: str  # "keep-alive" or "close"
    metric: str
    reference: bool  # nginx can serve it (it has no work endpoint)
    server_args: tuple[str, ...]
    levels: tuple[int, ...]  # closed: connections; open: offered requests/s
    connections: int  # open loop: connections carrying the offered load; closed: 0
    duration: float
    warmup: float
    idle: int = 0
    slow_readers: SlowReaders | None = None
    timeout: float | None = None  # per request; None: half the duration, within [0.25, 10] s
    placement: str = "split"  # one of PLACEMENTS
    reconnect_after: int | None = None  # active keep-alive clients open a new connection after N responses
    goal: str | None = None  # capacity: the --slo goal the rate must meet (p99<5ms)
    search_start: float = 0.0  # capacity: the search's first rate (req/s)
    search_time: float = 0.0  # capacity: the whole search's time cap (s); duration and warmup are a step's least
    search_resolution: float = 0.05  # capacity: the bracket's relative width when the search stops

    @property
    def request_timeout(self) -> float:
        """Seconds a request may go unanswered before it counts as an error."""
        if self.timeout is not None:
            return self.timeout
        return min(10.0, max(0.25, self.duration / 2))

    @property
    def generator_runs(self) -> int:
        """Load runs per cell: with idle connections, first the same active load without them, so the
        cell says what the idle set cost the active clients (their p99 with and without it)."""
        return 2 if self.idle else 1

    @property
    def load_seconds(self) -> float:
        """The load of one cell: warm-up and measured time of each run, or a capacity search's time cap."""
        return self.search_time if self.mode == "capacity" else (self.warmup + self.duration) * self.generator_runs

    @property
    def generator_seconds(self) -> float:
        """How long the load generator may take for one cell (before its deadline's slack)."""
        if self.mode == "capacity":
            return self.search_time
        return self.warmup + self.duration + self.request_timeout

    def level_key(self, level: int) -> str:
        return f"r{level}" if self.mode == "open" else f"c{level}"

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        d = dict(d)
        d["paths"] = tuple(d["paths"])
        d["levels"] = tuple(d["levels"])
        d["server_args"] = tuple(d["server_args"])
        d["zipf"] = ZipfMix(**d["zipf"]) if d.get("zipf") else None
        d["slow_readers"] = SlowReaders(**d["slow_readers"]) if d.get("slow_readers") else None
        return cls(**d)


@dataclass(frozen=True)
class ServerSpec:
    name: str
    model: str  # a registered model, or "nginx" for the reference server
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Adaptive:
    """How a preset spends time where it matters (see bench/sequential.py).

    Every cell first runs `repeat` times (the preset's). Then, at each scenario's top level,
    the leader and every server whose interval overlaps the leader's are measured again, one
    repetition per round, until each is precise (relative CI half-width at most `precision`,
    from at least three repetitions) or separated, or has `max_repeat` repetitions, or the
    run's `budget` (seconds, whole run; None: no limit) is spent.
    """

    precision: float = 0.02
    max_repeat: int = 1
    budget: float | None = None
    slice: float = 0.1  # seconds per timeline slice: the batches of a cell's batch-means interval


@dataclass(frozen=True)
class Preset:
    name: str
    servers: str  # "models" or "all"
    repeat: int
    reference: bool
    adaptive: Adaptive = Adaptive()


@dataclass(frozen=True)
class CorpusSpec:
    seed: int
    files: tuple[str, ...]  # size specs ("1KiB", "4KiB*10") served from the top
    mix_dir: str | None = None
    mix_files: tuple[str, ...] = ()  # size specs of the Zipf population under mix_dir

    def names(self) -> set[str]:
        """Every file path the corpus will hold, relative to its root."""
        from serverzoo.clients.loadgen.corpus import corpus_names

        out = {n for n, _ in corpus_names(self.files)}
        if self.mix_dir:
            out |= {f"{self.mix_dir}/{n}" for n, _ in corpus_names(self.mix_files)}
        return out


@dataclass(frozen=True)
class RunSettings:
    unstable_spread: float
    error_rate_limit: float
    server_args: tuple[str, ...]


@dataclass
class Suite:
    """Everything the scenarios file says, checked."""

    path: str
    text: str
    run: RunSettings
    corpus: CorpusSpec
    variants: dict[str, ServerSpec]
    presets: dict[str, Preset]
    raw_scenarios: dict[str, dict[str, Any]] = field(repr=False)
    links: dict[str, LinkProfile] = field(default_factory=dict)  # [links.NAME]: what --link NAME may name

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def scenarios(self, preset: str) -> dict[str, Scenario]:
        """The preset's scenarios (a scenario whose preset entry is `false` is not part of that preset)."""
        if preset not in self.presets:
            raise ConfigError(f"unknown preset {preset!r}; choose from: {', '.join(self.presets)}")
        return {
            name: _scenario(name, raw, preset, set(self.presets))
            for name, raw in self.raw_scenarios.items()
            if not (isinstance(raw, dict) and raw.get(preset) is False)
        }


# -- reading -----------------------------------------------------------------------


def load_suite(path: str | None = None) -> Suite:
    path = path or DEFAULT_FILE
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read scenarios file {path}: {exc.strerror or exc}") from None
    text = data.decode("utf-8", errors="replace")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"scenarios file {path}: {exc}") from None
    where = os.path.basename(path)
    _only(doc, {"run", "corpus", "servers", "presets", "scenarios", "links"}, where)
    run = _table(doc, "run", where)
    _only(run, {"unstable_spread", "error_rate_limit", "server_args"}, f"{where} [run]")
    settings = RunSettings(
        unstable_spread=_number(run.get("unstable_spread", 0.10), "[run] unstable_spread", lo=0.0),
        error_rate_limit=_number(run.get("error_rate_limit", 0.01), "[run] error_rate_limit", lo=0.0),
        server_args=_strings(run.get("server_args", []), "[run] server_args"),
    )
    suite = Suite(
        path=os.path.abspath(path),
        text=text,
        run=settings,
        corpus=_corpus(_table(doc, "corpus", where)),
        variants=_variants(_table(doc, "servers", where)),
        presets=_presets(_table(doc, "presets", where)),
        raw_scenarios=_table(doc, "scenarios", where),
        links=_links(_table(doc, "links", where), where),
    )
    if not suite.raw_scenarios:
        raise ConfigError(f"{where}: no [scenarios.NAME] tables")
    if not suite.presets:
        raise ConfigError(f"{where}: no [presets.NAME] tables")
    for preset in suite.presets:  # check every preset now, not when a user first picks it
        suite.scenarios(preset)
    return suite


def _links(t: dict[str, Any], where: str) -> dict[str, LinkProfile]:
    try:
        return profiles_from_tables(t, where)
    except ProfileError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None


def _corpus(t: dict[str, Any]) -> CorpusSpec:
    from serverzoo.clients.loadgen.corpus import CorpusError, corpus_names

    _only(t, {"seed", "files", "mix"}, "[corpus]")
    seed = t.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("[corpus] seed must be an integer")
    files = _strings(t.get("files", []), "[corpus] files")
    mix = t.get("mix")
    mix_dir, mix_files = None, ()
    if mix is not None:
        _only(mix, {"dir", "files"}, "[corpus] mix")
        mix_dir = mix.get("dir")
        if not isinstance(mix_dir, str) or not mix_dir or "/" in mix_dir or mix_dir in (".", ".."):
            raise ConfigError("[corpus] mix.dir must be a folder name")
        mix_files = _strings(mix.get("files", []), "[corpus] mix.files")
        if not mix_files:
            raise ConfigError("[corpus] mix.files lists no files")
    try:
        corpus_names(files)
        corpus_names(mix_files)
    except CorpusError as exc:
        raise ConfigError(f"[corpus]: {exc}") from None
    return CorpusSpec(seed=seed, files=files, mix_dir=mix_dir, mix_files=mix_files)


def _variants(t: dict[str, Any]) -> dict[str, ServerSpec]:
    """[servers] variants: names of the registry's variants (serverzoo.servers.VARIANTS)."""
    from serverzoo.servers import VARIANTS, UnknownServer, resolve

    _only(t, {"variants"}, "[servers]")
    out = {}
    for name in _strings(t.get("variants", []), "[servers] variants"):
        try:
            v = resolve(name)
        except UnknownServer as exc:
            raise ConfigError(f"[servers] variants: {exc}") from None
        if name not in VARIANTS:
            raise ConfigError(f"[servers] variants: {name!r} is a model, and every model is always available")
        out[name] = ServerSpec(name, v.model.name, v.args)
    return out


def _presets(t: dict[str, Any]) -> dict[str, Preset]:
    out = {}
    for name, v in t.items():
        where = f"[presets.{name}]"
        if not isinstance(v, dict):
            raise ConfigError(f"{where} must be a table")
        _only(v, {"servers", "repeat", "reference", "precision", "max_repeat", "budget", "slice"}, where)
        servers = v.get("servers", "models")
        if servers not in ("models", "all"):
            raise ConfigError(f'{where}: servers must be "models" or "all"')
        repeat = _int(v.get("repeat", 1), f"{where} repeat", lo=1)
        max_repeat = _int(v.get("max_repeat", repeat), f"{where} max_repeat", lo=1)
        if max_repeat < repeat:
            raise ConfigError(f"{where}: max_repeat {max_repeat} is below repeat {repeat}")
        adaptive = Adaptive(
            precision=_number(v.get("precision", 0.02), f"{where} precision", lo=0.0, strict=True),
            max_repeat=max_repeat,
            budget=_number(v["budget"], f"{where} budget", lo=0.0, strict=True) if "budget" in v else None,
            slice=_number(v.get("slice", 0.1), f"{where} slice", lo=0.01),
        )
        out[name] = Preset(name, servers, repeat, bool(v.get("reference", True)), adaptive)
    return out


_SCENARIO_KEYS = {
    "title",
    "about",
    "mode",
    "paths",
    "zipf",
    "connection",
    "metric",
    "reference",
    "server_args",
    "slow_readers",
    "timeout",
    "placement",
    "reconnect_after",
    "goal",
    "resolution",
}
_LEVEL_KEYS = {"concurrency", "rates", "connections", "duration", "warmup", "idle", "start", "time"}


def _scenario(name: str, raw: Any, preset: str, presets: set[str]) -> Scenario:
    where = f"[scenarios.{name}]"
    _only(raw, _SCENARIO_KEYS | presets, where)
    if preset not in raw:
        raise ConfigError(f"{where} has no settings for preset {preset!r} (add {preset} = {{ ... }})")
    p = raw[preset]
    _only(p, _LEVEL_KEYS, f"{where} {preset}")
    mode = raw.get("mode", "closed")
    if mode not in MODES:
        raise ConfigError(f"{where} mode must be one of {', '.join(MODES)}, not {mode!r}")
    connection = raw.get("connection", "keep-alive")
    if connection not in CONNECTIONS:
        raise ConfigError(f"{where} connection must be one of {', '.join(CONNECTIONS)}, not {connection!r}")
    metric = raw.get("metric", "rps")
    if metric not in METRICS:
        raise ConfigError(f"{where} metric must be one of {', '.join(METRICS)}, not {metric!r}")
    paths = _strings(raw.get("paths", []), f"{where} paths")
    for path in paths:
        if not path.startswith("/"):
            raise ConfigError(f"{where} paths: {path!r} must start with /")
    zipf = None
    if "zipf" in raw:
        z = raw["zipf"]
        _only(z, {"dir", "s"}, f"{where} zipf")
        if not isinstance(z.get("dir"), str):
            raise ConfigError(f"{where} zipf.dir must name a corpus folder")
        zipf = ZipfMix(z["dir"], _number(z.get("s", 1.0), f"{where} zipf.s", lo=0.0))
    if bool(paths) == bool(zipf):
        raise ConfigError(f"{where} needs exactly one of paths = [...] or zipf = {{ dir, s }}")
    placement = raw.get("placement", "split")
    if placement not in PLACEMENTS:
        raise ConfigError(f"{where} placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
    reconnect_after = None
    if "reconnect_after" in raw:
        reconnect_after = _int(raw["reconnect_after"], f"{where} reconnect_after", lo=1)
        if mode != "closed" or connection != "keep-alive":
            raise ConfigError(f"{where} reconnect_after applies to closed-loop keep-alive scenarios")
    slow = None
    if "slow_readers" in raw:
        s = raw["slow_readers"]
        _only(s, {"count", "rate", "path"}, f"{where} slow_readers")
        if not isinstance(s.get("path"), str) or not s["path"].startswith("/"):
            raise ConfigError(f"{where} slow_readers.path must be a path starting with /")
        slow = SlowReaders(
            _int(s.get("count"), f"{where} slow_readers.count", lo=1),
            _int(s.get("rate"), f"{where} slow_readers.rate", lo=1),
            s["path"],
        )
    capacity: dict[str, Any] = {}
    if mode != "capacity":
        for key, place in (
            ("goal", where),
            ("resolution", where),
            ("start", f"{where} {preset}"),
            ("time", f"{where} {preset}"),
        ):
            if key in (raw if place == where else p):
                raise ConfigError(f'{place}: {key} applies to capacity scenarios (mode = "capacity")')
    if mode == "capacity":
        levels, connections, capacity = _capacity(where, preset, raw, p, metric)
    elif mode == "closed":
        if "rates" in p or "connections" in p:
            raise ConfigError(f"{where} {preset}: a closed-loop scenario sweeps concurrency, not rates")
        levels = _levels(p.get("concurrency"), f"{where} {preset}.concurrency")
        connections = 0
    else:
        if "concurrency" in p:
            raise ConfigError(f"{where} {preset}: an open-loop scenario sweeps rates over `connections`")
        levels = _levels(p.get("rates"), f"{where} {preset}.rates")
        connections = _int(p.get("connections"), f"{where} {preset}.connections", lo=1)
    return Scenario(
        name=name,
        title=str(raw.get("title", name)),
        about=str(raw.get("about", "")),
        mode=mode,
        paths=paths,
        zipf=zipf,
        connection=connection,
        metric=metric,
        reference=bool(raw.get("reference", True)),
        server_args=_strings(raw.get("server_args", []), f"{where} server_args"),
        levels=levels,
        connections=connections,
        duration=_number(p.get("duration"), f"{where} {preset}.duration", lo=0.0, strict=True),
        warmup=_number(p.get("warmup", 0.0), f"{where} {preset}.warmup", lo=0.0),
        idle=_int(p.get("idle", 0), f"{where} {preset}.idle", lo=0),
        slow_readers=slow,
        timeout=(_number(raw["timeout"], f"{where} timeout", lo=0.0, strict=True) if "timeout" in raw else None),
        placement=placement,
        reconnect_after=reconnect_after,
        **capacity,
    )


def _capacity(
    where: str, preset: str, raw: dict[str, Any], p: dict[str, Any], metric: str
) -> tuple[tuple[int, ...], int, dict[str, Any]]:
    """A capacity scenario's level (its connections) and search settings."""
    from serverzoo.clients.loadgen.slo import ERRORS, LATENCY, SloError, parse_goal

    if metric != "capacity_rps":
        raise ConfigError(f"{where}: a capacity scenario's metric is capacity_rps, not {metric!r}")
    for key in ("concurrency", "rates", "idle"):
        if key in p:
            raise ConfigError(f"{where} {preset}: a capacity scenario searches the rate over `connections`; drop {key}")
    if not isinstance(raw.get("goal"), str):
        raise ConfigError(f'{where}: a capacity scenario needs goal = "p99<5ms" (a latency or error goal)')
    try:
        goal = parse_goal(raw["goal"])
    except SloError as exc:
        raise ConfigError(f"{where} goal: {exc}") from None
    if goal.measure not in (LATENCY, ERRORS):
        raise ConfigError(f"{where} goal: the search finds the rate itself; give a latency or error goal")
    connections = _int(p.get("connections"), f"{where} {preset}.connections", lo=1)
    resolution = _number(raw.get("resolution", 0.05), f"{where} resolution", lo=0.005)
    if resolution > 1:
        raise ConfigError(f"{where} resolution must be at most 1, not {resolution:g}")
    return (
        (connections,),
        connections,
        {
            "goal": goal.text,
            "search_start": _number(p.get("start"), f"{where} {preset}.start", lo=0.0, strict=True),
            "search_time": _number(p.get("time"), f"{where} {preset}.time", lo=0.0, strict=True),
            "search_resolution": resolution,
        },
    )


# -- small checkers, each raising a one-line ConfigError --------------------------------


def _table(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    t = doc.get(key, {})
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return t


def _only(t: Any, allowed: set[str], where: str) -> None:
    if not isinstance(t, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(t) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")


def _int(v: Any, what: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{what} must be an integer >= {lo}, not {v!r}")
    return v


def _number(v: Any, what: str, lo: float = 0.0, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or (strict and v <= lo):
        raise ConfigError(f"{what} must be a number {'>' if strict else '>='} {lo:g}, not {v!r}")
    return float(v)


def _strings(v: Any, what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{what} must be a list of strings")
    return tuple(v)


def _levels(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{what} must be a non-empty list of positive integers")
    for x in v:
        _int(x, what, lo=1)
    if len(set(v)) != len(v):
        raise ConfigError(f"{what} lists a level twice")
    return tuple(sorted(v))
