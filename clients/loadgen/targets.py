"""What to request and what a correct answer is: targets, their weights, their expected bytes.

A run talks to one server (scheme, host, port). The first URL is also the base that
relative paths (mix file lines, corpus names) are resolved against: http://h:p/files/
serves corpus names as /files/NAME. With --serve the URLs are paths on the server the run
starts, and its address is the base. A URL whose path ends in "/" is only a base when a
mix, a Zipf corpus or --work supplies the targets; otherwise every URL is a target.

Each target knows its expected status and, when it can, its expected Content-Length and
body: from the corpus manifest (size, sha256) or, for the work endpoint, the exact body
the protocol core writes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from .corpus import CorpusError, Manifest, load_manifest
from .options import LoadOptions, OptionError

WORK_PATH = "/_/work"
SEQUENCE_MIN = 1 << 16  # precomputed draws of the mix, walked in order by each worker


@dataclass
class Target:
    path: str  # origin-form, with query
    weight: float
    request: bytes  # keep-alive request
    request_close: bytes  # the same with Connection: close
    expect_length: int | None = None
    expect_sha256: bytes | None = None  # digest
    expect_body: bytes | None = None  # exact body, when known outright
    corpus_name: str | None = None
    reference: bytes | None = None  # a body already proven good: later ones are compared to it
    reference_xxh3: bytes | None = None  # XXH3-128 of a large reference (verification.py)


@dataclass
class Server:
    host: str
    port: int
    base: str  # path prefix ending in "/"
    netloc: str  # for the Host header


@dataclass
class LoadPlan:
    server: Server
    targets: list[Target]
    sequence: list[int]  # indices into targets, drawn by weight
    slow_read_target: Target | None = None  # what slow readers fetch, when not the largest target

    def largest_target(self) -> Target:
        return max(self.targets, key=lambda t: t.expect_length or 0)

    def describe(self) -> list[dict]:
        total = sum(t.weight for t in self.targets)
        return [
            {
                "path": t.path,
                "weight": round(t.weight / total, 6),
                "expect_length": t.expect_length,
                "sha256": t.expect_sha256.hex() if t.expect_sha256 else None,
            }
            for t in self.targets
        ]


def parse_server(url: str) -> tuple[Server, str]:
    """(server, origin-form target of this URL)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise OptionError(f"not a URL: {url!r} ({exc})") from None
    if parts.scheme == "https":
        raise OptionError("https is not supported: serverzoo load speaks plain HTTP/1.1")
    if parts.scheme != "http" or not parts.hostname:
        raise OptionError(f"not an http:// URL: {url!r}")
    host = parts.hostname
    port = port or 80
    path = parts.path or "/"
    target = path + ("?" + parts.query if parts.query else "")
    base = path[: path.rfind("/") + 1]
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Server(host, port, base, netloc), target


def _join(server: Server, path: str) -> str:
    if path.startswith(("http://", "https://")):
        other, target = parse_server(path)
        if (other.host, other.port) != (server.host, server.port):
            raise OptionError(f"all targets must be on one server: {path} is not on {server.netloc}")
        return target
    if path.startswith("/"):
        return path
    return server.base + path


def _work_target(spec: str) -> str:
    """'cpu=10,wait=5' (or with &) -> '/_/work?cpu=10&wait=5'."""
    pairs = [p.strip() for p in spec.replace("&", ",").split(",") if p.strip()]
    for p in pairs:
        name, eq, value = p.partition("=")
        if name not in ("cpu", "wait") or not eq or not value.isdigit():
            raise OptionError(f"--work takes cpu=N,wait=MS (got {spec!r})")
    return WORK_PATH + ("?" + "&".join(pairs) if pairs else "")


def _work_body(target: str) -> bytes | None:
    """The body serverzoo's work endpoint answers for this target (None if not a valid work query)."""
    path, _, query = target.partition("?")
    if path != WORK_PATH:
        return None
    values = {"cpu": 0, "wait": 0}
    for pair in filter(None, query.split("&")):
        name, _, raw = pair.partition("=")
        if name not in values or not raw.isdigit():
            return None
        values[name] = int(raw)
    return b"cpu=%d wait_ms=%d\n" % (values["cpu"], values["wait"])


def read_mix_file(path: str) -> list[tuple[float, str]]:
    """Lines 'WEIGHT PATH' (PATH relative to the base URL, absolute, or a full URL); '#' comments."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise OptionError(f"cannot read --mix {path}: {exc.strerror or exc}") from None
    out = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        weight_text, _, target = line.partition(" ")
        try:
            weight = float(weight_text)
        except ValueError:
            weight = -1.0
        if weight <= 0 or not target.strip():
            raise OptionError(f"{path}:{number}: expected 'WEIGHT PATH' with a positive weight, got {line!r}")
        out.append((weight, target.strip()))
    if not out:
        raise OptionError(f"--mix {path} lists no targets")
    return out


def zipf_weights(n: int, exponent: float) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, n + 1)]


def served_url(path: str, base_url: str) -> str:
    """A --serve target path (/1KiB.bin) as a URL on the started server (http://HOST:PORT/)."""
    return base_url.rstrip("/") + path


def build_plan(opts: LoadOptions, base_url: str | None = None) -> LoadPlan:
    """The targets of a run. With opts.serve, base_url is the started server's URL (its paths resolve there)."""
    if opts.serve is not None and base_url is None:
        raise ValueError("a run with serve needs the started server's base_url")
    server, first_target = parse_server(served_url(opts.url, base_url) if opts.serve is not None else opts.url)
    manifest: Manifest | None = None
    if opts.corpus is not None:
        try:
            manifest = load_manifest(opts.corpus)
        except CorpusError as exc:
            raise OptionError(str(exc)) from None
    entries: list[tuple[float, str]] = []
    if opts.zipf is not None:
        assert manifest is not None
        entries += [(w, server.base + quote(f.name)) for w, f in zip(zipf_weights(len(manifest), opts.zipf), manifest)]
    if opts.mix_file is not None:
        entries += [(w, _join(server, p)) for w, p in read_mix_file(opts.mix_file)]
    if opts.work is not None:
        entries.append((1.0, _work_target(opts.work)))
    base_only = first_target.endswith("/") and (entries or manifest is not None)
    if not base_only:
        entries.insert(0, (1.0, first_target))
    elif not entries:  # a corpus and a directory URL: every corpus file, uniformly
        entries = [(1.0, server.base + quote(f.name)) for f in manifest]
    for extra in opts.urls:
        entries.append((1.0, _join(server, extra)))
    extra_headers = "".join(h.split(":", 1)[0].strip() + ":" + h.split(":", 1)[1] + "\r\n" for h in opts.headers)
    has_host = any(h.split(":", 1)[0].strip().lower() == "host" for h in opts.headers)
    host_line = "" if has_host else f"Host: {server.netloc}\r\n"

    def make(weight: float, target: str) -> Target:
        if any(c in target for c in " \r\n\t"):
            raise OptionError(f"target contains whitespace: {target!r} (percent-encode it)")
        head = f"GET {target} HTTP/1.1\r\n{host_line}{extra_headers}"
        return Target(
            target, weight, (head + "\r\n").encode("latin-1"), (head + "Connection: close\r\n\r\n").encode("latin-1")
        )

    targets = []
    for weight, target in entries:
        t = make(weight, target)
        body = _work_body(target)
        if body is not None:
            t.expect_body, t.expect_length = body, len(body)
            t.expect_sha256 = hashlib.sha256(body).digest()
        elif manifest is not None:
            path = target.partition("?")[0]
            if path.startswith(server.base):
                entry = manifest.get(unquote(path[len(server.base) :]))
                if entry is not None:
                    t.expect_length, t.expect_sha256, t.corpus_name = (
                        entry.size,
                        bytes.fromhex(entry.sha256),
                        entry.name,
                    )
        targets.append(t)
    slow = make(0.0, _join(server, opts.slow_read_path)) if opts.slow_read_path else None
    return LoadPlan(server, targets, draw_sequence(targets, opts.seed), slow)


def draw_sequence(targets: list[Target], seed: int) -> list[int]:
    """Target indices drawn by weight, reproducibly; a single target needs no draws."""
    if len(targets) == 1:
        return [0]
    rng = random.Random(seed)
    length = max(SEQUENCE_MIN, 64 * len(targets))
    return rng.choices(range(len(targets)), weights=[t.weight for t in targets], k=length)
