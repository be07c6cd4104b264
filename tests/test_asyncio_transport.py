"""The asyncio model's guard around the stdlib loop's private transport factory (servers/runtime/asyncio_transport.py)."""

from __future__ import annotations

import asyncio

import pytest

from serverzoo.servers.runtime.asyncio_transport import takes_sock_and_protocol, transport_maker


def sock_protocol(sock, protocol, waiter=None, extra=None, server=None):
    pass


def swapped(protocol, sock):
    pass


def sock_only(sock):
    pass


SHAPES = {
    "(sock, protocol, ...)": (sock_protocol, True),
    "(protocol, sock)": (swapped, False),
    "(sock)": (sock_only, False),
    "not callable": (None, False),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_shape(name):
    method, expected = SHAPES[name]
    assert takes_sock_and_protocol(method) is expected


def test_this_pythons_loop_still_has_the_factory(capsys):
    loop = asyncio.new_event_loop()
    try:
        assert takes_sock_and_protocol(loop._make_socket_transport)
        assert transport_maker(loop, stdlib=True) == loop._make_socket_transport
        assert capsys.readouterr().err == ""
    finally:
        loop.close()


class ChangedLoop(asyncio.SelectorEventLoop):
    def _make_socket_transport(self, protocol, sock):  # a Python upgrade reordered it
        raise AssertionError("must not be called")


def test_a_changed_factory_falls_back_to_connect_accepted_socket_and_says_so(capsys):
    loop = ChangedLoop()
    try:
        make = transport_maker(loop, stdlib=True)
        assert make != loop._make_socket_transport
        assert "using connect_accepted_socket" in capsys.readouterr().err
        assert transport_maker(loop, stdlib=False) != loop._make_socket_transport
        assert capsys.readouterr().err == ""  # not the stdlib loop (uvloop): the usual way, nothing to say
    finally:
        loop.close()
