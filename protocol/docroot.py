"""Mapping request targets to files under the served root, safely and quickly.

A target is percent-decoded once, split on "/", and its dot-segments resolved; a
target that climbs above the root, or holds NUL or a backslash, is a 400. The result
is joined under the root and resolved with realpath, so a symlink that leads outside
the root is a 404: no byte from outside is ever served. Only regular files and
directories are served (never a FIFO or a device, which could block a worker).

Files are cached with their headers (small ones with their bytes). A hit is
revalidated with one stat() of the resolved path (inode, size, mtime, ctime) at most
once per tick, a value the caller passes in (the models pass the Date header, so at
most once a second, like nginx's open_file_cache_valid); a changed file is resolved
again from scratch, so an edited or replaced file is never served stale for longer
than a tick, and a symlink swapped to point outside the root is caught on the next.
"""

from __future__ import annotations

import email.utils
import errno
import mimetypes
import os
import stat
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

RESERVED = "_"  # first path segment reserved for endpoints such as /_/work; no file shadows it


_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOMEM}


def _unavailable_or(status: int, message: str, exc: OSError) -> TargetError:
    """Out of descriptors or memory is the server's trouble (503), not a missing file."""
    if exc.errno in _OUT_OF_RESOURCES:
        return TargetError(503, f"server out of resources ({exc.strerror}); try again")
    return TargetError(status, message)


class TargetError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def normalise(path: bytes) -> tuple[str, ...]:
    """Turn an origin-form path (query removed) into safe segments under the root."""
    if not path.startswith(b"/"):
        raise TargetError(400, "target must be an absolute path")
    if b"\\" in path:
        raise TargetError(400, "backslash in target")
    decoded = unquote_to_bytes(path)
    if b"\x00" in decoded or b"\\" in decoded:
        raise TargetError(400, "NUL or backslash in decoded target")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise TargetError(400, "target is not valid UTF-8") from None
    segments: list[str] = []
    for seg in text.split("/"):
        if seg in {"", "."}:
            continue
        if seg == "..":
            if not segments:
                raise TargetError(400, "target climbs above the root")
            segments.pop()
        else:
            segments.append(seg)
    return tuple(segments)


def _signature(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(slots=True)
class FileEntry:
    """A regular file with the header lines that describe it."""

    real: str
    signature: tuple[int, int, int, int, int]
    size: int
    content_type: bytes
    etag: bytes
    last_modified: bytes
    mtime: int  # whole seconds, for If-Modified-Since
    content: bytes | None  # the bytes of a small file, else None (streamed from disk)
    validators: bytes  # Last-Modified, ETag and Accept-Ranges header lines
    fields: bytes  # every header line of a whole-file 200 response but Date/Server/Connection
    checked: object = None  # the tick at which the signature was last confirmed
    hot_head: tuple[bytes, bytes, bytes] | None = None  # (date, server line, head) of the last plain keep-alive 200


@dataclass(slots=True)
class DirEntry:
    real: str
    segments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Listed:
    name: str
    is_dir: bool
    size: int


class Docroot:
    def __init__(self, root: str, *, small_file_bytes: int = 64 * 1024, cache_bytes: int = 64 * 1024 * 1024):
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise NotADirectoryError(f"served root is not a directory: {root}")
        if not mimetypes.inited:
            mimetypes.init()  # reads /etc/mime.types once, before fork, not on a first request
        self.root = real
        self._prefix = real.rstrip(os.sep) + os.sep
        self._small = small_file_bytes
        self._cache_limit = cache_bytes
        self._cache: dict[bytes, FileEntry] = {}
        self._cached_bytes = 0

    # -- lookups ---------------------------------------------------------------
    def lookup(self, path: bytes, tick: object = None) -> FileEntry | DirEntry:
        """Resolve a target path (no query). Raises TargetError for 400/403/404.

        tick: any value that changes as time passes (the Date header); a cached entry
        is re-checked against the disk when it differs from the last check's. None
        re-checks every time.
        """
        entry = self._cache.get(path)
        if entry is not None:
            if tick is not None and entry.checked == tick:
                return entry
            try:
                if _signature(os.stat(entry.real)) == entry.signature:
                    entry.checked = tick
                    return entry
            except OSError:
                pass
            self._forget(path)
        found = self._resolve(path, normalise(path))
        if isinstance(found, FileEntry):
            found.checked = tick
        return found

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self._prefix)

    def _resolve(self, path: bytes, segments: tuple[str, ...]) -> FileEntry | DirEntry:
        if segments and segments[0] == RESERVED:
            raise TargetError(404, "no such endpoint (the /_/ prefix is reserved; try /_/work)")
        real = os.path.realpath(os.path.join(self.root, *segments))
        if not self._inside(real):
            raise TargetError(404, "no such file")  # a symlink out of the root: say nothing more
        try:
            st = os.stat(real)
        except PermissionError:
            raise TargetError(403, "permission denied") from None
        except (FileNotFoundError, NotADirectoryError):
            raise TargetError(404, "no such file") from None
        except OSError as exc:
            raise _unavailable_or(404, f"cannot open: {exc.strerror}", exc) from None
        if stat.S_ISDIR(st.st_mode):
            return DirEntry(real, segments)
        if not stat.S_ISREG(st.st_mode):
            raise TargetError(404, "not a regular file")
        return self._file_entry(path, real, st)

    def _file_entry(self, path: bytes, real: str, st: os.stat_result) -> FileEntry:
        content = None
        if st.st_size <= self._small:
            try:
                fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
            except PermissionError:
                raise TargetError(403, "permission denied") from None
            except OSError as exc:
                raise _unavailable_or(404, "no such file", exc) from None
            try:
                st = os.fstat(fd)  # describe exactly the bytes we read
                content = os.read(fd, st.st_size + 1)
            finally:
                os.close(fd)
            if len(content) != st.st_size:  # changed while we read it: stream it instead
                content = None
        ctype, encoding = mimetypes.guess_type(real, strict=False)
        if ctype is None or encoding is not None:
            ctype = "application/octet-stream"  # never claim a Content-Encoding we do not send
        elif ctype.startswith("text/"):
            ctype += "; charset=utf-8"
        etag = b'"%x-%x"' % (st.st_mtime_ns, st.st_size)
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True).encode("ascii")
        validators = b"Last-Modified: %s\r\nETag: %s\r\nAccept-Ranges: bytes\r\n" % (last_modified, etag)
        content_type = ctype.encode("ascii")
        entry = FileEntry(
            real=real,
            signature=_signature(st),
            size=st.st_size,
            content_type=content_type,
            etag=etag,
            last_modified=last_modified,
            mtime=int(st.st_mtime),
            content=content,
            validators=validators,
            fields=b"Content-Type: %s\r\nContent-Length: %d\r\n%s" % (content_type, st.st_size, validators),
        )
        self._remember(path, entry)
        return entry

    # -- the small-file cache ----------------------------------------------------
    def _remember(self, path: bytes, entry: FileEntry) -> None:
        cost = len(path) + (entry.size if entry.content is not None else 0) + 512
        if cost > self._cache_limit:
            return
        while self._cache and self._cached_bytes + cost > self._cache_limit:
            self._forget(next(iter(self._cache)))  # oldest first
        self._cache[path] = entry
        self._cached_bytes += cost

    def _forget(self, path: bytes) -> None:
        entry = self._cache.pop(path, None)
        if entry is not None:
            self._cached_bytes -= len(path) + (entry.size if entry.content is not None else 0) + 512

    # -- listings ------------------------------------------------------------------
    def listing(self, entry: DirEntry) -> list[Listed]:
        """Regular files and directories in a directory, by name; nothing outside the root."""
        out: list[Listed] = []
        try:
            scan = list(os.scandir(entry.real))
        except OSError as exc:
            raise TargetError(403, f"cannot list directory: {exc.strerror}") from None
        for item in scan:
            if not entry.segments and item.name == RESERVED:
                continue
            try:
                item.name.encode("utf-8")
                if item.is_symlink() and not self._inside(os.path.realpath(item.path)):
                    continue
                st = item.stat()
            except (OSError, UnicodeEncodeError):
                continue
            if stat.S_ISDIR(st.st_mode):
                out.append(Listed(item.name, True, 0))
            elif stat.S_ISREG(st.st_mode):
                out.append(Listed(item.name, False, st.st_size))
        out.sort(key=lambda x: x.name)
        return out
