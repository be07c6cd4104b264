"""A flame graph of a running server's Python code, recorded by py-spy while attached.

`py-spy record --pid PID --subprocesses` samples the Python stacks of the server and of
every process it forks (prefork workers, forking children) and, on SIGINT, writes an
SVG flame graph. By default it samples only threads that are running, so the graph
shows where CPU time goes, not where threads wait. py-spy pauses the process to read
each stack, so it runs only in a pass of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .syscall_counts import TracerUnavailable

SAMPLE_RATE = 250  # per second: enough samples in a sub-second window, light enough to keep serving
START_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 30.0


@dataclass
class FlameGraph:
    path: str | None = None  # the SVG, once written
    samples: int | None = None
    problem: str | None = None  # why there is no SVG


def py_spy_binary() -> str | None:
    """py-spy installed beside this interpreter (its PyPI wheel), or on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.access(here, os.X_OK) else shutil.which("py-spy")


@contextmanager
def py_spy_attached(pid: int, svg_path: str) -> Iterator[FlameGraph]:
    """Record the tree's stacks while the with-block runs; the SVG is written at its end.

    TracerUnavailable when py-spy is missing or cannot attach; a recording that ends
    without an SVG (no sample taken, say) sets FlameGraph.problem instead.
    """
    binary = py_spy_binary()
    if binary is None:
        raise TracerUnavailable("py-spy is not installed (pip install py-spy)")
    argv = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--rate",
        str(SAMPLE_RATE),
        "--format",
        "flamegraph",
        "--output",
        svg_path,
    ]
    result = FlameGraph()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
        try:
            _wait_sampling(proc, err)
            yield result
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # stop sampling and write the SVG
                try:
                    proc.wait(WRITE_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            err.seek(0)
            text = err.read().decode(errors="replace")
    if os.path.exists(svg_path) and os.path.getsize(svg_path) > 0:
        result.path = svg_path
        result.samples = _samples(text)
    else:
        lines = [ln.removeprefix("py-spy> ").strip() for ln in text.strip().splitlines() if ln.strip()]
        result.problem = f"py-spy wrote no flame graph: {lines[-1][:200] if lines else f'exit code {proc.returncode}'}"


def _wait_sampling(proc: subprocess.Popen, err) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        err.seek(0)
        text = err.read().decode(errors="replace")
        if "Sampling process" in text:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            lines = [ln.removeprefix("py-spy> ").strip() for ln in text.strip().splitlines() if ln.strip()]
            raise TracerUnavailable(f"py-spy could not attach: {lines[-1][:200] if lines else 'no output'}")
        time.sleep(0.01)


def _samples(text: str) -> int | None:
    marker = "Samples: "
    if marker not in text:
        return None
    digits = text.split(marker, 1)[1].split(maxsplit=1)[0]
    return int(digits) if digits.isdigit() else None
