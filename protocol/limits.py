"""The numbers every model enforces the same way.

The core only carries these values; the I/O shells own the clocks that enforce the
timeouts, so the policy lives here once and the mechanism lives in each model.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD_BYTES = 8 * 1024  # request line + headers; larger answers 431
MAX_WORK_CPU = 100_000  # units of the work kernel in one request
MAX_WORK_WAIT_MS = 60_000  # longest wait the work endpoint accepts


@dataclass(frozen=True, slots=True)
class Limits:
    """Timeouts (seconds) and sizes a server applies to every connection."""

    max_head_bytes: int = MAX_HEAD_BYTES
    keepalive_timeout: float = 5.0  # idle between requests, waiting for the first byte
    header_timeout: float = 10.0  # from a request's first byte (or accept) to its full head
    write_timeout: float = 30.0  # no progress at all while sending a response
    grace: float = 5.0  # on SIGTERM, how long responses in flight may take to finish
    small_file_bytes: int = 64 * 1024  # files up to this size are cached and sent from memory
    cache_bytes: int = 64 * 1024 * 1024  # total memory for cached small files
