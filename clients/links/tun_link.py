"""The owner's side of the userspace delay line: start the forwarder, give its TUN devices their
addresses, ask it for its figures, stop it; and the forwarding capacity `serverzoo net check`
measured on this machine (a small JSON file in the user's cache directory)."""

from __future__ import annotations

import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import threading
import time

from .delay_line import TUN_MTU
from .delay_schedule import LineSettings
from .shaping import LinkUnavailable

# the forwarder is the wire: it must not wait behind a busy server or client (delay_line._prioritize)
FIFO_PRIORITY = 10
FALLBACK_NICE = -10


class DelayLineProcess:
    """One forwarder process joining two namespaces (started by LinkedHosts)."""

    def __init__(
        self, server_ns: str, client_ns: str, settings: LineSettings, seed: int, cpus: list[int] | None = None
    ) -> None:
        self.server_ns, self.client_ns = server_ns, client_ns
        self.settings, self.seed, self.cpus = settings, seed, cpus
        self.proc: subprocess.Popen | None = None
        self.started: dict = {}
        self.final: dict | None = None
        self._err = None
        self._asking = threading.Lock()  # one question at a time on the pipe

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 15.0) -> None:
        argv = [
            sys.executable,
            "-m",
            "serverzoo.clients.links.delay_line",
            self.server_ns,
            self.client_ns,
            json.dumps(self.settings.to_dict()),
            "--seed",
            str(self.seed),
            "--fifo",
            str(FIFO_PRIORITY),
            "--nice",
            str(FALLBACK_NICE),
        ]
        if self.cpus:
            argv += ["--cpus", ",".join(map(str, self.cpus))]
        self._err = tempfile.TemporaryFile()
        # its own session: a Ctrl-C meant for the owner must not cut the link under it
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, bufsize=0, start_new_session=True
        )
        line = self._read_line(timeout)
        if not line.startswith(b"READY "):
            self.stop()
            self._err.seek(0)
            raise LinkUnavailable(
                "the delay line did not start: "
                + (self._err.read().decode(errors="replace").strip()[-300:] or repr(line))
            )
        self.started = json.loads(line[6:])

    def _read_line(self, timeout: float) -> bytes:
        line = b""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n") and (left := deadline - time.monotonic()) > 0:
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                line += chunk
        return line

    def _ask(self, order: bytes, timeout: float = 5.0) -> dict | None:
        with self._asking:
            if self.proc is None or self.proc.poll() is not None:
                return None
            try:
                self.proc.stdin.write(order)
            except (BrokenPipeError, ValueError):
                return None
            line = self._read_line(timeout)
        try:
            return json.loads(line)
        except ValueError:
            return None

    def stats(self) -> dict | None:
        """The forwarder's counters so far (per direction, lateness, CPU), or its last ones once stopped."""
        return self._ask(b"s") if self.final is None else self.final

    def stop(self) -> dict | None:
        """End the forwarder (its devices go with it); its final figures."""
        if self.proc is None:
            return self.final
        final = self._ask(b"q")
        self.final = final or self.final
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self._err is not None:
            self._err.close()
        self.proc = None
        return self.final

    def describe(self) -> dict:
        stats = self.stats()
        return {
            "how": "userspace delay line: a TUN device in each namespace, joined by one forwarder process",
            "pid": self.started.get("pid"),
            "seed": self.seed,
            "mtu": TUN_MTU,
            "settings": self.settings.to_dict(),
            "cpus": self.started.get("cpus"),
            "policy": self.started.get("policy"),
            "nice": self.started.get("nice"),
            "stats": stats,
            "warnings": warnings(self.settings, stats),
        }


def warnings(settings: LineSettings, stats: dict | None) -> list[str]:
    """What in the forwarder's figures says the link was not the profile (each a sentence)."""
    if not stats:
        return ["the delay line gave no figures (it stopped, or did not answer)"]
    out = []
    if stats["saturated_s"] >= 0.5 or stats["saturated_s"] > 0.1 * stats["wall_s"] > 0:
        out.append(
            f"the delay line never idled for {stats['saturated_s']:.1f} s of {stats['wall_s']:.1f} s: "
            "then it, not the profile, set the pace (and the delay)"
        )
    for leg in ("server_to_client", "client_to_server"):
        late, counts = stats[leg]["lateness"], stats[leg]
        if late["count"] and late["p99_us"] > max(1000, 0.05 * settings.delay_s * 1e6):
            out.append(
                f"{leg.replace('_', ' ')}: 1% of packets left over {late['p99_us'] / 1000:.1f} ms after "
                f"their time (max {late['max_us'] / 1000:.1f} ms): the forwarder waited for a CPU"
            )
        if counts["limit_drops"]:
            out.append(
                f"{leg.replace('_', ' ')}: {counts['limit_drops']} packets dropped because "
                f"{settings.limit_packets} were already queued"
            )
    return out


# -- what `serverzoo net check` measured on this machine -------------------------------------
def measurement_file() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "serverzoo", "delay-line.json")


def this_machine() -> dict:
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def load_measurement() -> dict | None:
    """The last measurement on this machine (same host, kernel, CPU count, Python), or None."""
    try:
        with open(measurement_file()) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("machine") == this_machine() else None


def save_measurement(doc: dict) -> str:
    path = measurement_file()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({**doc, "machine": this_machine()}, f, indent=1)
    os.replace(tmp, path)
    return path
