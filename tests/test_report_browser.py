"""The HTML report in a real browser: headless Chromium, at a desktop width and a phone width.

Chromium is driven over its DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages ending in a NUL byte on file descriptors 3 and 4), so no extra library or port is
needed. The phone is emulated as a phone (390 CSS pixels, mobile, so the viewport meta tag
counts). Checked: no console error or uncaught exception, and no horizontal overflow of the
page: a table wider than the screen must scroll inside itself, not widen the page.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest
from click.testing import CliRunner

from serverzoo.cli import main

from .report_fixtures import stretched_fixture

CHROMIUM = "/usr/bin/chromium"
DEADLINE_S = 45.0

# run in the page after it loaded: what sticks out of the viewport, and whether wide tables scroll
LAYOUT_CHECK = """(() => {
  for (const d of document.querySelectorAll('details')) d.open = true;  // what a reader can unfold must fit too
  const width = document.documentElement.clientWidth;
  const outside = [];
  for (const el of document.body.querySelectorAll('*')) {
    const box = el.parentElement && el.parentElement.closest('table, pre, svg');
    if (box) continue;  // inside a box that scrolls (table, pre) or clips (svg) its own content
    const r = el.getBoundingClientRect();
    if (r.width && r.right > width + 1) outside.push(`${el.tagName.toLowerCase()} ends at ${Math.round(r.right)}`);
  }
  const stuck = [...document.querySelectorAll('table, pre')].filter(
    t => t.scrollWidth > t.clientWidth + 1 && !['auto', 'scroll'].includes(getComputedStyle(t).overflowX));
  return {width, pageWidth: document.documentElement.scrollWidth, outside: outside.slice(0, 10),
          unscrollable: stuck.length, viewportMeta: !!document.querySelector('meta[name=viewport]')};
})()"""


class DevTools:
    """A headless Chromium and one page of it, over the DevTools pipe; every wait bounded by DEADLINE_S."""

    def __init__(self, profile: str) -> None:
        self.to_browser_r, self.to_browser_w = os.pipe()
        self.from_browser_r, self.from_browser_w = os.pipe()
        argv = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]

        # the protocol's fixed descriptors in the browser: 3 reads commands, 4 writes answers. bash moves the pipe
        # ends there (from descriptors >= 10, so no move overwrites another) and execs the browser
        r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (self.to_browser_r, self.from_browser_w))
        shell = f'exec "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-'
        try:
            self.proc = subprocess.Popen(
                ["/bin/bash", "-c", shell, "bash", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(r, w),
            )
        finally:
            os.close(r)
            os.close(w)
        os.close(self.to_browser_r)
        os.close(self.from_browser_w)
        self.deadline = time.monotonic() + DEADLINE_S
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_browser_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str) -> dict:
        while True:
            for e in self.events:
                if e.get("method") == event:
                    self.events.remove(e)
                    return e
            self.events.append(self._read())

    def _read(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_browser_r], [], [], left)[0]:
                raise AssertionError(f"Chromium did not answer within {DEADLINE_S:.0f} s")
            chunk = os.read(self.from_browser_r, 1 << 16)
            if not chunk:
                raise AssertionError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def open_page(self, width: int, mobile: bool) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def load(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> dict:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(result["exceptionDetails"])
        return result["result"]["value"]

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors seen so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e.get("method") == "Runtime.exceptionThrown":
                out.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append("log: " + p["entry"]["text"])
        return out

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                os.write(self.to_browser_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self.to_browser_w)
            os.close(self.from_browser_r)


@pytest.fixture(scope="module")
def report_url(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("browser")
    html = str(folder / "report.html")
    run = str(folder / "run.json")
    with open(run, "w") as f:
        json.dump(stretched_fixture(), f)  # one scenario's cells long enough to be drawn over time
    result = CliRunner().invoke(main, ["report", run, "--html", html])
    assert result.exit_code == 0, result.output + result.stderr
    return "file://" + html


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Chromium (Debian package chromium) is not installed")
@pytest.mark.parametrize("width, mobile", [(1400, False), (390, True)])
def test_report_renders_without_errors_or_page_overflow(report_url, width, mobile):
    profile = tempfile.mkdtemp(prefix="serverzoo-chromium-")
    browser = DevTools(profile)
    try:
        browser.open_page(width, mobile)
        browser.load(report_url)
        layout = browser.evaluate(LAYOUT_CHECK)
        problems = browser.problems()
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    assert problems == []
    assert layout["viewportMeta"]
    # the device's width (less a desktop scroll bar), not a desktop layout shrunk to fit a phone
    assert width - 20 <= layout["width"] <= width, layout
    assert layout["pageWidth"] <= width and layout["outside"] == [], layout
    assert layout["unscrollable"] == 0, layout
