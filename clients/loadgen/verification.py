"""Is a body the right one? Checked against the expected sha256, or byte for byte against a reference.

A body that passed once is kept as its target's reference, so later bodies are compared with
it in place (a memcmp, several times faster than hashing): every byte is still checked. With
a local corpus the references are its files, checked against the manifest before the run
starts. References beyond a per-worker memory budget are not kept; those bodies stream
through sha256. A body that arrives in pieces is checked piece by piece (BodyCheck), so
pieces may be memoryviews of a reused receive buffer: nothing is copied to check them.

Large references (DIGEST_FROM and up) are not compared byte by byte: a memcmp would read the
whole reference from main memory for every body, which costs more than receiving it. Their
pieces go through XXH3-128 while they are still in the CPU cache, and the digest is compared
with that of the proven reference. Every byte is still read and checked; a random corruption
goes unnoticed with probability 2^-128 (XXH3 is not a defence against a server crafting
collisions, which the sha256 of the first body or of the corpus file is).
"""

from __future__ import annotations

import hashlib
import os

import xxhash

REFERENCE_ALWAYS = 1 << 20  # references up to this size are always kept
REFERENCE_BUDGET = 256 << 20  # larger ones while a worker holds less than this in references
DIGEST_FROM = 1 << 20  # streamed bodies with references this large are checked by XXH3-128

CORRUPT_BODY = "corrupt_body"


class Verifier:
    """Sampling: check the body of one response in `every` (0: never; 1: all, the default)."""

    __slots__ = ("countdown", "every")

    def __init__(self, every: int) -> None:
        self.every = every
        self.countdown = 1  # the first body is always checked

    def take(self) -> bool:
        """Whether to check the next body."""
        if not self.every:
            return False
        self.countdown -= 1
        if self.countdown:
            return False
        self.countdown = self.every
        return True


class References:
    """The bytes a worker holds as references, within the budget."""

    __slots__ = ("held",)

    def __init__(self, held: int = 0) -> None:
        self.held = held

    def may_keep(self, size: int) -> bool:
        return size <= REFERENCE_ALWAYS or self.held + size <= REFERENCE_BUDGET

    def verify(self, target, body: bytes | memoryview) -> str | None:
        """A whole body: compared with the reference, or hashed (and kept as the reference if right)."""
        ref = target.reference
        if ref is not None:  # startswith: a memcmp, also for a memoryview (== on one compares item by item)
            return None if body is ref or (len(body) == len(ref) and ref.startswith(body)) else CORRUPT_BODY
        if hashlib.sha256(body).digest() != target.expect_sha256:
            return CORRUPT_BODY
        if self.may_keep(len(body)):
            target.reference = bytes(body) if type(body) is memoryview else body
            self.held += len(body)
        return None

    def start(self, target, length_known: bool) -> BodyCheck:
        """A check for a body arriving in pieces."""
        ref = target.reference
        if ref is not None:
            if len(ref) < DIGEST_FROM:
                return _AgainstReference(ref)
            if target.reference_xxh3 is None:
                target.reference_xxh3 = xxhash.xxh3_128_digest(ref)
            return _Digest(xxhash.xxh3_128(), target.reference_xxh3)
        if length_known and self.may_keep(target.expect_length or 0):
            return _Collect(self)  # joined at the end, hashed once, kept as the reference
        return _Digest(hashlib.sha256(), target.expect_sha256)


class BodyCheck:
    """update() with each piece of one body, then result(target): None, or CORRUPT_BODY."""

    __slots__ = ()

    def update(self, piece) -> None:
        raise NotImplementedError

    def result(self, target) -> str | None:
        raise NotImplementedError


class _AgainstReference(BodyCheck):
    __slots__ = ("offset", "ok", "reference")

    def __init__(self, reference: bytes) -> None:
        self.reference = reference
        self.offset = 0
        self.ok = True

    def update(self, piece) -> None:
        if self.ok:
            self.ok = self.reference.startswith(piece, self.offset)
        self.offset += len(piece)

    def result(self, target) -> str | None:
        return None if self.ok and self.offset == len(self.reference) else CORRUPT_BODY


class _Digest(BodyCheck):
    __slots__ = ("digest", "expected")

    def __init__(self, digest, expected: bytes) -> None:
        self.digest = digest
        self.expected = expected

    def update(self, piece) -> None:
        self.digest.update(piece)

    def result(self, target) -> str | None:
        return None if self.digest.digest() == self.expected else CORRUPT_BODY


class _Collect(BodyCheck):
    __slots__ = ("pieces", "references")

    def __init__(self, references: References) -> None:
        self.references = references
        self.pieces: list[bytes] = []

    def update(self, piece) -> None:
        self.pieces.append(bytes(piece) if type(piece) is memoryview else piece)

    def result(self, target) -> str | None:
        return self.references.verify(target, b"".join(self.pieces))


def preload_references(targets: list, corpus_dir: str) -> int:
    """Take references from the local corpus files, smallest first, within the memory budget.

    A file is used only if its bytes hash to the manifest's sha256, so comparing a body with it
    is the same check as hashing the body, done before the run instead of during it. Returns
    the bytes held."""
    held = 0
    for target in sorted(targets, key=lambda t: t.expect_length or 0):
        size = target.expect_length
        if target.corpus_name is None or target.reference is not None or size is None:
            continue
        if size > REFERENCE_ALWAYS and held + size > REFERENCE_BUDGET:
            continue
        try:
            with open(os.path.join(corpus_dir, target.corpus_name), "rb") as f:
                data = f.read(size + 1)
        except OSError:
            continue
        if len(data) == size and hashlib.sha256(data).digest() == target.expect_sha256:
            target.reference = data
            held += size
    return held
