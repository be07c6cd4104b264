"""The userspace delay line: a forwarder process between two TUN devices, for kernels without netem.

    python -m serverzoo.clients.links.delay_line SERVER_NS CLIENT_NS SETTINGS_JSON [--seed N] ...

It creates a TUN device in each namespace (tun-srv, tun-cli: IFF_TUN | IFF_NO_PI, so each read
is one IP packet), prints `READY {json}` and moves packets both ways, each direction through a
delay_schedule.Direction (delay, jitter, rate, queue, loss): the whole profile is applied here.
The owner (tun_link.DelayLineProcess) then gives the devices their addresses. The devices are
not persistent: when this process ends they vanish, and the link with them, so no packet can
ever cross without the delay.

Timers: select() with a timeout to the next departure (microsecond resolution, where epoll and
poll round up to milliseconds) and a timer slack of 1 us (the default 50 us would add to every
wake-up); SCHED_FIFO where allowed (see _prioritize). Each write is timed against its departure:
the `lateness` in the stats.

Lifetime: stdin is a pipe from the owner. A byte `s` asks for the stats (one JSON line on
stdout), `q` asks for them and ends the process, and EOF (the owner is gone, however it went)
ends it too. This is per process, where PR_SET_PDEATHSIG fires when the thread that started
us ends. After opening the devices the process stays in the server namespace, so anything
that removes the namespace (LinkedHosts.close, the watchdog, `serverzoo net cleanup`) finds
and ends it as it does every process inside.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import random
import select
import signal
import struct
import sys
import time

from .delay_schedule import Direction, Lateness, LineSettings

SERVER_TUN, CLIENT_TUN = "tun-srv", "tun-cli"
TUN_MTU = 1500  # the owner sets it; 1500 as on an Ethernet path
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
PR_SET_TIMERSLACK = 29
READ_SIZE = 65536  # more than any MTU: a packet is never cut short
BATCH = 64  # packets read from one device before the departures are looked at again
WINDOW_S = 0.1  # busy accounting: windows with under 5% idle count as saturated
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _libc_call(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter_namespace(name: str) -> None:
    """Move this (single-threaded) process into network namespace `name`."""
    with open(os.path.join(NETNS_DIR, name)) as ns:
        _libc_call(_libc.setns(ns.fileno(), CLONE_NEWNET))


def open_tun(name: str) -> int:
    """A new TUN device `name` in the current namespace: its fd (non-blocking)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Leg:
    """One direction: packets read from in_fd leave by out_fd, scheduled by `direction`."""

    def __init__(self, name: str, in_fd: int, out_fd: int, direction: Direction) -> None:
        self.name, self.in_fd, self.out_fd, self.direction = name, in_fd, out_fd, direction
        self.lateness = Lateness()
        self.write_errors = 0

    def send_due(self, clock) -> None:
        d, lateness, out_fd, write = self.direction, self.lateness, self.out_fd, os.write
        for departure, packet in d.due(clock()):
            # timed as it is handed over: the write then runs the receiving host's stack (as the
            # kernel's own delivery would, after netem), which is not delay
            lateness.record(clock() - departure)
            try:
                write(out_fd, packet)
            except OSError:  # the device is down (not yet up, or going away): the packet is lost
                self.write_errors += 1
                continue
            d.sent += 1
            d.sent_bytes += len(packet)

    def receive(self, now: float) -> None:
        offer, fd, read = self.direction.offer, self.in_fd, os.read
        for _ in range(BATCH):
            try:
                packet = read(fd, READ_SIZE)
            except BlockingIOError:
                return
            offer(now, packet, len(packet))

    def stats(self) -> dict:
        return {**self.direction.counters(), "write_errors": self.write_errors, "lateness": self.lateness.summary()}


class Usage:
    """Wall time spent working (not waiting in select), and in windows with almost no idle."""

    def __init__(self, now: float) -> None:
        self.started = self.window_start = now
        self.idle_s = self.window_idle = self.saturated_s = 0.0

    def waited(self, start: float, end: float) -> None:
        self.idle_s += end - start
        self.window_idle += end - start
        length = end - self.window_start
        if length >= WINDOW_S:
            if self.window_idle < 0.05 * length:
                self.saturated_s += length
            self.window_start, self.window_idle = end, 0.0

    def stats(self, now: float) -> dict:
        wall = now - self.started
        return {
            "wall_s": round(wall, 3),
            "busy_s": round(wall - self.idle_s, 3),
            "saturated_s": round(self.saturated_s, 3),
        }


def process_stats() -> dict:
    """Where and how this process ran: CPUs allowed, the CPU it was last on, priority, CPU time."""
    times = os.times()
    try:
        with open("/proc/self/stat") as f:
            last_cpu = int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        last_cpu = None
    policy = os.sched_getscheduler(0)
    return {
        "pid": os.getpid(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "last_cpu": last_cpu,
        "policy": f"SCHED_FIFO {os.sched_getparam(0).sched_priority}" if policy == os.SCHED_FIFO else "SCHED_OTHER",
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "cpu_s": round(times.user + times.system, 3),
    }


def forward(server_fd: int, client_fd: int, settings: LineSettings, seed: int, control: int = 0) -> None:
    """Move packets both ways until the control pipe says `q` or reaches EOF."""
    clock = time.monotonic
    legs = (
        Leg("server_to_client", server_fd, client_fd, Direction(settings, random.Random(seed * 2 + 1))),
        Leg("client_to_server", client_fd, server_fd, Direction(settings, random.Random(seed * 2 + 2))),
    )
    by_fd = {leg.in_fd: leg for leg in legs}
    read_fds = [control, server_fd, client_fd]
    usage = Usage(clock())

    def report() -> bool:
        doc = {**{leg.name: leg.stats() for leg in legs}, **usage.stats(clock()), **process_stats()}
        try:
            sys.stdout.write(json.dumps(doc) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    while True:
        timeout = None
        for leg in legs:
            if leg.direction.queue:
                leg.send_due(clock)
                nxt = leg.direction.next_departure()
                if nxt is not None:
                    wait = max(0.0, nxt - clock())
                    timeout = wait if timeout is None else min(timeout, wait)
        start = clock()
        ready = select.select(read_fds, [], [], timeout)[0]
        now = clock()
        usage.waited(start, now)
        for fd in ready:
            if fd != control:
                by_fd[fd].receive(now)
                continue
            orders = os.read(control, 64)
            if not orders:
                return  # EOF: the owner is gone
            for order in orders:
                if order in b"sq" and not report():
                    return  # nobody reads the answers any more
                if order == ord("q"):
                    return


def _prioritize(fifo: int, nice: int) -> None:
    """Real-time priority, as netem's timers run in the kernel ahead of any process: a busy server or
    client must not hold a departure back by a scheduler slice (milliseconds). The kernel's RT
    throttling still leaves 5% of a CPU to the rest. Where that is not allowed: a low nice value."""
    if fifo:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(fifo))
            return
        except OSError:
            pass
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serverzoo.clients.links.delay_line",
        description="Forward packets between two TUN devices with a delay.",
    )
    parser.add_argument("server_ns")
    parser.add_argument("client_ns")
    parser.add_argument("settings", help="JSON of delay_schedule.LineSettings")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fifo", type=int, default=0, help="SCHED_FIFO priority (0: none)")
    parser.add_argument("--nice", type=int, default=0, help="nice value if SCHED_FIFO is not set")
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to run on (default: any)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner's Ctrl-C is the owner's to handle
    try:
        settings = LineSettings(**json.loads(args.settings))
        _libc_call(_libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(1000), 0, 0, 0))
        if args.cpus:
            os.sched_setaffinity(0, [int(c) for c in args.cpus.split(",")])
        _prioritize(args.fifo, args.nice)
        enter_namespace(args.client_ns)
        client_fd = open_tun(CLIENT_TUN)
        enter_namespace(args.server_ns)  # and stay: whoever removes the namespace finds this process
        server_fd = open_tun(SERVER_TUN)
    except (OSError, TypeError, ValueError) as exc:
        print(f"delay line: cannot start: {exc}", file=sys.stderr)
        return 1
    print("READY " + json.dumps(process_stats()), flush=True)
    forward(server_fd, client_fd, settings, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
