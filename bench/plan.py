"""From a preset and command-line choices to the list of cells, checked, with an estimate.

A cell is one server x scenario x level x repetition: one fresh server process and one
measured load run. Cells are ordered repetition first, so an interrupted run already
holds a whole matrix once, and servers alternate within it, so slow drift of a shared
machine spreads over every model instead of landing on one. These are the first pass;
where contenders are close, bench/sequential.py adds repetitions after it, within the
preset's budget.
"""

from __future__ import annotations

import os
import resource
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from serverzoo.clients.links.profiles import LinkProfile
from serverzoo.servers import MODELS, resolve, server_names

from .scenarios import Adaptive, ConfigError, CorpusSpec, RunSettings, Scenario, ServerSpec, Suite

REFERENCE = "nginx"
# Per cell beyond warm-up and measurement: server start (0.1-0.3 s to READY), the
# generator's processes starting and connecting (0.5-0.9 s), graceful stop and the JSON
# write. Medians of 156 quick cells on the 2-core machine while others used it
# (2026-11-22): 0.23 + 0.86 + 0.07 s; a quiet machine needs less.
CELL_OVERHEAD_S = 0.85
FIXED_OVERHEAD_S = 10.0  # writing the corpus once, and the report at the end
FD_MARGIN = 64  # listening socket, files, pipes, the interpreter's own
LINK_OVERHEAD_S = 0.5  # building the link once per run and removing it: 0.2-0.3 s measured here (veth, wan)


@dataclass(frozen=True)
class Cell:
    server: str
    scenario: str
    level: int
    level_key: str  # "c64" (closed loop) or "r1000" (open loop)
    repetition: int  # 1-based

    @property
    def id(self) -> str:
        return f"{self.server}/{self.scenario}/{self.level_key}/r{self.repetition}"


@dataclass
class BenchPlan:
    preset: str
    servers: dict[str, ServerSpec]
    scenarios: dict[str, Scenario]
    repeat: int
    run: RunSettings
    corpus: CorpusSpec
    server_cpus: list[int]
    client_cpus: list[int]
    notes: list[str] = field(default_factory=list)  # things said once: missing nginx, skipped models
    link: LinkProfile | None = None  # None: server and generator on this machine's loopback
    adaptive: Adaptive = field(default_factory=Adaptive)

    def cpus_for(self, scenario: str) -> tuple[list[int], list[int]]:
        """(server CPUs, generator CPUs) under the scenario's placement."""
        if self.scenarios[scenario].placement == "server-all":
            return sorted(set(self.server_cpus) | set(self.client_cpus)), self.client_cpus
        return self.server_cpus, self.client_cpus

    def placement(self, scenario: str) -> dict[str, Any]:
        """The scenario's CPU placement as recorded with each cell and shown in the report."""
        server, client = self.cpus_for(scenario)
        name = self.scenarios[scenario].placement
        text = {
            "split": "server and load generator on separate CPUs",
            "server-all": "the server on every CPU; the load generator shares one",
        }[name]
        return {
            "name": name,
            "server_cpus": server,
            "client_cpus": client,
            "shared": bool(set(server) & set(client)),
            "text": text,
        }

    def cells(self) -> list[Cell]:
        out = []
        for rep in range(1, self.repeat + 1):
            for sc in self.scenarios.values():
                for level in sc.levels:
                    for name, spec in self.servers.items():
                        if spec.model == REFERENCE and not sc.reference:
                            continue
                        out.append(Cell(name, sc.name, level, sc.level_key(level), rep))
        return out

    def cell_seconds(self, cell: Cell) -> float:
        sc = self.scenarios[cell.scenario]
        return sc.load_seconds + CELL_OVERHEAD_S

    def estimate_seconds(self, cells: list[Cell] | None = None) -> float:
        return sum(self.cell_seconds(c) for c in (self.cells() if cells is None else cells))

    def describe(self) -> str:
        n_levels = sorted({len(s.levels) for s in self.scenarios.values()})
        levels = "-".join(str(n) for n in (n_levels[0], n_levels[-1])) if len(n_levels) > 1 else str(n_levels[0])
        cells = self.cells()

        def n(count: int, word: str) -> str:
            return f"{count} {word}{'s' if count != 1 else ''}"

        fixed = self.fixed_seconds()
        first = (
            f"{n(len(cells), 'cell')}: {n(len(self.servers), 'server')} x {n(len(self.scenarios), 'scenario')} x "
            f"{levels} levels x {n(self.repeat, 'repetition')}, {self.network()}; "
            f"estimated {format_duration(self.estimate_seconds(cells) + fixed)} "
            f"(warm-up + measured time per cell, {CELL_OVERHEAD_S:.2f} s start/stop each, "
            f"{fixed:.0f} s corpus{', link' if self.link else ''} and report)"
        )
        a = self.adaptive
        if a.max_repeat <= self.repeat:
            return first
        extra = self.extension_seconds(cells)
        limit = (
            f"until the run's budget of {format_duration(a.budget)} (about {format_duration(extra)} more)"
            if a.budget is not None
            else "with no time limit"
        )
        return (
            f"{first}; then, at each scenario's top level, the leader and every server within its "
            f"confidence interval get more repetitions (up to {a.max_repeat}, until each is within "
            f"±{a.precision:.0%} or separated) {limit}"
        )

    def fixed_seconds(self) -> float:
        return FIXED_OVERHEAD_S + (LINK_OVERHEAD_S if self.link else 0.0)

    def extension_seconds(self, first_pass: list[Cell] | None = None) -> float:
        """Time the preset may spend on extra repetitions after the first pass (its budget's rest)."""
        a = self.adaptive
        if a.max_repeat <= self.repeat:
            return 0.0
        first = self.estimate_seconds(first_pass) + self.fixed_seconds()
        if a.budget is None:  # no limit: every top-level cell up to max_repeat, as an upper bound
            top = [
                c
                for c in (first_pass or self.cells())
                if c.level == max(self.scenarios[c.scenario].levels) and c.repetition == 1
            ]
            return sum(self.cell_seconds(c) for c in top) * (a.max_repeat - self.repeat)
        return max(0.0, a.budget - first)

    def network(self) -> str:
        """Where the traffic goes: 'over loopback' or 'over link wan (40 ms RTT, 100 Mbit/s)'."""
        if self.link is None:
            return "over loopback"
        return (
            f"over link {self.link.name} ({self.link.summary()}; server and load generator in two network namespaces)"
        )

    def to_config(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "servers": {n: {"model": s.model, "args": list(s.args)} for n, s in self.servers.items()},
            "scenarios": {n: s.to_dict() for n, s in self.scenarios.items()},
            "repeat": self.repeat,
            "run": asdict(self.run),
            "corpus": asdict(self.corpus),
            "cpus": {"server": self.server_cpus, "client": self.client_cpus},
            "adaptive": asdict(self.adaptive),
            "placements": {n: self.placement(n) for n in self.scenarios},
            # the profile now; the runner adds what was applied (LinkedHosts.describe()) once the link is up
            "link": {"profile": self.link.to_dict()} if self.link else None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BenchPlan:
        try:
            run = dict(config["run"])
            run["server_args"] = tuple(run["server_args"])
            return cls(
                preset=config["preset"],
                servers={n: ServerSpec(n, s["model"], tuple(s["args"])) for n, s in config["servers"].items()},
                scenarios={n: Scenario.from_dict(s) for n, s in config["scenarios"].items()},
                repeat=int(config["repeat"]),
                run=RunSettings(**run),
                corpus=_corpus_spec(config["corpus"]),
                server_cpus=list(config["cpus"]["server"]),
                client_cpus=list(config["cpus"]["client"]),
                link=LinkProfile(**config["link"]["profile"]) if config.get("link") else None,
                adaptive=Adaptive(**config["adaptive"])
                if config.get("adaptive")
                else Adaptive(max_repeat=int(config["repeat"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the run's configuration is incomplete or from another version ({exc!r})") from None


def _corpus_spec(d: dict[str, Any]) -> CorpusSpec:
    return CorpusSpec(
        seed=d["seed"], files=tuple(d["files"]), mix_dir=d.get("mix_dir"), mix_files=tuple(d.get("mix_files", ()))
    )


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def implemented(model: str) -> bool:
    """True when the model's file exists (a registered model may still be in progress)."""
    from serverzoo import servers

    return os.path.exists(os.path.join(os.path.dirname(servers.__file__), f"{MODELS[model].module}.py"))


def parse_list(text: str | None, what: str, number: bool = False) -> list[Any] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--{what} is empty")
    if not number:
        return items
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise ConfigError(f"--{what} takes positive integers separated by commas, not {text!r}") from None
    if min(values) < 1:
        raise ConfigError(f"--{what} takes positive integers, not {text!r}")
    return sorted(set(values))


def parse_cpus(text: str | None, what: str) -> list[int] | None:
    """'1', '0,2', '2-3' -> CPU numbers."""
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)):
            raise ConfigError(f"--{what} takes CPU numbers such as 1, 0,2 or 2-3, not {text!r}")
        out += [c for c in range(int(lo), int(hi or lo) + 1) if c not in out]
    return out


def split_cpus(server: list[int] | None, client: list[int] | None) -> tuple[list[int], list[int], str | None]:
    """Server CPUs and generator CPUs: the first half for the server, the rest for load."""
    usable = sorted(os.sched_getaffinity(0))
    for cpus, what in ((server, "--server-cpus"), (client, "--client-cpus")):
        if cpus and not set(cpus) <= set(usable):
            raise ConfigError(f"{what} {','.join(map(str, cpus))}: usable CPUs here are {','.join(map(str, usable))}")
    if len(usable) == 1 and not (server or client):
        return usable, usable, "one CPU: the server and the load generator share it, so every figure is bounded by both"
    half = max(1, len(usable) // 2)
    server = server or usable[:half]
    client = client or [c for c in usable if c not in server] or usable
    note = None
    if set(server) & set(client):
        note = "the server's and the generator's CPUs overlap: they compete, and figures are bounded by both"
    return server, client, note


def build_plan(
    suite: Suite,
    preset: str = "quick",
    *,
    models: list[str] | None = None,
    scenarios: list[str] | None = None,
    concurrency: list[int] | None = None,
    rates: list[int] | None = None,
    repeat: int | None = None,
    duration: float | None = None,
    warmup: float | None = None,
    reference: bool | None = None,
    server_cpus: list[int] | None = None,
    client_cpus: list[int] | None = None,
    nginx_available: bool = True,
    link: LinkProfile | None = None,
    budget: float | None = None,
) -> BenchPlan:
    """Resolve a preset and the command line's narrowing into a checked BenchPlan (ConfigError if not)."""
    if preset not in suite.presets:
        raise ConfigError(f"unknown preset {preset!r}; choose from: {', '.join(suite.presets)}")
    p = suite.presets[preset]
    notes: list[str] = []
    known = {v.name: ServerSpec(v.name, v.model.name, v.args) for v in map(resolve, server_names())}
    if models:
        for name in models:
            if name == REFERENCE:
                continue
            if name not in known:
                raise ConfigError(f"unknown model {name!r}; choose from: {', '.join(known)}")
            if not implemented(known[name].model):
                raise ConfigError(
                    f"model {name!r} has no implementation yet "
                    f"(servers/{MODELS[known[name].model].module}.py is missing)"
                )
        chosen = {n: known[n] for n in models if n != REFERENCE}
        if REFERENCE in models and reference is None:
            reference = True
    else:
        pool = {n: s for n, s in known.items() if n in MODELS or (p.servers == "all" and n in suite.variants)}
        chosen = {n: s for n, s in pool.items() if implemented(s.model)}
        missing = [n for n in pool if n not in chosen]
        if missing:
            notes.append(f"not implemented yet, skipped: {', '.join(missing)}")

    all_scenarios = suite.scenarios(preset)
    if scenarios:
        for name in scenarios:
            if name not in all_scenarios:
                raise ConfigError(f"unknown scenario {name!r}; choose from: {', '.join(all_scenarios)}")
        picked = {n: all_scenarios[n] for n in scenarios}
    else:
        picked = all_scenarios
    if duration is not None and duration <= 0:
        raise ConfigError("--duration must be > 0 seconds")
    if warmup is not None and warmup < 0:
        raise ConfigError("--warmup must be >= 0 seconds")
    if repeat is not None and repeat < 1:
        raise ConfigError("--repeat must be at least 1")
    if budget is not None and budget <= 0:
        raise ConfigError("--budget must be > 0 seconds")
    final = {}
    for name, sc in picked.items():
        changes: dict[str, Any] = {}
        if concurrency and sc.mode == "closed":
            changes["levels"] = tuple(concurrency)
        if rates and sc.mode == "open":
            changes["levels"] = tuple(rates)
        if duration is not None:
            changes["duration"] = float(duration)
        if warmup is not None:
            changes["warmup"] = float(warmup)
        final[name] = Scenario.from_dict(sc.to_dict() | changes)
    if concurrency and not any(s.mode == "closed" for s in final.values()):
        raise ConfigError("--concurrency applies to closed-loop scenarios; these are open loop (use --rates)")
    if rates and not any(s.mode == "open" for s in final.values()):
        raise ConfigError("--rates applies to open-loop scenarios; none is selected")

    use_reference = p.reference if reference is None else reference
    if use_reference and any(s.reference for s in final.values()):
        if nginx_available:
            chosen[REFERENCE] = ServerSpec(REFERENCE, REFERENCE)
        else:
            notes.append("nginx is not installed: no yardstick row (Debian: apt-get install nginx-light)")
    if not chosen:
        raise ConfigError("no server to run (nginx alone needs a scenario it can serve, and nginx installed)")
    server, client, cpu_note = split_cpus(server_cpus, client_cpus)
    if cpu_note:
        notes.append(cpu_note)
    reps = repeat or p.repeat
    adaptive = p.adaptive
    if reps > adaptive.max_repeat or budget is not None:
        adaptive = replace(
            adaptive,
            max_repeat=max(reps, adaptive.max_repeat),
            budget=budget if budget is not None else adaptive.budget,
        )
    plan = BenchPlan(
        preset=preset,
        servers=chosen,
        scenarios=final,
        repeat=reps,
        run=suite.run,
        corpus=suite.corpus,
        server_cpus=server,
        client_cpus=client,
        notes=notes,
        link=link,
        adaptive=adaptive,
    )
    check_corpus_paths(plan)
    ensure_file_limit(plan)
    return plan


def check_corpus_paths(plan: BenchPlan) -> None:
    """Every path a scenario requests must be a corpus file (the work endpoint aside)."""
    files = plan.corpus.names()
    for sc in plan.scenarios.values():
        wanted = list(sc.paths) + ([sc.slow_readers.path] if sc.slow_readers else [])
        for path in wanted:
            rel = path.partition("?")[0].lstrip("/")
            if rel.startswith("_/"):
                continue
            if rel not in files:
                raise ConfigError(
                    f"scenario {sc.name}: {path} is not a file of the [corpus] (known: {', '.join(sorted(files))})"
                )
        if sc.zipf and sc.zipf.dir != plan.corpus.mix_dir:
            raise ConfigError(
                f"scenario {sc.name}: zipf.dir {sc.zipf.dir!r} is not the [corpus] mix dir {plan.corpus.mix_dir!r}"
            )


def connections_needed(sc: Scenario) -> int:
    active = max(sc.levels) if sc.mode == "closed" else sc.connections
    return active + sc.idle + (sc.slow_readers.count if sc.slow_readers else 0)


def ensure_file_limit(plan: BenchPlan) -> None:
    """Raise the soft open-file limit as far as the hard one allows, or fail with one line."""
    need = max(connections_needed(s) for s in plan.scenarios.values()) + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if need <= soft:
        return
    if hard == resource.RLIM_INFINITY or need <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # children (server, generator) inherit it
        return
    worst = max(plan.scenarios.values(), key=connections_needed)
    raise ConfigError(
        f"scenario {worst.name} needs {need} open files but the limit is {hard} "
        f"(raise it with `ulimit -n {need}` or lower its concurrency/idle count)"
    )
