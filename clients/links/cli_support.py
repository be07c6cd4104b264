"""What a command needs to offer `--link NAME`: the options, and a context that builds the link
or stops the command with one line (exit code 3) saying why it cannot."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from .namespaces import LinkedHosts
from .profiles import LinkProfile, ProfileError
from .shaping import LinkUnavailable

EXIT_NO_LINK = 3


class NoLinkError(click.ClickException):
    exit_code = EXIT_NO_LINK


def link_options(command: Callable) -> Callable:
    """Adds --link NAME and --links-file PATH to a click command (parameters `link`, `links_file`)."""
    command = click.option(
        "--links-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="TOML file with [links.NAME] tables. [clients/links/links.toml]",
    )(command)
    return click.option(
        "--link",
        "link",
        metavar="NAME",
        default=None,
        help="Run the server and the client on two network namespaces joined by the "
        "emulated link NAME (root; see `serverzoo net links`).",
    )(command)


@contextmanager
def linked_hosts_or_exit(name: str | LinkProfile | None, links_file: str | None = None) -> Iterator[LinkedHosts | None]:
    """Yields None without a name; else an up LinkedHosts, removed afterwards whatever happens.
    A LinkProfile instead of a name builds that exact profile (a resumed run's recorded one)."""
    if not name:
        yield None
        return
    try:
        link = LinkedHosts(name, links_file).__enter__()
    except (LinkUnavailable, ProfileError) as exc:
        raise NoLinkError(f"--link {getattr(name, 'name', name)}: {exc}") from None
    try:
        yield link
    finally:
        link.close()
