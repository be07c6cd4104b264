"""A reproducible test corpus: files of named sizes from a seed, and a manifest of sizes and sha256.

    write_corpus("corpus", sizes=["1KiB", "64KiB*10", "1MiB"], seed=0)
    manifest = load_manifest("corpus")   # name -> CorpusFile(size, sha256)

A file's bytes depend only on (seed, name, size): SHAKE-256 of "seed/name/chunk-index"
in 1 MiB chunks, which every Python (and every other language) computes the same way,
so the same command writes the same bytes anywhere. The manifest lists the files in
popularity-rank order (the order given), which is what a Zipf mix ranks them by.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

MANIFEST = "manifest.json"
SCHEMA = "serverzoo.corpus/1"
GENERATOR = "shake256-1MiB-chunks/1"
CHUNK = 1 << 20
DEFAULT_SIZES = ("1KiB", "4KiB", "16KiB", "64KiB", "256KiB", "1MiB", "4MiB")

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


class CorpusError(ValueError):
    pass


def parse_size(text: str) -> int:
    """'1024', '1KiB', '64k', '1MiB', '2GB' -> bytes (k/KB/M/MB/G/GB decimal, KiB/MiB/GiB binary)."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise CorpusError(f"not a size: {text!r} (examples: 1024, 1KiB, 64k, 1MiB)")
    return int(m.group(1)) * _UNITS[unit]


def size_name(size: int) -> str:
    """1024 -> '1KiB', 3 * 2**20 -> '3MiB', 1000 -> '1000B'."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def parse_size_spec(spec: str) -> tuple[int, int]:
    """'64KiB' -> (65536, 1); '1KiB*100' -> (1024, 100): a size and how many files of it."""
    size_text, star, count_text = spec.partition("*")
    count = 1
    if star:
        if not count_text.strip().isdigit() or int(count_text) < 1:
            raise CorpusError(f"not a file count in {spec!r} (write SIZE*COUNT, e.g. 1KiB*100)")
        count = int(count_text)
    return parse_size(size_text), count


@dataclass(frozen=True)
class CorpusFile:
    name: str  # path relative to the corpus directory, '/'-separated
    size: int
    sha256: str  # hex


class Manifest:
    """The files of a corpus, in rank order, by name."""

    def __init__(self, files: list[CorpusFile], seed: int | None = None) -> None:
        self.files = files
        self.seed = seed
        self.by_name = {f.name: f for f in files}

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self):
        return iter(self.files)

    def get(self, name: str) -> CorpusFile | None:
        return self.by_name.get(name)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "generator": GENERATOR,
            "seed": self.seed,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }


def file_bytes_chunks(seed: int, name: str, size: int):
    """The deterministic content of one corpus file, 1 MiB at a time."""
    for index in range((size + CHUNK - 1) // CHUNK):
        n = min(CHUNK, size - index * CHUNK)
        yield hashlib.shake_256(f"{seed}/{name}/{index}".encode()).digest(n)


def corpus_names(sizes: list[str] | tuple[str, ...]) -> list[tuple[str, int]]:
    """[(name, size)] for size specs; 'SIZE*COUNT' gives SIZE-0001.bin ... SIZE-COUNT.bin."""
    out: list[tuple[str, int]] = []
    for spec in sizes:
        size, count = parse_size_spec(spec)
        label = size_name(size)
        if count == 1:
            out.append((f"{label}.bin", size))
        else:
            width = max(4, len(str(count)))
            out.extend((f"{label}-{i:0{width}d}.bin", size) for i in range(1, count + 1))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise CorpusError("the same size is listed twice; give it once with a count (SIZE*COUNT)")
    return out


def write_corpus(directory: str, sizes: list[str] | tuple[str, ...] = DEFAULT_SIZES, seed: int = 0) -> Manifest:
    """Write the files and manifest.json under directory (created world-readable); return the manifest."""
    files = []
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)  # servers such as nginx read it as another user
    for name, size in corpus_names(sizes):
        digest = hashlib.sha256()
        path = os.path.join(directory, name)
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            for chunk in file_bytes_chunks(seed, name, size):
                digest.update(chunk)
                f.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        files.append(CorpusFile(name, size, digest.hexdigest()))
    manifest = Manifest(files, seed)
    tmp = os.path.join(directory, MANIFEST + ".part")
    with open(tmp, "w") as f:
        json.dump(manifest.to_dict(), f, indent=1)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(directory, MANIFEST))
    return manifest


def load_manifest(directory_or_file: str) -> Manifest:
    """Read DIR/manifest.json (or the manifest file itself). Raises CorpusError with a one-line reason."""
    path = directory_or_file
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST)
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise CorpusError(f"no corpus manifest at {path} (write one with: serverzoo corpus DIR)") from None
    except (OSError, ValueError) as exc:
        raise CorpusError(f"cannot read corpus manifest {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("files"), list):
        raise CorpusError(f"{path} is not a {SCHEMA} manifest")
    try:
        files = [CorpusFile(str(e["name"]), int(e["size"]), str(e["sha256"]).lower()) for e in doc["files"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorpusError(f"{path}: malformed file entry ({exc})") from None
    return Manifest(files, doc.get("seed"))


def verify_corpus(directory: str, manifest: Manifest | None = None) -> list[str]:
    """Names whose bytes on disk differ from the manifest (missing, wrong size or wrong sha256)."""
    manifest = manifest or load_manifest(directory)
    bad = []
    for f in manifest:
        digest = hashlib.sha256()
        try:
            with open(os.path.join(directory, f.name), "rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
        except OSError:
            bad.append(f.name)
            continue
        if digest.hexdigest() != f.sha256:
            bad.append(f.name)
    return bad
