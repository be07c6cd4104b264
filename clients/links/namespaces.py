"""LinkedHosts: a server host and a client host, each a network namespace, joined by a veth pair,
or, for a profile with delay on a kernel without netem, by two TUN devices and the userspace
delay line (a forwarder process: delay_line.py).

Names carry the owner's pid and start time (szoo-PID-START-N-srv), so parallel runs never
collide and a leftover can be told from a live run's namespace. The namespaces go away on
normal exit, on exceptions and Ctrl-C (__exit__), on SIGTERM (turned into SystemExit while
the link is up), and if the owner is killed outright, a watchdog process removes them.
`serverzoo net cleanup` removes what is left of dead runs.

The two hosts talk over loopback-range addresses (127.18.0.1 and .2 on the veth or TUN; inside the
namespaces 127/8 is no longer all-local and route_localnet lets it cross the link). So a
client that forgets to enter the client namespace reaches this machine's own loopback, never
a network: traffic cannot leave the machine by mistake, as it could with a routable address
and the host's default route. The namespaces have no route anywhere else.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from . import shaping
from .delay_line import CLIENT_TUN, SERVER_TUN, TUN_MTU
from .profiles import LinkProfile, get_profile
from .shaping import LinkUnavailable, sh
from .tun_link import DelayLineProcess, load_measurement

PREFIX = "szoo"
NETNS_DIR = "/run/netns"
SERVER_ADDR, CLIENT_ADDR, PREFIX_LEN = "127.18.0.1", "127.18.0.2", 30
CLONE_NEWNET = 0x40000000
_NAME = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-(\d+)-(srv|cli|probe)$")
_counter = itertools.count(1)


def require_support() -> None:
    """LinkUnavailable (one line) unless we are root and iproute2 is installed."""
    if os.geteuid() != 0:
        raise LinkUnavailable(f"emulated links need root (network namespaces); running as uid {os.geteuid()}")
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2")):
        if shutil.which(tool) is None:
            raise LinkUnavailable(f"emulated links need `{tool}` (Debian package {package}), which is not installed")


# -- naming and leftovers ------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def new_names() -> tuple[str, str]:
    pid = os.getpid()
    base = f"{PREFIX}-{pid}-{_start_time(pid)}-{next(_counter)}"
    return f"{base}-srv", f"{base}-cli"


def list_namespaces() -> list[str]:
    """Our namespaces that exist now (any owner)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if _NAME.match(n))
    except FileNotFoundError:
        return []


def owner_alive(name: str) -> bool:
    m = _NAME.match(name)
    return bool(m) and _start_time(int(m.group(1))) == int(m.group(2))


def namespace_pids(name: str) -> list[int]:
    """The processes inside namespace `name` (what `ip netns pids` lists), read from /proc directly:
    no helper process whose timeout, on a loaded machine, would leave a process behind unseen."""
    try:
        target = os.stat(os.path.join(NETNS_DIR, name))
    except OSError:
        return []
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry))
    return pids


def end_processes(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds, for each pid until all are gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
            time.sleep(0.02)
        if not pids:
            break


def still_running(started: list[tuple[int, int | None]]) -> list[int]:
    """Of (pid, start time) pairs, the pids that are still those very processes (not reused)."""
    return [pid for pid, start in started if start is not None and _start_time(pid) == start]


def remove_namespace(name: str, grace: float = 2.0) -> None:
    """End the processes inside one of our namespaces (ours: we started them there), then delete it."""
    end_processes(namespace_pids(name), grace)
    if os.path.exists(os.path.join(NETNS_DIR, name)):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)


def cleanup_leftovers(everything: bool = False) -> list[str]:
    """Remove namespaces whose owning process is gone (or all of ours, with everything=True)."""
    removed = []
    for name in list_namespaces():
        if everything or not owner_alive(name):
            remove_namespace(name)
            removed.append(name)
    return removed


# -- entering a namespace from Python -------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered(name: str) -> Iterator[None]:
    """This thread (and threads it starts) makes its new sockets inside namespace `name`.
    A socket keeps its namespace for life, so it still works after the block."""
    with open("/proc/thread-self/ns/net") as home, open(os.path.join(NETNS_DIR, name)) as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


# -- the pair ------------------------------------------------------------------------------
class LinkedHosts:
    """Two namespaces ("server", "client") joined by a link shaped by a profile.

    delay_line: None chooses (a veth shaped by the kernel; the userspace delay line only for delay
    without netem), True always builds the delay line, False never does. delay_line_cpus pins the
    forwarder (default: any CPU); seed makes its random drops and jitter repeatable (default: drawn
    and recorded in describe())."""

    def __init__(
        self,
        profile: LinkProfile | str,
        links_file: str | None = None,
        *,
        delay_line: bool | None = None,
        delay_line_cpus: list[int] | None = None,
        seed: int | None = None,
    ) -> None:
        self.profile = profile if isinstance(profile, LinkProfile) else get_profile(profile, links_file)
        self.server_ns, self.client_ns = new_names()
        # each end is created inside its own namespace, so these names never meet another run's
        self.server_dev, self.client_dev = "veth-srv", "veth-cli"
        self.server_addr, self.client_addr = SERVER_ADDR, CLIENT_ADDR
        self.support: shaping.KernelSupport | None = None
        self.applied: list[str] = []
        self.line: DelayLineProcess | None = None
        self._delay_line, self._line_cpus = delay_line, delay_line_cpus
        self._seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
        self._procs: list[subprocess.Popen] = []
        self._watchdog: subprocess.Popen | None = None
        self._watchdog_pipe: int | None = None
        self._old_sigterm = None
        self._up = False

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> LinkedHosts:
        require_support()
        cleanup_leftovers()  # namespaces of earlier runs that died: never a live run's
        try:
            self._start_watchdog()
            self._create_namespaces()
            self.support = shaping.probe(self.server_ns)
            p = shaping.plan(
                self.profile,
                self.support,
                [
                    (self.server_ns, self.server_dev, self.client_ns, self.client_dev),
                    (self.client_ns, self.client_dev, self.server_ns, self.server_dev),
                ],
                delay_line=self._delay_line,
                measured=load_measurement(),
            )
            if p.missing:
                raise LinkUnavailable(f"link {self.profile.name!r} cannot be built here: " + "; ".join(p.missing))
            if p.line is not None:
                self._join_by_delay_line(p.line)
            else:
                self._join_by_veth()
                shaping.apply(p)
            self.applied = p.applied
            self._trap_sigterm()
            self._up = True
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_namespaces(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            sh(["ip", "netns", "add", ns])
            # lo keeps only 127.0.0.1, so the rest of 127/8 may be routed over the link
            sh(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
            sh(["ip", "-n", ns, "addr", "del", "127.0.0.1/8", "dev", "lo"])
            sh(["ip", "-n", ns, "addr", "add", "127.0.0.1/32", "dev", "lo"])
            self._write_sysctl(ns, "net/ipv4/conf/all/route_localnet", "1")

    @staticmethod
    def _write_sysctl(ns: str, key: str, value: str) -> None:
        with entered(ns), open(f"/proc/sys/{key}", "w") as f:
            f.write(value)  # /proc/sys/net is the opening thread's namespace's

    def _join_by_veth(self) -> None:
        # both ends are created directly inside their namespaces: no name ever appears on the host
        sh(
            [
                "ip",
                "link",
                "add",
                self.server_dev,
                "netns",
                self.server_ns,
                "type",
                "veth",
                "peer",
                "name",
                self.client_dev,
                "netns",
                self.client_ns,
            ]
        )
        self._address()

    def _join_by_delay_line(self, settings) -> None:
        self.server_dev, self.client_dev = SERVER_TUN, CLIENT_TUN
        self.line = DelayLineProcess(self.server_ns, self.client_ns, settings, self._seed, self._line_cpus)
        self.line.start()  # it creates both devices; they live as long as it does
        for ns, dev in ((self.server_ns, self.server_dev), (self.client_ns, self.client_dev)):
            sh(["ip", "-n", ns, "link", "set", "dev", dev, "mtu", str(TUN_MTU)])
            if os.path.exists("/proc/sys/net/ipv6"):  # IPv6 would only add router solicitations to its counts
                self._write_sysctl(ns, f"net/ipv6/conf/{dev}/disable_ipv6", "1")
        self._address()

    def _address(self) -> None:
        for ns, dev, addr in (
            (self.server_ns, self.server_dev, SERVER_ADDR),
            (self.client_ns, self.client_dev, CLIENT_ADDR),
        ):
            sh(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev])
            sh(["ip", "-n", ns, "link", "set", "dev", dev, "up"])

    def close(self) -> None:
        """Stop our processes and the delay line, delete both namespaces (and with them the veth,
        qdiscs and rules)."""
        for proc in self._procs:
            _stop(proc)
        self._procs.clear()
        if self.line is not None:
            self.line.stop()  # keeps its final figures for describe()
        for name in (self.server_ns, self.client_ns):
            remove_namespace(name)
        self._stop_watchdog()
        if self._old_sigterm is not None:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        self._up = False

    def _trap_sigterm(self) -> None:
        # SIGTERM's default action would skip __exit__ and leave the namespaces behind
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_sigterm = signal.SIG_DFL
            signal.signal(signal.SIGTERM, _raise_exit)

    def _start_watchdog(self) -> None:
        read_end, write_end = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "serverzoo.clients.links.watchdog", self.server_ns, self.client_ns],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # Ctrl-C in a terminal must not reach it
        finally:
            os.close(read_end)
        self._watchdog_pipe = write_end

    def _stop_watchdog(self) -> None:
        if self._watchdog_pipe is not None:
            os.close(self._watchdog_pipe)  # EOF: the watchdog finds nothing left and exits
            self._watchdog_pipe = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait(5)
            self._watchdog = None

    # -- running things on either host --------------------------------------------------------
    def _adopt(self, proc: subprocess.Popen) -> subprocess.Popen:
        """Keep proc to stop at close(), and tell the watchdog its pid and start time.

        The namespace scan alone can miss it: `ip netns exec` enters the namespace a moment
        after it starts, so an owner killed in that moment would leave a process that the
        scan never sees, living on in a namespace that no longer has a name."""
        self._procs.append(proc)
        if self._watchdog_pipe is not None:
            try:
                os.write(self._watchdog_pipe, f"{proc.pid} {_start_time(proc.pid)}\n".encode())
            except BrokenPipeError:
                pass  # the watchdog is gone: close() still stops proc, by pid like everything here
        return proc

    def _prefix(self, side: str) -> list[str]:
        if not self._up:
            raise RuntimeError("the link is not up (use LinkedHosts as a context manager)")
        if side not in ("server", "client"):
            raise ValueError("side is 'server' or 'client'")
        return ["ip", "netns", "exec", self.server_ns if side == "server" else self.client_ns]

    def command(self, side: str, argv: list[str]) -> list[str]:
        """argv wrapped to run on one host (`ip netns exec NS ...`; it execs, so the pid is argv's)."""
        return self._prefix(side) + list(argv)

    def run_in_server(self, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start argv on the server host. The link stops it (SIGTERM, then SIGKILL) when it closes."""
        return self._adopt(subprocess.Popen(self.command("server", argv), **popen_kwargs))

    def run_in_client(self, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start argv on the client host. The link stops it when it closes."""
        return self._adopt(subprocess.Popen(self.command("client", argv), **popen_kwargs))

    def start_ready(self, argv: list[str], side: str = "server", timeout: float = 20.0) -> tuple[subprocess.Popen, str]:
        """Start a program that prints `READY URL` (serverzoo's servers do) and wait for that line."""
        err = tempfile.TemporaryFile()
        proc = self._adopt(
            subprocess.Popen(self.command(side, argv), stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        )
        line = b""
        deadline = time.monotonic() + timeout
        fd = proc.stdout.fileno()
        while not line.endswith(b"\n") and (left := deadline - time.monotonic()) > 0 and proc.poll() is None:
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1)
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"READY "):
            _stop(proc)
            err.seek(0)
            raise LinkUnavailable(
                f"{' '.join(argv)} on the {side} host did not print READY: "
                f"{err.read().decode(errors='replace').strip()[-300:] or line!r}"
            )
        return proc, line.split()[1].decode()

    def server_process(self, model: str, root: str, *args: str, cpus=None, start_timeout: float = 20.0):
        """A servers.launch.ServerProcess (not started) that runs on the server host, on server_addr."""
        from ...servers.launch import ServerProcess

        server = ServerProcess(model, root, *args, host=self.server_addr, cpus=cpus, start_timeout=start_timeout)
        server.argv = self.command("server", server.argv)
        return server

    def client_namespace(self) -> contextmanager:
        """`with link.client_namespace():` sockets this thread creates belong to the client host."""
        self._prefix("client")
        return entered(self.client_ns)

    def server_namespace(self) -> contextmanager:
        self._prefix("server")
        return entered(self.server_ns)

    def describe(self) -> dict:
        """For JSON results: the profile, what was applied, and how (with the delay line: its
        settings, where it runs, and its figures so far, or its final ones after close())."""
        return {
            "profile": self.profile.to_dict(),
            "applied": self.applied,
            "server_addr": self.server_addr,
            "client_addr": self.client_addr,
            "kernel": self.support.to_dict() if self.support else None,
            "via": "delay-line" if self.line else "veth",
            "delay_line": self.line.describe() if self.line else None,
        }


def _raise_exit(_sig, _frame) -> None:
    raise SystemExit(128 + signal.SIGTERM)


def _stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()
