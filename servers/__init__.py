"""Every concurrency model, one file each, all serving the same protocol core.

This is the registry: a model or a named variant exists for the project when it is listed
here, and everything else (the CLI, the load generator's --serve, the benchmark runner, the
speed scripts, the tests) reads it, by name through resolve(). A ModelInfo carries the
traits that make a model what it is (how it sends files by default, whether it always runs
under the worker supervisor, whether it caps concurrent connections, whether CPU work in one
request stalls the others), so no code elsewhere asks "is this prefork?".

Modules are imported only when a model is run, so one model's imports (gevent's
monkey-patching, an event loop policy) never reach another model's process.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

FileSend = Literal["read", "sendfile"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    summary: str  # one line for `serverzoo models` and --help
    options: frozenset[str] = frozenset()  # model-specific `serve` options it accepts
    file_send: FileSend = "read"  # how file bodies go out unless --file-send says otherwise
    multiprocess: bool = False  # accepts --workers N (N processes on one listener)
    supervised: bool = False  # always runs under the worker supervisor, even with one worker
    default_workers: int | None = 1  # processes when --workers is not given; None: one per CPU
    bounded: bool = False  # serves at most a fixed number of connections at once; the rest wait
    cap_option: str | None = None  # the `serve` flag that sets that number (None: fixed, or no cap)
    cpu_blocks: bool = False  # CPU work in one request stalls every other request of its process

    @property
    def module(self) -> str:
        """The model's file in servers/, without .py."""
        return f"{self.name}_server"

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")

    def workers(self, requested: int | None) -> int:
        """Processes to run: the requested count, or the model's default."""
        if requested is not None:
            return requested
        return self.default_workers or os.cpu_count() or 1


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo(
            "iterative",
            "one connection at a time, start to finish: the classic first server",
            frozenset({"file_send"}),
            bounded=True,
            cpu_blocks=True,
        ),
        ModelInfo("threading", "a new thread per connection, unbounded", frozenset({"file_send"})),
        ModelInfo(
            "threadpool",
            "a bounded pool of threads fed by the accept loop",
            frozenset({"pool", "file_send"}),
            bounded=True,
            cap_option="--pool",
        ),
        ModelInfo(
            "forking",
            "a new process per connection, reaped as it exits, with a cap",
            frozenset({"max_children", "file_send"}),
            bounded=True,
            cap_option="--max-children",
        ),
        ModelInfo(
            "prefork",
            "N processes share the listener, each accepting in a loop (Apache prefork)",
            frozenset({"file_send"}),
            multiprocess=True,
            supervised=True,
            default_workers=None,
            bounded=True,
            cap_option="--workers",
        ),
        ModelInfo(
            "select",
            "one thread, non-blocking sockets, a selectors event loop with timers",
            frozenset({"selector", "file_send"}),
            multiprocess=True,
            cpu_blocks=True,
        ),
        ModelInfo(
            "gevent",
            "greenlets on gevent's libev loop, blocking-style code",
            frozenset({"pool", "file_send"}),
            multiprocess=True,
            cap_option="--pool",
            cpu_blocks=True,
        ),
        ModelInfo(
            "trio",
            "structured concurrency: a nursery of tasks, cancel scopes for timeouts",
            frozenset({"file_send"}),
            multiprocess=True,
            cpu_blocks=True,
        ),
        ModelInfo(
            "asyncio",
            "asyncio Protocols on the stdlib loop, or uvloop with --loop uvloop",
            frozenset({"loop", "file_send"}),
            multiprocess=True,
            cpu_blocks=True,
        ),
    ]
}


@dataclass(frozen=True)
class Variant:
    """A server as the project names it: a model plus `serverzoo serve` arguments."""

    name: str
    model: ModelInfo
    args: tuple[str, ...] = ()


def _variant(name: str, model: str, *args: str) -> Variant:
    return Variant(name, MODELS[model], args)


# Named variants, accepted wherever a model name is (`serverzoo load --serve`, `serverzoo bench
# --models`, the speed scripts); the bench scenarios file chooses which of them its "all" runs.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        _variant("asyncio-uvloop", "asyncio", "--loop", "uvloop"),
        _variant("threading-sendfile", "threading", "--file-send", "sendfile"),
        # the event loops with every request head parsed afresh (PROTOCOL.md, parse cache)
        _variant("select-noparsecache", "select", "--no-parse-cache"),
        _variant("asyncio-uvloop-noparsecache", "asyncio", "--loop", "uvloop", "--no-parse-cache"),
    ]
}


class UnknownServer(KeyError):
    """A name the registry does not know; str() is the one-line message."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_model(name: str) -> ModelInfo:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownServer(f"unknown model {name!r}; choose from: {', '.join(MODELS)}") from None


def server_names() -> list[str]:
    """Every name resolve() accepts: the models, then the named variants."""
    return [*MODELS, *VARIANTS]


def resolve(name: str) -> Variant:
    """A model (with no extra arguments) or a named variant; UnknownServer (a KeyError) otherwise."""
    if name in MODELS:
        return Variant(name, MODELS[name])
    if name in VARIANTS:
        return VARIANTS[name]
    raise UnknownServer(f"unknown server {name!r}; models: {', '.join(MODELS)}; variants: {', '.join(VARIANTS)}")
