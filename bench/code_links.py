"""The code behind each model's profile figures: file and line range, found with inspect.

Only the names of the functions are written here; their files and line ranges are read
from the source every time, so an edit to a server moves its links with it. Each model
names three roles:
- loop: the model's own loop, what its file shows;
- io: where a request's system calls are made (recv, send, sendfile, the selector);
- spawn: where a thread, process or task is started per connection (None: nothing is).
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass
from functools import cache

from serverzoo.servers import MODELS

_SERVERS = "serverzoo.servers"
_BLOCKING_IO = "runtime.blocking:serve_connection"

# model -> role -> "module:qualified.name" under serverzoo.servers
ROLES: dict[str, dict[str, str | None]] = {
    "iterative": {"loop": "iterative_server:serve", "io": _BLOCKING_IO, "spawn": None},
    "threading": {"loop": "threading_server:serve", "io": _BLOCKING_IO, "spawn": "threading_server:serve"},
    "threadpool": {"loop": "threadpool_server:serve", "io": _BLOCKING_IO, "spawn": "threadpool_server:serve"},
    "forking": {"loop": "forking_server:serve", "io": _BLOCKING_IO, "spawn": "runtime.workers:ChildProcesses.start"},
    "prefork": {"loop": "prefork_server:serve", "io": _BLOCKING_IO, "spawn": "runtime.workers:Supervisor.run"},
    "select": {"loop": "select_server:SelectLoop.run", "io": "select_server:SelectLoop._pump", "spawn": None},
    "gevent": {"loop": "gevent_server:serve", "io": "gevent_server:_Socket.recv", "spawn": "gevent_server:serve"},
    "trio": {
        "loop": "trio_server:_accept_loop",
        "io": "trio_server:_Conversation._serve_requests",
        "spawn": "trio_server:_accept_loop",
    },
    "asyncio": {
        "loop": "asyncio_server:_serve",
        "io": "asyncio_server:HttpProtocol._pump",
        "spawn": "asyncio_server:HttpProtocol.connection_made",
    },
}
ROLE_TITLES = {
    "loop": "the model's loop",
    "io": "where each request's system calls are made",
    "spawn": "where each connection gets its thread, process or task",
}


@dataclass(frozen=True)
class CodeRef:
    target: str  # "module:qualified.name" under serverzoo.servers
    path: str  # repository-relative, e.g. servers/runtime/blocking.py
    first: int
    last: int
    source: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.first}-{self.last}"

    @property
    def name(self) -> str:
        return self.target.split(":", 1)[1]

    @property
    def anchor(self) -> str:
        return "code-" + "".join(c if c.isalnum() else "-" for c in self.target)


def _repository_root() -> str:
    servers = importlib.import_module(_SERVERS)
    return os.path.dirname(os.path.dirname(os.path.abspath(servers.__file__)))


@cache
def resolve(target: str) -> CodeRef:
    """The source location of "module:qualified.name" (ImportError or AttributeError if it is gone)."""
    module_name, qualname = target.split(":", 1)
    obj = importlib.import_module(f"{_SERVERS}.{module_name}")
    for part in qualname.split("."):
        obj = getattr(obj, part)
    obj = inspect.unwrap(obj)
    lines, first = inspect.getsourcelines(obj)
    path = os.path.relpath(inspect.getsourcefile(obj), _repository_root())
    return CodeRef(target, path.replace(os.sep, "/"), first, first + len(lines) - 1, "".join(lines))


def code_for(model: str) -> dict[str, CodeRef | None]:
    """role -> CodeRef for a model (a variant's model); {} for a model this table does not know."""
    roles = ROLES.get(model)
    if roles is None:
        return {}
    return {role: (resolve(target) if target else None) for role, target in roles.items()}


def known_models() -> set[str]:
    return set(MODELS) & set(ROLES)
