"""curl and wget download byte-identical files from every model."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .support import FILES, content_for, sha

NAMES = ["empty.bin", "odd.bin", "big.bin", "sub/nested.bin"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed on this machine")
def test_curl_downloads_exact_bytes(server, tmp_path):
    for name in NAMES:
        out = tmp_path / name.replace("/", "_")
        subprocess.run(
            ["curl", "-sS", "--fail", "--max-time", "30", "-o", str(out), server.url + name], check=True, timeout=40
        )
        assert sha(out.read_bytes()) == sha(content_for(name, FILES[name])), name
    # curl's own resume: a partial file completed with a Range request
    part = tmp_path / "partial"
    part.write_bytes(content_for("big.bin", FILES["big.bin"])[:1_000_000])
    subprocess.run(
        ["curl", "-sS", "--fail", "-C", "-", "-o", str(part), server.url + "big.bin"], check=True, timeout=40
    )
    assert sha(part.read_bytes()) == sha(content_for("big.bin", FILES["big.bin"]))


@pytest.mark.skipif(shutil.which("wget") is None, reason="wget is not installed on this machine")
def test_wget_downloads_exact_bytes(server, tmp_path):
    for name in NAMES:
        out = tmp_path / name.replace("/", "_")
        subprocess.run(["wget", "-q", "-T", "30", "-t", "1", "-O", str(out), server.url + name], check=True, timeout=40)
        assert sha(out.read_bytes()) == sha(content_for(name, FILES[name])), name
