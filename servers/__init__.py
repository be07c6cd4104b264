"""Every concurrency model, one file each, all serving the same protocol core.

MODELS is the registry: the CLI, the conformance suite and the benchmark runner all
read it, so a model exists for the project when it is listed here. Modules are
imported only when a model is run, so one model's imports (gevent's monkey-patching,
an event loop policy) never reach another model's process.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class ModelInfo:
    name: str
    module: str  # file in servers/, without .py
    summary: str  # one line for `serverzoo models` and --help
    options: frozenset[str] = frozenset()  # model-specific `serve` options it accepts
    multiprocess: bool = False  # accepts --workers N (N processes on one listener)

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")


def _m(name: str, summary: str, *options: str, multiprocess: bool = False) -> ModelInfo:
    return ModelInfo(name, f"{name}_server", summary, frozenset(options), multiprocess)


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        _m("iterative", "one connection at a time, start to finish: the classic first server", "file_send"),
        _m("threading", "a new thread per connection, unbounded", "file_send"),
        _m("threadpool", "a bounded pool of threads fed by the accept loop", "pool", "file_send"),
        _m("forking", "a new process per connection, reaped as it exits, with a cap", "max_children",
           "file_send"),
        _m("prefork", "N processes share the listener, each accepting in a loop (Apache prefork)", "file_send",
           multiprocess=True),
        _m("select", "one thread, non-blocking sockets, a selectors event loop with timers", "selector",
           "file_send", multiprocess=True),
        _m("gevent", "greenlets on gevent's libev loop, blocking-style code", "pool", "file_send",
           multiprocess=True),
        _m("trio", "structured concurrency: a nursery of tasks, cancel scopes for timeouts", "file_send",
           multiprocess=True),
        _m("asyncio", "asyncio Protocols on the stdlib loop, or uvloop with --loop uvloop", "loop", "file_send",
           multiprocess=True),
    ]
}


# Named variants: a model plus `serverzoo serve` arguments, accepted wherever a model name is
# (`serverzoo load --serve`, the speed benchmark). The bench matrix defines its own in scenarios.toml.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "asyncio-uvloop": ("asyncio", ("--loop", "uvloop")),
}


def get_model(name: str) -> ModelInfo:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose from: {', '.join(MODELS)}") from None
