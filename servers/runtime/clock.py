"""The Date header, rendered once a second (the core takes it as an argument)."""

from __future__ import annotations

import email.utils
import time

_last_second = -1
_last_value = b""


def http_date() -> bytes:
    """IMF-fixdate for now, e.g. b"Sun, 22 Nov 2026 01:02:03 GMT"; cheap to call per request."""
    global _last_second, _last_value
    now = int(time.time())
    if now != _last_second:
        # two threads may both render the same second; each writes an equal value
        _last_value = email.utils.formatdate(now, usegmt=True).encode("ascii")
        _last_second = now
    return _last_value
