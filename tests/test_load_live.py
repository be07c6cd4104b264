"""The live view: redrawn in place on a terminal, plain lines on a pipe, nothing with --quiet.

Run against a real server process, with `serverzoo load` on a pseudo-terminal (pty), as a
user at a terminal would see it.
"""

from __future__ import annotations

import re
import sys

import pytest

from serverzoo.clients.loadgen import latency
from serverzoo.clients.loadgen.live import LiveFigures, Second, sparkline
from serverzoo.clients.loadgen.options import LoadOptions

from .load_helpers import one_kib_server, run_cli, run_in_pty

ESCAPE = "\x1b"
PLAIN_LINE = re.compile(
    r"^\s+-?\d+\.\d+s (ramp-up|warmup|measure)\s+[\d,]+ req/s  p50 \S+  p99 \S+  "
    r"overall p50 \S+ p99 \S+  errors 0  client CPU \d+%$"
)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    with one_kib_server(str(tmp_path_factory.mktemp("live-corpus"))) as file_url:
        yield file_url


def _load(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "serverzoo", "load", url, "-c", "4", "-w", "2", *args]


def test_the_live_view_redraws_each_second_on_a_terminal(url: str) -> None:
    code, out = run_in_pty(_load(url, "-d", "2.5s", "--warmup", "1s"))
    assert code == 0, out[-2000:]
    view, _, summary = out.rpartition("\x1b[?25h")  # rich shows the cursor again when the view ends
    assert "Requests/sec:" in summary and "last second" not in summary
    # one panel a second, each drawn over the last (cursor up, erase line)
    assert view.count("serverzoo load http://") >= 3, view
    assert "\x1b[1A\x1b[2K" in view
    assert "warmup" in view and "measure 1s of 2.5s" in view and "measure 2s of 2.5s" in view
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", view)
    for field in ("requests/s", "last 30 s", "last second", "overall", "errors", "client CPU"):
        assert field in text, field
    rates = [int(m.replace(",", "")) for m in re.findall(r"requests/s\s+([\d,]+)", text)]
    assert rates and min(rates) > 0, rates
    assert re.search(r"last second\s+p50 \d+(\.\d+)?(us|ms)\s+p99 \d+(\.\d+)?(us|ms)", text), text
    assert re.search(r"overall\s+p50 \d+(\.\d+)?(us|ms)\s+p99 \d+(\.\d+)?(us|ms)\s+[\d,]+ responses", text)
    assert re.search(r"client CPU\s+\d+% of one CPU \(2 worker processes\)", text)
    assert re.search(r"last 30 s\s+[▁▂▃▄▅▆▇█]{2,}", text), text  # one block a second so far


def test_quiet_on_a_terminal_prints_the_summary_only_without_escape_codes(url: str) -> None:
    code, out = run_in_pty(_load(url, "-d", "1.2s", "--quiet"))
    assert code == 0, out[-2000:]
    assert ESCAPE not in out, repr(out[:500])
    assert "Requests/sec:" in out and "req/s  p50" not in out and "last second" not in out


def test_on_a_pipe_live_figures_are_plain_lines(url: str) -> None:
    forced = run_cli("load", url, "-c", "4", "-w", "2", "-d", "2.2s", "--live")
    assert forced.returncode == 0, forced.stderr
    assert ESCAPE not in forced.stdout + forced.stderr
    lines = forced.stderr.splitlines()
    assert len(lines) >= 2 and all(PLAIN_LINE.match(line) for line in lines), lines
    default = run_cli("load", url, "-c", "4", "-w", "2", "-d", "1s")  # a pipe: quiet unless asked
    assert default.returncode == 0 and default.stderr == "" and "Requests/sec:" in default.stdout


class _Collect:
    def __init__(self) -> None:
        self.seconds: list[Second] = []

    def show(self, second: Second, history: list[float]) -> None:
        self.seconds.append(second)

    def close(self) -> None:
        pass


def _tick(seq: int, completed: int, ns: int, values: list[int], phase: str = "measure") -> dict:
    hist = latency.encode(latency.histogram_of(values))
    return {
        "seq": seq,
        "phase": phase,
        "completed": completed,
        "measured": completed,
        "errors": {},
        "recent": [(phase, hist)] if values else [],
        "ns": ns,
    }


def test_a_second_is_shown_once_every_worker_has_ticked_or_one_is_behind() -> None:
    shown = _Collect()
    figures = LiveFigures(LoadOptions(url="http://127.0.0.1:1/", duration=10), [None, None], 0, 0, [shown])
    figures.add(0, _tick(1, 100, 1_000_000_000, [100] * 100))
    assert shown.seconds == []  # waits for worker 1
    figures.add(1, _tick(1, 300, 1_000_000_000, [300] * 300))
    assert [s.rps for s in shown.seconds] == [400.0]
    assert shown.seconds[0].p50_us == 300 and shown.seconds[0].overall_p50_us == 300
    # worker 1 falls behind: second 2 is shown when worker 0's third tick arrives, with what came
    figures.add(0, _tick(2, 200, 2_000_000_000, [100] * 100))
    figures.add(0, _tick(3, 300, 3_000_000_000, [100] * 100))
    assert [s.rps for s in shown.seconds] == [400.0, 100.0]
    figures.add(1, _tick(2, 600, 2_000_000_000, [300] * 300))  # late: counted in the window, not shown
    assert len(shown.seconds) == 2
    figures.finished(1)  # worker 1 is done: second 3 needs worker 0 only, which has it
    assert [s.t for s in shown.seconds] == [1.0, 2.0, 3.0]
    assert shown.seconds[-1].completed == 900
    assert shown.seconds[-1].overall_p50_us == 300  # 600 of the 900 values are 300 us


def test_sparkline_scales_to_the_largest_value() -> None:
    assert sparkline([0, 50, 100]) == "▁▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert len(sparkline([1.0] * 40)) == 30
