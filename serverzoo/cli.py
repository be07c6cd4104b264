"""The one command line: `serverzoo COMMAND ...`.

Commands are imported only when run, so `serverzoo serve` starts without loading the
plotting or load-generation stacks (and gevent never enters another model's process).
"""

from __future__ import annotations

import importlib

import click

# command name -> (module, attribute, one-line help shown in `serverzoo --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("serverzoo.servers.runtime.serve_cli", "serve_command", "Run a server model on a directory."),
    "models": ("serverzoo.servers.runtime.serve_cli", "models_command", "List the server models."),
    "get": ("serverzoo.clients.download", "get_command", "Download a file (resumable, verified length)."),
    "ls": ("serverzoo.clients.download", "ls_command", "Print a directory listing."),
    "load": ("serverzoo.clients.loadgen.load_cli", "load_command", "Load a server: throughput, latency, errors."),
    "corpus": ("serverzoo.clients.loadgen.load_cli", "corpus_command", "Write a reproducible test corpus."),
    "bench": ("serverzoo.bench.bench_cli", "bench_command", "Run the benchmark matrix (quick: about 5 min)."),
    "report": ("serverzoo.bench.bench_cli", "report_command", "Write the HTML and Markdown report of runs."),
    "compare": ("serverzoo.bench.bench_cli", "compare_command", "Compare two runs; exit 1 on a regression."),
    "profile": (
        "serverzoo.bench.profile_command",
        "profile_command",
        "Where one model's time goes: CPU, syscalls, switches, memory, flame graph.",
    ),
    "udp": ("serverzoo.clients.udp.udp_cli", "udp_group", "UDP responder and tester: UDP beside TCP, measured."),
    "net": (
        "serverzoo.clients.links.net_cli",
        "net_group",
        "Emulated network links: list, check, up, fetch, cleanup (root).",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="serverzoo")
def main() -> None:
    """serverzoo: one file-download server in every Python concurrency model, measured honestly."""


if __name__ == "__main__":
    main()
