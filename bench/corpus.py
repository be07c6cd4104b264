"""The benchmark corpus: written once per seed and spec, reused by later runs.

The bytes and manifests come from the load generator's corpus writer, so the generator
verifies every body against exactly what was written. The top-level files and the Zipf
population get one manifest each (root/manifest.json, root/mix/manifest.json); the
population's popularity ranks are shuffled by the seed so that popular is not simply
small. A stamp file records the spec: a changed spec rewrites the corpus.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict

from serverzoo.clients.loadgen.corpus import MANIFEST, CorpusError, Manifest, load_manifest, write_corpus

from .scenarios import ConfigError, CorpusSpec

STAMP = "bench-corpus.json"


def default_corpus_dir(out_dir: str, spec: CorpusSpec) -> str:
    return os.path.join(out_dir, f"corpus-{spec.seed}")


def _stamp(spec: CorpusSpec) -> dict:
    return {"spec": json.loads(json.dumps(asdict(spec)))}


def _complete(root: str, spec: CorpusSpec) -> bool:
    """The stamp matches and every file has its manifest size (content is verified per response)."""
    try:
        with open(os.path.join(root, STAMP)) as f:
            if json.load(f) != _stamp(spec):
                return False
        folders = [root] + ([os.path.join(root, spec.mix_dir)] if spec.mix_dir else [])
        for folder in folders:
            for entry in load_manifest(folder):
                if os.path.getsize(os.path.join(folder, entry.name)) != entry.size:
                    return False
    except (OSError, ValueError, CorpusError):
        return False
    return True


def ensure_corpus(root: str, spec: CorpusSpec) -> str:
    """Write the corpus under root unless it is already there and complete; return root."""
    if _complete(root, spec):
        return root
    try:
        write_corpus(root, spec.files, seed=spec.seed)
        if spec.mix_dir:
            mix = os.path.join(root, spec.mix_dir)
            manifest = write_corpus(mix, spec.mix_files, seed=spec.seed)
            files = list(manifest.files)
            random.Random(spec.seed).shuffle(files)  # the manifest's order is the Zipf rank order
            with open(os.path.join(mix, MANIFEST), "w") as f:
                json.dump(Manifest(files, spec.seed).to_dict(), f, indent=1)
                f.write("\n")
        with open(os.path.join(root, STAMP), "w") as f:
            json.dump(_stamp(spec), f)
    except (OSError, CorpusError) as exc:
        raise ConfigError(f"cannot write the corpus at {root}: {exc}") from None
    return root


def check_corpus(root: str, spec: CorpusSpec) -> None:
    """A corpus given with --corpus must exist and hold what the scenarios request."""
    if not os.path.isdir(root):
        raise ConfigError(f"corpus {root} does not exist (omit --corpus to have one written)")
    try:
        names = {e.name for e in load_manifest(root)}
        if spec.mix_dir:
            names |= {f"{spec.mix_dir}/{e.name}" for e in load_manifest(os.path.join(root, spec.mix_dir))}
    except CorpusError as exc:
        raise ConfigError(f"corpus {root}: {exc}") from None
    missing = sorted(spec.names() - names)
    if missing:
        raise ConfigError(
            f"corpus {root} lacks {missing[0]}"
            f"{f' and {len(missing) - 1} more files' if len(missing) > 1 else ''} that the scenarios need"
        )
