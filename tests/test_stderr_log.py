"""The bounded, non-blocking stderr of a server process (servers/runtime/stderr_log.py)."""

from __future__ import annotations

import os

import pytest

from serverzoo.servers.runtime import stderr_log
from serverzoo.servers.runtime.stderr_log import INTERVAL, RAW_LINES_PER_INTERVAL, BoundedStderr


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log():
    """A BoundedStderr on a pipe we read, with a clock we move."""
    r, w = os.pipe()
    clock = Clock()
    stream = BoundedStderr(w, prefix="t", clock=clock)
    stream.clock = clock

    def lines() -> list[str]:
        os.set_blocking(r, False)
        try:
            return os.read(r, 1 << 20).decode().splitlines()
        except BlockingIOError:
            return []

    stream.lines = lines

    def drain(n: int) -> bytes:
        os.set_blocking(r, True)
        out = b""
        while len(out) < n:
            out += os.read(r, n - len(out))
        return out

    stream.drain = drain
    yield stream
    os.close(r)
    os.close(w)


def test_one_line_per_kind_per_interval_then_a_count(log):
    for _ in range(1000):
        log.report("reset", "t: connection reset")
    log.report("other", "t: something else")
    assert log.lines() == ["t: connection reset", "t: something else"]
    log.clock.now += INTERVAL
    log.report("reset", "t: connection reset")
    assert log.lines() == ["t: 999 more line(s) of 'reset' in the last 10 s", "t: connection reset"]


def test_counts_still_held_are_printed_at_exit(log):
    for _ in range(3):
        log.report("reset", "t: connection reset")
    log.write("no newline yet")
    log.close_summaries()
    assert log.lines() == ["t: connection reset", "no newline yet", "t: 2 more line(s) of 'reset' in the last 0 s"]


@pytest.mark.parametrize(
    "pieces",
    [
        ["a\nb\n"],
        ["a", "\n", "b", "\n"],
        ["a\nb", "\n"],
        ["", "a\n", "", "b\n"],
    ],
)
def test_other_output_is_split_into_lines_however_it_is_written(log, pieces):
    for piece in pieces:
        assert log.write(piece) == len(piece)
    assert log.lines() == ["a", "b"]


def test_other_output_has_a_line_budget_per_interval(log):
    for i in range(RAW_LINES_PER_INTERVAL + 500):
        print(f"line {i}", file=log)
    assert len(log.lines()) == RAW_LINES_PER_INTERVAL
    log.clock.now += INTERVAL
    print("later", file=log)
    assert log.lines() == ["t: 500 more line(s) of 'other output' in the last 10 s", "later"]


def test_a_full_pipe_drops_lines_without_blocking_and_says_so_later(log):
    w = log.fileno()
    os.set_blocking(w, False)
    filled = 0
    try:
        while True:
            filled += os.write(w, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)  # blocking, as a real stderr is: only the log's own handle is not
    log.report("a", "t: lost")  # returns at once (a blocking write would hang the test here)
    log.report("b", "t: lost too")
    assert log.drain(filled) == b"x" * filled
    log.report("c", "t: back")
    assert log.lines() == ["t: 2 lines dropped because stderr was full", "t: back"]


def test_report_outside_a_server_prints_plainly(capsys):
    stderr_log.report("kind", "plain line")
    assert capsys.readouterr().err == "plain line\n"
