"""The asyncio model's loop helpers (servers/runtime/asyncio_support.py), on a real loop with fake connections."""

from __future__ import annotations

import asyncio
import socket

from serverzoo.servers.runtime.asyncio_support import LiveConnections, report_loop_error, until_stop_signal
from serverzoo.servers.runtime.context import ServerConfig, ServerContext


class Conn:
    """Closes on drain if idle, after `busy_for` seconds if busy; records an abort."""

    def __init__(self, live: LiveConnections, busy_for: float | None) -> None:
        self.live, self.busy_for, self.aborted = live, busy_for, False
        live.add(self)

    def drain(self) -> None:
        if self.busy_for is None:
            self.live.discard(self)  # as connection_lost would, once the transport closed
        else:
            asyncio.get_running_loop().call_later(self.busy_for, self.live.discard, self)

    def abort(self) -> None:
        self.aborted = True
        self.live.discard(self)


def drained(busy: list[float | None], grace: float) -> list[Conn]:
    async def main() -> list[Conn]:
        live: LiveConnections[Conn] = LiveConnections()
        conns = [Conn(live, b) for b in busy]
        await live.drain_all(grace)
        assert not live
        return conns

    return asyncio.run(main())


def test_idle_connections_close_and_drain_returns_at_once():
    assert [c.aborted for c in drained([None, None], grace=30.0)] == [False, False]


def test_busy_connections_finish_within_the_grace_period():
    assert [c.aborted for c in drained([None, 0.01, 0.02], grace=30.0)] == [False, False, False]


def test_what_outlasts_the_grace_period_is_aborted():
    assert [c.aborted for c in drained([None, 0.01, 30.0], grace=0.2)] == [False, False, True]


def test_os_errors_are_one_line_and_bugs_get_the_default_report(capsys):
    loop = asyncio.new_event_loop()
    seen = []
    loop.default_exception_handler = seen.append  # type: ignore[method-assign]
    try:
        report_loop_error(loop, {"message": "socket.send() raised exception.", "exception": ConnectionResetError()})
        assert capsys.readouterr().err.count("\n") == 1 and not seen
        bug = {"message": "Exception in callback", "exception": ZeroDivisionError()}
        report_loop_error(loop, bug)
        assert seen == [bug]
    finally:
        loop.close()


def test_a_signal_before_the_handlers_were_in_place_stops_at_once(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        ctx = ServerContext(ServerConfig("asyncio", str(tmp_path)), listener)
        ctx.stopping = True

        async def main() -> None:
            await asyncio.wait_for(until_stop_signal(asyncio.get_running_loop(), ctx), 5.0)

        asyncio.run(main())
    finally:
        listener.close()
