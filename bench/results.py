"""A bench run read once into typed, frozen objects, after a check against bench/run.schema.json.

`serverzoo bench` writes plain JSON (bench/store.py); everything that reads a run (analysis,
verdicts, report, compare) works on these objects instead, so a missing or misspelled field
is found once, here, with a one-line message naming the file and the place, rather than as a
None deep inside a table. The schema lists only what the reading side uses: fields a newer
runner adds are carried along untouched in `Run.doc`, and older runs (slices without
histograms, scenarios without newer keys) stay readable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..clients.loadgen.latency import STALLED_BEYOND_SLOWEST
from .scenarios import METRICS, Scenario, ServerSpec

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.schema.json")


class RunFormatError(ValueError):
    """The document does not have the shape of a bench run (one line: where and what)."""


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    with open(SCHEMA_FILE, encoding="utf-8") as f:
        schema = json.load(f)
    return jsonschema.Draft202012Validator(schema)


def check_run(doc: Any) -> None:
    """RunFormatError (one line) unless doc matches the bench run schema."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
        raise RunFormatError(f"not a valid bench run at {where}: {message}")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass(frozen=True)
class Slice:
    """One interval of a load run's measured window."""

    seconds: float | None  # None when the slice does not say how long it was
    requests: int
    bytes: int | None
    histogram: str | None  # HdrHistogram of its latencies, when the generator saved one


def _slices(timeline: list[dict[str, Any]]) -> tuple[Slice, ...]:
    out, previous_end = [], 0.0
    for s in timeline:
        if isinstance(s.get("start_ns"), int) and isinstance(s.get("end_ns"), int):
            seconds = (s["end_ns"] - s["start_ns"]) / 1e9
        elif _num(s.get("dt")) is not None:
            seconds = float(s["dt"])
        elif _num(s.get("t")) is not None:
            seconds = float(s["t"]) - previous_end
        else:
            seconds = None
        if _num(s.get("t")) is not None:
            previous_end = float(s["t"])
        out.append(
            Slice(
                seconds if seconds is None or seconds > 0 else None,
                int(s["requests"]),
                s.get("bytes") if isinstance(s.get("bytes"), int) else None,
                s.get("histogram") if isinstance(s.get("histogram"), str) else None,
            )
        )
    return tuple(out)


def _stalled(d: dict[str, Any]) -> int:
    """Requests owed at the window's close that had waited well beyond the slowest response.

    Runs from before `stalled` was recorded only have `longer_than_max`: it counts when even
    the oldest waited past the stall bound (then most of them usually had), else none.
    """
    unfinished = d.get("unfinished") or {}
    if "stalled" in unfinished:
        return int(unfinished["stalled"] or 0)
    slowest, oldest = (d.get("latency_us") or {}).get("max"), unfinished.get("oldest_us")
    if slowest and oldest is not None and oldest <= STALLED_BEYOND_SLOWEST * slowest:
        return 0
    return int(unfinished.get("longer_than_max") or 0)


@dataclass(frozen=True)
class CapacityStep:
    """One step of a capacity search: an open-loop run at target_rate."""

    target_rate: float
    achieved_rate: float
    latency_us: Mapping[str, float]  # p50, p90, p99, ..., and the goal's measure under the goal's text
    held: bool
    server_cpu_percent: float | None = None  # of one CPU, over the step (None: not measured)


@dataclass(frozen=True)
class Capacity:
    """A capacity scenario's search: the highest rate that held, the bracket around it, the curve."""

    goal: str
    rate: float | None  # None: no rate held
    held: float | None  # the bracket: highest rate that held ...
    failed: float | None  # ... and lowest that did not (None: none failed)
    steps: tuple[CapacityStep, ...]  # in rate order

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Capacity:
        held, failed = (_num(v) for v in d["bracket"])
        steps = sorted(
            (
                CapacityStep(
                    float(s["target_rate"]),
                    float(s["achieved_rate"]),
                    _numbers(s["latency_us"]),
                    bool(s["held"]),
                    _num(s.get("server_cpu_percent")),
                )
                for s in d["steps"]
            ),
            key=lambda s: s.target_rate,
        )
        return cls(str(d["goals"][0]) if d["goals"] else "", _num(d["capacity_rps"]), held, failed, tuple(steps))


@dataclass(frozen=True)
class Load:
    """What the load generator measured in one cell (a serverzoo.load/1 document; for a capacity scenario,
    the step at the capacity found, with the whole search in `capacity`)."""

    requests: int
    errors: Mapping[str, int]  # by class, "total" left out
    error_total: int
    rps: float | None
    mb_per_s: float | None
    latency_us: Mapping[str, float]  # p50, p99, p99.9, ... (only the numbers)
    latency_uncorrected_us: Mapping[str, float]
    histogram: str | None
    timeline: tuple[Slice, ...]
    client_bound: bool
    client_reasons: tuple[str, ...]
    server_cpu_s: float | None  # over the sampler's span, which runs a sample or two past the window
    server_cpu_percent: float | None  # of one CPU, over that same span: the server's CPU rate
    peak_rss_bytes: float | None
    target_rate: float | None
    achieved_rate: float | None
    timeout_s: float | None
    left_waiting: int  # requests owed when the window closed, stalled (far older than the slowest response)
    capacity: Capacity | None = None  # a capacity scenario's search

    @property
    def server_cpu_per_request_s(self) -> float | None:
        """Server CPU seconds per request: its CPU rate over the request rate. Dividing cpu_s by the
        window's requests would overstate it, since the sampler's span is longer than the window."""
        if not (self.server_cpu_percent and self.rps):
            return None
        return self.server_cpu_percent / 100 / self.rps

    def metric(self, name: str) -> float | None:
        if name == "rps":
            return self.rps
        if name == "mb_per_s":
            return self.mb_per_s
        if name == "p99_us":
            return self.latency_us.get("p99")
        if name == "capacity_rps":
            return self.capacity.rate if self.capacity is not None else None
        raise KeyError(name)

    @classmethod
    def from_capacity(cls, d: dict[str, Any]) -> Load:
        """A capacity search as a cell's load: the figures of the step at the capacity found (errors and
        stalls of the steps past it are the search at work, not the server's faults), and the search.
        Client-bound when the generator was the limit in the lowest step that failed: that failure
        set the capacity, and it may then be the generator's rather than the server's."""
        search = Capacity.from_doc(d)
        held = [s for s in d["steps"] if s["held"]]
        best = max(held, key=lambda s: s["target_rate"]) if held else None
        failed = [s for s in d["steps"] if not s["held"]]
        limit = min(failed, key=lambda s: s["target_rate"]) if failed else None
        bound = bool(limit and limit.get("client_bound"))
        lat = _numbers(best["latency_us"]) if best else {}
        return cls(
            requests=int(best["requests"]) if best else 0,
            errors={},
            error_total=int(best["errors"]) if best else 0,
            rps=_num(best["achieved_rate"]) if best else None,
            mb_per_s=None,
            latency_us=lat,
            latency_uncorrected_us={},
            histogram=None,
            timeline=(),
            client_bound=bound,
            client_reasons=(
                f"the load generator was the limit in the step that failed ({limit['target_rate']:g} req/s)",
            )
            if bound and limit
            else (),
            server_cpu_s=None,
            server_cpu_percent=_num(best.get("server_cpu_percent")) if best else None,
            peak_rss_bytes=None,
            target_rate=float(best["target_rate"]) if best else None,
            achieved_rate=_num(best["achieved_rate"]) if best else None,
            timeout_s=_num((d.get("options") or {}).get("timeout_s")),
            left_waiting=0,
            capacity=search,
        )

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Load:
        if d.get("schema") == "serverzoo.capacity/1":
            return cls.from_capacity(d)
        errors = d["errors"]
        client = d.get("client") or {}
        server = d.get("server") or {}
        return cls(
            requests=int(d["requests"]),
            errors={k: int(v) for k, v in errors.items() if k != "total" and v},
            error_total=int(errors["total"]),
            rps=_num(d["rps"]),
            mb_per_s=_num(d["mb_per_s"]),
            latency_us=_numbers(d["latency_us"]),
            latency_uncorrected_us=_numbers(d.get("latency_uncorrected_us") or {}),
            histogram=d.get("histogram") if isinstance(d.get("histogram"), str) else None,
            timeline=_slices(d.get("timeline") or []),
            client_bound=bool(client.get("client_bound")),
            client_reasons=tuple(client.get("reasons") or ()),
            server_cpu_s=_num(server.get("cpu_s")),
            server_cpu_percent=_num(server.get("cpu_percent")),
            peak_rss_bytes=_num(server.get("peak_rss_bytes")),
            target_rate=_num(d.get("target_rate")),
            achieved_rate=_num(d.get("achieved_rate")),
            timeout_s=_num((d.get("options") or {}).get("timeout_s")),
            left_waiting=_stalled(d),
        )


def _numbers(d: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if _num(v) is not None}


@dataclass(frozen=True)
class CellRecord:
    """One repetition of one server x scenario x level: its server process and its load run."""

    id: str
    server: str
    model: str
    scenario: str
    level: int
    repetition: int
    ok: bool
    error: str | None
    load: Load | None
    clean_stop: bool | None
    stop_problem: str | None
    rss_at_ready: float | None
    server_cpus: tuple[int, ...]
    client_cpus: tuple[int, ...]
    placement: str | None  # the scenario's CPU placement in words, when the runner recorded it
    server_host: str | None = None  # bench --cluster: the host of the server's Dask worker
    client_hosts: tuple[str, ...] = ()  # bench --cluster: the hosts of the generators' Dask workers
    load_without_idle: Load | None = None  # with idle connections: the same active load without them, run first

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> CellRecord:
        proc = d.get("server_process") or {}
        gen = d.get("generator") or {}
        return cls(
            id=d.get("id") or f"{d['server']}/{d['scenario']}/{d['level']}/r{d.get('repetition', 1)}",
            server=d["server"],
            model=d.get("model") or d["server"],
            scenario=d["scenario"],
            level=int(d["level"]),
            repetition=int(d.get("repetition", 1)),
            ok=d["status"] == "ok",
            error=d.get("error"),
            load=Load.from_doc(d["load"]) if d.get("load") else None,
            clean_stop=proc.get("clean_stop"),
            stop_problem=proc.get("problem"),
            rss_at_ready=_num(proc.get("rss_at_ready_bytes")),
            server_cpus=tuple(proc.get("cpus") or ()),
            client_cpus=tuple(gen.get("cpus") or ()),
            placement=(d.get("placement") or {}).get("text") if isinstance(d.get("placement"), dict) else None,
            server_host=proc.get("host"),
            client_hosts=_generator_hosts(d.get("load")),
            load_without_idle=Load.from_doc(d["load_without_idle"]) if d.get("load_without_idle") else None,
        )


def _generator_hosts(load: dict[str, Any] | None) -> tuple[str, ...]:
    """The hosts of a --cluster load's generators (none for a load run on this machine)."""
    workers = ((load or {}).get("cluster") or {}).get("workers") or []
    return tuple(sorted({w["host"] for w in workers if w.get("host")}))


_SCENARIO_FIELDS = {f.name for f in dataclasses.fields(Scenario)}
_SCENARIO_DEFAULTS = {
    "about": "",
    "paths": (),
    "zipf": None,
    "connection": "keep-alive",
    "reference": True,
    "server_args": (),
    "connections": 0,
    "duration": 0.0,
    "warmup": 0.0,
}


def _scenario(d: dict[str, Any]) -> Scenario:
    """A scenario as the run recorded it: keys this version does not know are left out, missing ones defaulted."""
    known = _SCENARIO_DEFAULTS | {k: v for k, v in d.items() if k in _SCENARIO_FIELDS}
    return Scenario.from_dict(known)


@dataclass(frozen=True)
class Run:
    """A whole bench run: configuration, cells, and the verdicts stored with it (if any)."""

    run_id: str
    doc: dict[str, Any] = field(repr=False)  # the JSON as read, for what is only shown (machine, notes, config)
    scenarios: Mapping[str, Scenario]
    servers: Mapping[str, ServerSpec]
    cells: tuple[CellRecord, ...]
    error_rate_limit: float
    unstable_spread: float
    link: Mapping[str, Any] | None
    stored_verdicts: tuple[dict[str, Any], ...] | None

    @property
    def machine(self) -> dict[str, Any]:
        return self.doc.get("machine") or {}

    @property
    def config(self) -> dict[str, Any]:
        return self.doc["config"]

    @property
    def status(self) -> str:
        return str(self.doc.get("status") or "unknown")

    @property
    def fixture(self) -> str | None:
        return self.doc.get("fixture")

    @classmethod
    def from_doc(cls, doc: dict[str, Any], check: bool = True) -> Run:
        """The typed run; with check, RunFormatError (one line) if doc does not match the schema."""
        if check:
            check_run(doc)
        config = doc["config"]
        settings = config.get("run") or {}
        try:
            scenarios = {name: _scenario(d) for name, d in config["scenarios"].items()}
        except (TypeError, ValueError) as exc:
            raise RunFormatError(f"a scenario of this run is from another version ({exc})") from None
        for sc in scenarios.values():
            if sc.metric not in METRICS:
                raise RunFormatError(f"scenario {sc.name!r} has an unknown metric {sc.metric!r}")
        servers = {
            name: ServerSpec(name, s["model"], tuple(s.get("args") or ())) for name, s in config["servers"].items()
        }
        return cls(
            run_id=doc["run_id"],
            doc=doc,
            scenarios=scenarios,
            servers=servers,
            cells=tuple(CellRecord.from_doc(c) for c in doc["cells"]),
            error_rate_limit=float(settings.get("error_rate_limit", 0.01)),
            unstable_spread=float(settings.get("unstable_spread", 0.10)),
            link=config.get("link") or None,
            stored_verdicts=tuple(doc["verdicts"]) if isinstance(doc.get("verdicts"), list) else None,
        )
