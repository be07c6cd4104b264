"""The load generator's response reader as tables: bytes in, heads, bodies and ends out. No sockets.

Every row is fed whole, split in two at every point, and one byte at a time, and must frame
the same; a reused receive buffer (memoryviews) must frame the same as bytes.
"""

from __future__ import annotations

import pytest

from serverzoo.clients.loadgen.response_reader import END, NEED_DATA, FramingError, Head, ResponseReader, says_close

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def frame(chunks, eof: bool = False, as_views: bool = False) -> list:
    """Feed the chunks (then the end of the stream); the events, body pieces joined, an error last."""
    reader = ResponseReader()
    out: list = []

    def drain() -> None:
        while (event := reader.next_event()) is not NEED_DATA:
            if event is END:
                out.append("end")
            elif type(event) is Head:
                out.append(("head", event.status, event.length, event.chunked, event.closes))
            else:
                piece = bytes(event)
                if out and type(out[-1]) is bytes:
                    out[-1] += piece
                else:
                    out.append(piece)

    try:
        for chunk in chunks:
            if as_views:
                buffer = bytearray(chunk)  # overwritten after each feed, as a reused receive buffer is
                reader.feed(memoryview(buffer))
                drain()
                buffer[:] = b"\xff" * len(buffer)
            else:
                reader.feed(chunk)
                drain()
        if eof:
            reader.feed_eof()
            drain()
    except FramingError as exc:
        out.append(("error", exc.kind))
    return out


RESPONSES = [  # (bytes, the end of the stream follows, events)
    (OK_HEAD + b"hello", False, [("head", 200, 5, False, False), b"hello", "end"]),
    (
        OK_HEAD + b"hello" + OK_HEAD + b"world",
        False,
        [("head", 200, 5, False, False), b"hello", "end", ("head", 200, 5, False, False), b"world", "end"],
    ),
    (
        b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH:  3 \r\nConnection: Keep-Alive, Close\r\n\r\nabc",
        False,
        [("head", 200, 3, False, True), b"abc", "end"],
    ),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False, [("head", 404, 0, False, False), "end"]),
    (b"HTTP/1.1 204 No Content\r\n\r\n", False, [("head", 204, 0, False, False), "end"]),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", False, [("head", 304, 0, False, False), "end"]),
    (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_HEAD + b"hello",
        False,
        [("head", 200, 5, False, False), b"hello", "end"],
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\n"
        b"X-Trailer: y\r\n\r\n",
        False,
        [("head", 200, None, True, False), b"abc0123456789", "end"],
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n0\r\n\r\n" + OK_HEAD + b"hello",
        False,
        [("head", 200, None, True, False), "end", ("head", 200, 5, False, False), b"hello", "end"],
    ),
    (b"HTTP/1.0 200 OK\r\n\r\nuntil the close", True, [("head", 200, None, False, True), b"until the close", "end"]),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nab", False, [("head", 200, 2, False, True), b"ab", "end"]),
    (
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nab",
        False,
        [("head", 200, 2, False, False), b"ab", "end"],
    ),
    (OK_HEAD + b"hel", False, [("head", 200, 5, False, False), b"hel"]),  # waits for the rest
    (b"HTTP/1.1 200 OK\r\nContent-Le", False, []),
    # errors
    (b"", True, [("error", "closed")]),
    (b"HTTP/1.1 200 OK\r\n", True, [("error", "bad_response")]),
    (OK_HEAD + b"hel", True, [("head", 200, 5, False, False), b"hel", ("error", "short_body")]),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        True,
        [("head", 200, None, True, False), b"ab", ("error", "short_body")],
    ),
    (b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n", False, [("error", "bad_response")]),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", False, [("error", "bad_response")]),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", False, [("error", "bad_response")]),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        False,
        [("head", 200, None, True, False), ("error", "bad_response")],
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
        False,
        [("head", 200, None, True, False), b"ab", ("error", "bad_response")],
    ),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", False, [("error", "bad_response")]),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", False, [("error", "bad_response")]),
    (b"HTTP/1.1 2x0 OK\r\n\r\n", False, [("error", "bad_response")]),
]
IDS = [repr(r[0][:36]) + (" eof" if r[1] else "") for r in RESPONSES]


@pytest.mark.parametrize("data, eof, events", RESPONSES, ids=IDS)
def test_response_table(data: bytes, eof: bool, events: list) -> None:
    assert frame([data], eof) == events


@pytest.mark.parametrize("data, eof, events", RESPONSES, ids=IDS)
def test_any_split_frames_the_same(data: bytes, eof: bool, events: list) -> None:
    for cut in range(1, len(data)):
        assert frame([data[:cut], data[cut:]], eof) == events, cut
    assert frame([data[i : i + 1] for i in range(len(data))], eof) == events


@pytest.mark.parametrize("data, eof, events", RESPONSES, ids=IDS)
def test_a_reused_buffer_frames_the_same(data: bytes, eof: bool, events: list) -> None:
    for cut in range(1, len(data), 3):
        assert frame([data[:cut], data[cut:]], eof, as_views=True) == events, cut


def test_a_head_larger_than_the_limit_is_refused() -> None:
    assert frame([b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000]) == [("error", "bad_response")]


def test_whole_body_comes_out_as_the_bytes_fed() -> None:
    """No copy for a read that is exactly one body."""
    reader = ResponseReader()
    reader.feed(OK_HEAD)
    assert type(reader.next_event()) is Head and reader.next_event() is NEED_DATA and reader.in_body
    body = b"hello"
    reader.feed(body)
    assert reader.next_event() is body and reader.next_event() is END and reader.idle


WHOLE = [  # (bytes, where whole_response says the response ends, or -1 for the general path)
    (OK_HEAD + b"hello", len(OK_HEAD) + 5),
    (OK_HEAD + b"hello" + OK_HEAD, len(OK_HEAD) + 5),  # pipelined leftovers follow
    (OK_HEAD + b"hell", -1),  # not all here
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", -1),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhello", -1),  # not the expected status
    (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", -1),  # the server closes after it
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", -1),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello", -1),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nhello", -1),
]


@pytest.mark.parametrize("data, stop", WHOLE)
def test_whole_response_fast_path(data: bytes, stop: int) -> None:
    reader = ResponseReader()
    assert reader.whole_response(data) == stop
    if stop >= 0:
        assert reader.known_length == 5 and data[stop - 5 : stop] == b"hello"
        assert reader.whole_response(data) == stop  # the second time from the remembered head
    assert reader.idle  # it never consumes: the general path starts from scratch


def test_whole_response_only_between_responses() -> None:
    reader = ResponseReader()
    reader.feed(OK_HEAD[:10])
    assert reader.next_event() is NEED_DATA
    assert reader.whole_response(OK_HEAD + b"hello") == -1


@pytest.mark.parametrize(
    "head, closes",
    [
        (b"http/1.1 200 ok\r\nconnection: close\r\n", True),
        (b"http/1.1 200 ok\r\nconnection: keep-alive, close\r\n", True),
        (b"http/1.1 200 ok\r\nconnection: keep-alive\r\nx-close: close\r\n", False),
        (b"http/1.1 200 ok\r\nconnection: closed\r\n", False),
    ],
)
def test_says_close(head: bytes, closes: bool) -> None:
    assert says_close(head) is closes


def test_the_fast_path_is_open_again_after_a_response_in_pieces() -> None:
    reader = ResponseReader()
    reader.feed(OK_HEAD + b"he")
    assert type(reader.next_event()) is Head and reader.next_event() == b"he"
    reader.feed(b"llo")
    assert reader.next_event() == b"llo" and reader.next_event() is END
    assert reader.whole_response(OK_HEAD + b"hello") == len(OK_HEAD) + 5


def test_the_middle_of_a_body_can_be_taken_without_events() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert type(reader.next_event()) is Head and reader.next_event() is NEED_DATA
    assert reader.take_body(4) and reader.take_body(5)
    assert not reader.take_body(1)  # the last byte ends the body: that goes through the events
    reader.feed(b"x" + OK_HEAD + b"hello")
    events = [reader.next_event() for _ in range(5)]
    assert events[:2] == [b"x", END] and type(events[2]) is Head and events[3:] == [b"hello", END]
    assert not reader.take_body(1)  # between responses


def test_a_close_delimited_body_is_never_taken() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.0 200 OK\r\n\r\n")
    assert type(reader.next_event()) is Head and reader.next_event() is NEED_DATA
    assert not reader.take_body(1)


@pytest.mark.parametrize(
    "data, owed",
    [
        (OK_HEAD + b"hello", 5),  # a Content-Length body: what is still to come of it
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 0),  # no length
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the close", 0),  # no length
        (b"HTTP/1.1 204 No Content\r\n\r\n", 0),  # no body
    ],
)
def test_body_left_is_what_is_owed_of_a_content_length_body(data: bytes, owed: int) -> None:
    """Split at every point: after the first part is framed, body_left is the Content-Length body's bytes
    not yet fed (0 outside such a body, or while bytes are buffered), and 0 once the response ended."""
    head_end = data.index(b"\r\n\r\n") + 4
    for cut in range(1, len(data) + 1):
        reader = ResponseReader()
        reader.feed(data[:cut])
        while reader.next_event() is not NEED_DATA:
            pass
        in_body = head_end <= cut < head_end + owed
        assert reader.body_left == (head_end + owed - cut if in_body else 0), cut
        reader.feed(data[cut:])
        while reader.next_event() is not NEED_DATA:
            pass
        assert reader.body_left == 0
