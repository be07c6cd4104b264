"""`serverzoo serve` and `serverzoo models`."""

from __future__ import annotations

import sys
from typing import Any

import click

from ...protocol import Limits
from .. import MODELS, VARIANTS, get_model

_MODEL_OPTIONS = {  # option name -> flag, for messages
    "pool": "--pool",
    "max_children": "--max-children",
    "selector": "--selector",
    "loop": "--loop",
    "file_send": "--file-send",
}


def _models_help() -> str:
    width = max(map(len, MODELS))
    return "\n".join(f"  {m.name:<{width}}  {m.summary}" for m in MODELS.values())


def _variants_help() -> str:
    width = max(map(len, VARIANTS))
    return "\n".join(f"  {v.name:<{width}}  {v.model.name} {' '.join(v.args)}" for v in VARIANTS.values())


def _per_cpu_models() -> str:
    return ", ".join(m.name for m in MODELS.values() if m.default_workers is None)


@click.command("serve", epilog="\b\nModels:\n" + _models_help())
@click.argument("model", type=click.Choice(list(MODELS)), metavar="MODEL")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False), help="Directory to serve.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (IPv4 or IPv6).")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help=f"Processes sharing the listener (prefork and the event loops). [{_per_cpu_models()}: CPU count]",
)
@click.option("--backlog", default=1024, show_default=True, type=click.IntRange(1))
@click.option(
    "--keepalive-timeout",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.01),
    help="Seconds an idle keep-alive connection is kept.",
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.01),
    help="Seconds a client has to finish sending its request head.",
)
@click.option(
    "--write-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.01),
    help="Seconds without any progress sending a response before the connection is dropped.",
)
@click.option(
    "--grace",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="On SIGTERM/SIGINT, seconds responses in flight may take to finish.",
)
@click.option(
    "--parse-cache/--no-parse-cache",
    default=True,
    show_default=True,
    help="Reuse the parse of byte-identical request heads (see PROTOCOL.md).",
)
@click.option("--pool", type=click.IntRange(1), help="threadpool: threads; gevent: greenlet cap.")
@click.option("--max-children", type=click.IntRange(1), help="forking: live children at most.")
@click.option("--selector", type=click.Choice(["select", "poll", "epoll"]), help="select: the selector. [epoll]")
@click.option("--loop", type=click.Choice(["asyncio", "uvloop"]), help="asyncio: the event loop. [asyncio]")
@click.option(
    "--file-send",
    type=click.Choice(["sendfile", "read"]),
    help="How file bodies are sent: zero-copy sendfile or a read-and-send loop. [per model]",
)
def serve_command(
    model: str,
    root: str,
    host: str,
    port: int,
    workers: int | None,
    backlog: int,
    keepalive_timeout: float,
    header_timeout: float,
    write_timeout: float,
    grace: float,
    parse_cache: bool,
    **model_options: Any,
) -> None:
    """Serve the files under --root with MODEL until SIGTERM or Ctrl-C.

    Prints `READY http://HOST:PORT/` once it accepts connections.
    """
    from .context import ServerConfig
    from .runner import run_server

    info = get_model(model)
    options = {k: v for k, v in model_options.items() if v is not None}
    for name in options:
        if name not in info.options:
            raise click.UsageError(f"{_MODEL_OPTIONS[name]} does not apply to the {model} model")
    if workers is not None and workers > 1 and not info.multiprocess:
        raise click.UsageError(
            f"--workers does not apply to the {model} model "
            f"(it applies to: {', '.join(m.name for m in MODELS.values() if m.multiprocess)})"
        )
    workers = info.workers(workers)
    limits = Limits(
        keepalive_timeout=keepalive_timeout, header_timeout=header_timeout, write_timeout=write_timeout, grace=grace
    )
    config = ServerConfig(
        model=model,
        root=root,
        host=host,
        port=port,
        backlog=backlog,
        workers=workers,
        limits=limits,
        options=options,
        parse_cache=parse_cache,
    )
    try:
        code = run_server(config)
    except OSError as exc:
        click.echo(f"serverzoo serve: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    sys.exit(code)


@click.command("models")
def models_command() -> None:
    """List the server models, one line each, then the named variants (a model plus serve arguments)."""
    click.echo(_models_help())
    click.echo("Variants (accepted wherever a server name is, e.g. `serverzoo load --serve`):")
    click.echo(_variants_help())
