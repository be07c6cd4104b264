"""'How each model works' cards, from the model files' module docstrings.

The files are parsed with ast, never imported: importing gevent_server would pull in
gevent (and its monkey-patching) just to write a report.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from typing import Mapping

from serverzoo.servers import MODELS

from .scenarios import ServerSpec

NGINX_CARD = ("nginx, the yardstick: C, one worker process running an epoll event loop, with the configuration "
              "the suite wrote (shown below). Read every figure as a ratio to a server people know.")


@dataclass(frozen=True)
class ModelCard:
    server: str  # the row name in the report (a model or a variant)
    model: str
    summary: str
    source: str  # path inside the project, e.g. servers/threading_server.py
    paragraphs: tuple[str, ...]
    args: tuple[str, ...] = ()


def _servers_dir() -> str:
    import serverzoo.servers as servers  # the registry package only; it imports no model

    return os.path.dirname(os.path.abspath(servers.__file__))


def module_docstring(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    return ast.get_docstring(tree)


def model_cards(servers: Mapping[str, ServerSpec]) -> list[ModelCard]:
    """One card per server row of a run (its `config.servers`), nginx included."""
    cards = []
    folder = _servers_dir()
    for name, spec in servers.items():
        model = spec.model
        args = tuple(spec.args)
        if model == "nginx":
            cards.append(ModelCard(name, model, "the reference server", "bench/nginx.py", (NGINX_CARD,), args))
            continue
        info = MODELS.get(model)
        if info is None:
            cards.append(ModelCard(name, model, "not a model of this version", "", ("(no such model file)",), args))
            continue
        doc = module_docstring(os.path.join(folder, f"{info.module}.py"))
        paragraphs = tuple(p.replace("\n", " ").strip() for p in (doc or "").split("\n\n") if p.strip())
        cards.append(ModelCard(name, model, info.summary, f"servers/{info.module}.py",
                               paragraphs or ("(the model file has no docstring yet)",), args))
    return cards
