"""Single byte ranges (RFC 9110 section 14): bytes=a-b, a-, -n."""

from __future__ import annotations

WHOLE = None  # answer with the whole representation (no Range, a bad one, or several)


class Unsatisfiable(Exception):
    """No byte of the representation is inside the range: answer 416."""


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """Return (offset, length) for one satisfiable range, WHOLE, or raise Unsatisfiable.

    A header that does not parse is ignored (RFC 9110: a server MAY ignore Range),
    and several ranges are answered with the whole file, as the protocol allows.
    """
    if header is None:
        return WHOLE
    unit, sep, spec = header.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return WHOLE
    spec = spec.strip()
    if b"," in spec:
        return WHOLE
    first, dash, last = spec.partition(b"-")
    if not dash:
        return WHOLE
    first, last = first.strip(), last.strip()
    if (first and not first.isdigit()) or (last and not last.isdigit()):
        return WHOLE
    if not first:  # suffix: the last n bytes
        if not last:
            return WHOLE
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        n = min(n, size)
        return size - n, n
    start = int(first)
    if last and int(last) < start:
        return WHOLE  # syntactically invalid: ignored
    if start >= size:
        raise Unsatisfiable
    end = min(int(last), size - 1) if last else size - 1
    return start, end - start + 1
