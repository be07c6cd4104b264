"""'How each model works' cards, from the model files' module docstrings, rendered as Markdown.

The files are parsed with ast, never imported: importing gevent_server would pull in
gevent (and its monkey-patching) just to write a report. A card explains how a model works
and why it behaves as it does; the figures are the report's own tables. So a docstring
paragraph that quotes a measurement (a figure with a unit, a dated run) or points at a
file outside this repository is left out of the card, sentence by sentence: it would go
stale, and a reader of the report cannot open it. Each card also says what the model ran on in this run (for
asyncio: the stdlib event loop or uvloop).
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from serverzoo.servers import MODELS

from .scenarios import ServerSpec

NGINX_CARD = (
    "nginx, the yardstick: C, one worker process running an epoll event loop, with the configuration "
    "the suite wrote (shown below). Read every figure as a ratio to a server people know."
)

# a figure with a unit or a ratio ("3.5 GB/s", "56k requests/s", "1.6x", "31 vs 15 ms"), a date, or a path outside
# the repository: what a card never carries
_MEASURED = re.compile(
    r"\d(?:[\d.,]*\d)?\s*(?:[GMK]B/s|[GM]bit/s|ms\b|us\b|µs|k\b|x\b|requests/s|req/s|%)"
    r"|\b20\d\d-\d\d-\d\d\b"
)
_OUTSIDE = re.compile(r"\.\./|\bshared/|ANCHORS|STYLE\.md")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"(])")


@dataclass(frozen=True)
class ModelCard:
    server: str  # the row name in the report (a model or a variant)
    model: str
    summary: str
    source: str  # path inside the project, e.g. servers/threading_server.py
    paragraphs: tuple[str, ...]  # Markdown, one per docstring paragraph kept
    args: tuple[str, ...] = ()
    ran_on: str = ""  # what the model ran on in this run, when the model has a choice (asyncio's loop)

    @property
    def html(self) -> str:
        """The paragraphs rendered from Markdown (raw HTML in a docstring is shown as text, not obeyed)."""
        return _markdown().render("\n\n".join(self.paragraphs))


@lru_cache(maxsize=1)
def _markdown():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False})


def card_paragraphs(doc: str) -> tuple[str, ...]:
    """The docstring's paragraphs (lines joined), without the sentences quoting measurements or outside files."""
    out = []
    for p in doc.split("\n\n"):
        sentences = _SENTENCE_END.split(" ".join(line.strip() for line in p.splitlines()).strip())
        kept = " ".join(x for x in sentences if x and not (_MEASURED.search(x) or _OUTSIDE.search(x)))
        if kept:
            out.append(kept)
    return tuple(out)


def ran_on(model: str, args: tuple[str, ...]) -> str:
    """What the model ran on, for models that can run on more than one thing."""
    if model != "asyncio":
        return ""
    loop = args[args.index("--loop") + 1] if "--loop" in args[:-1] else "asyncio"
    return (
        "uvloop (libuv's event loop, `--loop uvloop`)"
        if loop == "uvloop"
        else "the standard library's asyncio event loop (selectors, epoll on Linux)"
    )


def _servers_dir() -> str:
    from serverzoo import servers  # the registry package only; it imports no model

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
        cards.append(
            ModelCard(
                name,
                model,
                info.summary,
                f"servers/{info.module}.py",
                card_paragraphs(doc or "") or ("(the model file has no docstring yet)",),
                args,
                ran_on(model, args),
            )
        )
    return cards
