"""The datagram format shared by `udp serve` and `udp test`.

Every datagram starts with a 28-byte header, network byte order:

    magic  4s  b"SZu1"
    kind   B   DATA, PING, HELLO, REPORT (requests) or ANSWER (the responder's replies)
    pad    3x
    run    I   a random id per test run, so runs from one client never mix
    seq    Q   0, 1, 2 ... per run (PING and requests: matched by the answer)
    sent   Q   the sender's time.monotonic_ns() just before sendto

DATA is padded to the chosen datagram size. HELLO and REPORT carry a small JSON
object after the header, and so does the ANSWER to them. Anything that does not
start with the magic is "foreign": the responder counts it and, in echo modes,
returns it unchanged (RFC 862 style), so `nc -u` works against it too.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

MAGIC = b"SZu1"
HEADER = struct.Struct("!4sB3xIQQ")
HEADER_SIZE = HEADER.size  # 28
DATA, PING, HELLO, REPORT, ANSWER = b"DPHRA"
# IPv4 caps a UDP payload at 65535 - 20 (IP) - 8 (UDP)
MAX_DATAGRAM = 65507
# headers that ride on every datagram on the wire, per address family
IP_UDP_OVERHEAD = {4: 20 + 8, 6: 40 + 8}


@dataclass(frozen=True)
class Header:
    kind: int
    run: int
    seq: int
    sent_ns: int


def make(kind: int, run: int, seq: int, sent_ns: int, body: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, kind, run, seq, sent_ns) + body


def parse(data: bytes | memoryview) -> Header | None:
    """The header, or None for a foreign or truncated datagram."""
    if len(data) < HEADER_SIZE:
        return None
    magic, kind, run, seq, sent_ns = HEADER.unpack_from(data, 0)
    if magic != MAGIC or kind not in (DATA, PING, HELLO, REPORT, ANSWER):
        return None
    return Header(kind, run, seq, sent_ns)


def make_json(kind: int, run: int, seq: int, sent_ns: int, obj: dict) -> bytes:
    return make(kind, run, seq, sent_ns, json.dumps(obj, separators=(",", ":")).encode())


def body_json(data: bytes | memoryview) -> dict | None:
    """The JSON object after the header, or None if it is not one (a garbage body)."""
    try:
        obj = json.loads(bytes(data[HEADER_SIZE:]).decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
