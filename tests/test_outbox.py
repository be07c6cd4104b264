"""The event loops' shared send side (servers/runtime/outbox.py), as tables: plans in, steps out."""

from __future__ import annotations

import os

import pytest

from serverzoo.protocol import FileSlice, ResponsePlan, WorkOrder
from serverzoo.servers.runtime.io_sizes import READ_CHUNK
from serverzoo.servers.runtime.outbox import SENDFILE, STEP_NAMES, Outbox

SIZE = READ_CHUNK + 1000  # two read steps


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("outbox") / "f.bin")
    with open(path, "wb") as f:
        f.write((bytes(range(256)) * (SIZE // 256 + 1))[:SIZE])
    return path


def small(head: bytes = b"H", body: bytes = b"B", close: bool = False) -> ResponsePlan:
    return ResponsePlan(200, head, body, close=close)


def steps(box: Outbox, limit: int = 20) -> list[tuple]:
    """Run the outbox to its end as a loop would: every SEND written whole, every SENDFILE
    step sending all that is left."""
    out: list[tuple] = []
    while len(out) < limit:
        step = box.step()
        name = STEP_NAMES[step]
        if name == "SEND":
            out.append((name, len(box.data), box.more))
        elif name == "SENDFILE":
            f = box.data
            out.append((name, f.left))
            f.offset += f.left
            f.left = 0
        elif name == "WAIT":
            out.append((name, box.data))
        else:  # DONE, CLOSE, ABORT: the end of what there is to send
            out.append((name,))
            break
    return out


def file_plan(path: str, offset: int = 0, length: int = SIZE, close: bool = False) -> ResponsePlan:
    return ResponsePlan(200, b"HEAD", file=FileSlice(path, offset, length), close=close)


CASES = {
    "one small response": (lambda p: [small()], False, [("SEND", 2, False), ("DONE",)]),
    "a head without a body": (lambda p: [small(body=b"")], False, [("SEND", 1, False), ("DONE",)]),
    "a response that closes": (lambda p: [small(close=True)], False, [("SEND", 2, False), ("CLOSE",)]),
    "a file, read in chunks": (
        lambda p: [file_plan(p)],
        False,
        [("SEND", 4, True), ("SEND", READ_CHUNK, False), ("SEND", 1000, False), ("DONE",)],
    ),
    "a range of a file": (lambda p: [file_plan(p, 10, 20)], False, [("SEND", 4, True), ("SEND", 20, False), ("DONE",)]),
    "an empty slice": (lambda p: [file_plan(p, 0, 0)], False, [("SEND", 4, True), ("DONE",)]),
    "a file by sendfile": (lambda p: [file_plan(p)], True, [("SEND", 4, True), ("SENDFILE", SIZE), ("DONE",)]),
    "a file, then close": (
        lambda p: [file_plan(p, 0, 5, close=True)],
        False,
        [("SEND", 4, True), ("SEND", 5, False), ("CLOSE",)],
    ),
    "a work wait, then its response": (
        lambda p: [ResponsePlan(200, b"W", b"x", work=WorkOrder(0, 0.25))],
        False,
        [("WAIT", 0.25), ("SEND", 2, False), ("DONE",)],
    ),
    "work without a wait": (
        lambda p: [ResponsePlan(200, b"W", b"x", work=WorkOrder(1, 0))],
        False,
        [("SEND", 2, False), ("DONE",)],
    ),
    "a pipeline, in order": (
        lambda p: [
            small(),
            file_plan(p, 0, 3),
            ResponsePlan(200, b"W", work=WorkOrder(0, 0.5)),
            small(close=True),
            small(),
        ],
        False,
        [
            ("SEND", 2, False),
            ("SEND", 4, True),
            ("SEND", 3, False),
            ("WAIT", 0.5),
            ("SEND", 1, False),
            ("SEND", 2, False),
            ("CLOSE",),
        ],
    ),
    "a file gone since it was planned": (
        lambda p: [small(), file_plan(p + ".gone")],
        False,
        [("SEND", 2, False), ("ABORT",)],
    ),
    "a file shorter than planned": (
        lambda p: [file_plan(p, SIZE - 10, 50)],
        False,
        [("SEND", 4, True), ("SEND", 10, False), ("ABORT",)],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_steps(data_file, name):
    make, use_sendfile, expected = CASES[name]
    box = Outbox(use_sendfile)
    box.add(make(data_file))
    assert steps(box) == expected
    assert box.file is None  # every path closes the file it opened


def test_file_chunks_are_the_planned_bytes(data_file):
    with open(data_file, "rb") as f:
        whole = f.read()
    box = Outbox()
    box.add([file_plan(data_file, 7, SIZE - 7)])
    got = b""
    while STEP_NAMES[box.step()] == "SEND":
        got += box.data
    assert got == b"HEAD" + whole[7:SIZE]


def test_steps_taken_as_plans_arrive(data_file):
    box = Outbox()
    assert STEP_NAMES[box.step()] == "DONE" and not box.busy
    box.add([small()])
    assert box.busy
    assert STEP_NAMES[box.step()] == "SEND"
    assert STEP_NAMES[box.step()] == "DONE"
    box.add([small(body=b"")])
    assert steps(box) == [("SEND", 1, False), ("DONE",)]


def test_discard_closes_the_file_and_forgets_the_rest(data_file):
    box = Outbox(use_sendfile=True)
    box.add([file_plan(data_file), small(), small()])
    assert STEP_NAMES[box.step()] == "SEND"
    assert box.step() == SENDFILE
    fd = box.data.fd
    box.discard()
    with pytest.raises(OSError):
        os.fstat(fd)
    assert not box.busy and STEP_NAMES[box.step()] == "DONE"
    box.discard()  # twice is harmless
