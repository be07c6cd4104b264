"""The README and docs/ checked as a newcomer reads them: the runnable blocks run, links lead somewhere.

A fenced code block whose info string carries the word `runnable` (```` ```sh runnable ````)
is a script: each one runs in bash (`-euo pipefail`), with the installed `serverzoo` on
PATH, in a fresh temporary directory that links the repository's top-level folders and
files (so `bench/scenarios.toml` or `tests/fixtures/...` resolve as from a checkout, while
what the block writes stays in the temporary directory). It fails when it exits non-zero,
runs past BLOCK_TIMEOUT, or leaves a process behind. docs/testing.md states the convention
for writers. Only cheap, safe commands are marked: the bench matrix and anything that needs
root are not.

The links check covers every relative link and image in README.md, PROTOCOL.md and
docs/*.md: the file must exist inside the repository, and a `#fragment` must name a heading
of the target page (GitHub's anchor rules). No page may cite files from outside the
repository.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from markdown_it import MarkdownIt

if TYPE_CHECKING:
    from collections.abc import Iterator

    from markdown_it.token import Token

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", REPO / "PROTOCOL.md", *(REPO / "docs").glob("*.md")])
BLOCK_TIMEOUT = 40.0  # seconds; below pytest-timeout's 60 so the block's processes are cleaned up here
LEFTOVER_GRACE = 2.0
NOT_LINKED = {"results", "build", "dist", "venv"}  # generated or local: never part of a block's view
FOREIGN = re.compile(r"ANCHORS\.md|STYLE\.md|\.\./shared|/work/")
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
CI_SCRIPT = REPO / ".ci" / "run"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    script: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _tokens(page: Path) -> list[Token]:
    return MarkdownIt("commonmark").parse(page.read_text(encoding="utf-8"))


def runnable_blocks() -> list[Block]:
    blocks = []
    for page in PAGES:
        for token in _tokens(page):
            words = token.info.split()
            if token.type == "fence" and "runnable" in words[1:]:
                assert token.map is not None
                blocks.append(Block(page, token.map[0] + 1, token.content))
    return blocks


def _link_repository(into: Path) -> None:
    for entry in REPO.iterdir():
        if entry.name.startswith(".") or entry.name in NOT_LINKED or entry.name.endswith(".egg-info"):
            continue
        (into / entry.name).symlink_to(entry)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_ends_within(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _end_group(pgid: int) -> None:
    """SIGTERM what is left of the block's process group, then SIGKILL after a grace period."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(pgid):
            return
        os.killpg(pgid, sig)
        _group_ends_within(pgid, grace)


def test_runnable_blocks_exist() -> None:
    # the convention is in use: were the marker renamed in the docs, the test below would pass vacuously
    assert len(runnable_blocks()) >= 5


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda block: block.name)
def test_runnable_block(block: Block, tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "serverzoo").exists(), "the tests must run from the venv serverzoo is installed in"
    _link_repository(tmp_path)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    log = tmp_path / "block-output.txt"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block.script],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode: int | None = process.wait(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            returncode = None
        # a process reparented as the block ended may take a moment to be reaped; one still
        # running after LEFTOVER_GRACE was left behind by the block
        leftover = not _group_ends_within(process.pid, LEFTOVER_GRACE)
        _end_group(process.pid)
        process.wait()
    output = log.read_text(errors="replace")[-4000:]
    assert returncode is not None, f"{block.name} ran past {BLOCK_TIMEOUT:.0f} s:\n{output}"
    assert returncode == 0, f"{block.name} exited {returncode}:\n{output}"
    assert not leftover, f"{block.name} left processes running:\n{output}"


def github_anchor(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    tokens = _tokens(page)
    seen: dict[str, int] = {}
    for heading, inline in itertools.pairwise(tokens):
        if heading.type != "heading_open":
            continue
        text = "".join(child.content for child in inline.children or [] if child.type in ("text", "code_inline"))
        slug = github_anchor(text)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def links(page: Path) -> Iterator[str]:
    for token in _tokens(page):
        for child in token.children or []:
            if child.type == "link_open":
                yield str(child.attrs["href"])
            elif child.type == "image":
                yield str(child.attrs["src"])


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_links_lead_inside_the_repository(page: Path) -> None:
    broken = []
    for href in links(page):
        if URL_SCHEME.match(href):
            continue
        path, _, fragment = href.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.is_relative_to(REPO) or not target.exists():
            broken.append(f"{href}: no such file in the repository")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{href}: {target.name} has no heading with that anchor")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_no_page_cites_files_outside_the_repository(page: Path) -> None:
    found = [match.group() for match in FOREIGN.finditer(page.read_text(encoding="utf-8"))]
    assert not found, f"{page.name} cites {found}"


def test_readme_test_command_is_the_one_ci_runs() -> None:
    script = CI_SCRIPT.read_text().splitlines()
    ci_command = script[script.index("# The README's test command, exactly:") + 1]
    readme = (REPO / "README.md").read_text()
    assert ci_command in readme.splitlines(), f"README.md must show CI's test command as is: {ci_command}"


def test_anchor_rule_matches_githubs() -> None:
    # examples of GitHub's rendering, so the fragment check above cannot drift from it
    assert github_anchor("TCP vs UDP, measured (`serverzoo udp`)") == "tcp-vs-udp-measured-serverzoo-udp"
    assert github_anchor("Load generator: `serverzoo load`") == "load-generator-serverzoo-load"
    assert github_anchor("Runs & reports") == "runs--reports"
