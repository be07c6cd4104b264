"""Fixtures: one corpus per session, one server process per model variant per session."""

from __future__ import annotations

import os

import pytest

from serverzoo.servers import MODELS
from serverzoo.servers import VARIANTS as NAMED_VARIANTS
from serverzoo.servers.launch import ServerProcess

from .support import make_corpus

# Short timeouts so the timeout tests are quick; everything else finishes well within them.
CONFORMANCE_ARGS = ("--keepalive-timeout", "2", "--header-timeout", "2", "--grace", "5")


def _variants() -> list[tuple[str, str, tuple[str, ...]]]:
    """(id, model, extra args): every model of the registry with its defaults, its
    two-process shape where it has one, and the registry's named variants. A model that
    starts a process per CPU runs two here, whatever the machine."""
    out = []
    for m in MODELS.values():
        if m.default_workers is None:
            out.append((m.name, m.name, ("--workers", "2")))
            continue
        out.append((m.name, m.name, ()))
        if m.multiprocess:
            out.append((f"{m.name}-w2", m.name, ("--workers", "2")))
    out += [(v.name, v.model.name, v.args) for v in NAMED_VARIANTS.values()]
    return out


VARIANTS = _variants()


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="session", params=VARIANTS, ids=[v[0] for v in VARIANTS])
def server(request: pytest.FixtureRequest, corpus_root: str):
    """A running server for one model variant, shared by every test of that variant."""
    _id, model, args = request.param
    proc = ServerProcess(model, corpus_root, *CONFORMANCE_ARGS, *args)
    proc.start()
    proc.variant = _id
    yield proc
    code = proc.stop(timeout=15)
    err = proc.stderr_text()
    assert code == 0, f"{_id} exited with {code}; stderr: {err}"
    assert "Traceback" not in err, f"{_id} wrote a traceback:\n{err}"


def _private_servers(corpus_root: str, check_clean: bool):
    """Yield a starter of private servers for one test; stop each by PID afterwards.
    check_clean: each must also have exited 0 without a traceback."""
    started: list[ServerProcess] = []

    def start(model: str, *args: str, root: str | None = None, **options) -> ServerProcess:
        proc = ServerProcess(model, root or corpus_root, *args, **options)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        code = proc.stop(timeout=15)
        if check_clean:
            err = proc.stderr_text()
            assert code == 0, err
            assert "Traceback" not in err, err


@pytest.fixture
def fresh_server(corpus_root: str):
    """Start a private server for a test that stops or disturbs it (shutdown tests)."""
    yield from _private_servers(corpus_root, check_clean=False)


@pytest.fixture
def start(corpus_root: str):
    """Start private servers for one test; each must stop cleanly (exit 0, no traceback)."""
    yield from _private_servers(corpus_root, check_clean=True)


def pytest_report_header(config: pytest.Config) -> str:
    return f"serverzoo variants: {', '.join(v[0] for v in VARIANTS)}; cpus={os.cpu_count()}"
