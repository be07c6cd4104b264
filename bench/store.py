"""One JSON file per run, rewritten atomically after every cell.

The file is replaced with os.replace from a temporary file in the same folder, so
Ctrl-C leaves either the previous complete file or the new one, never a torn one (the
runner also holds Ctrl-C back while it writes). `--resume` reads it back and runs
only the cells it lacks.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .results import Run

SCHEMA = "serverzoo.bench/1"


class ResultsError(Exception):
    """A results file that cannot be read, or is not what the command takes (one line)."""


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except OSError as exc:
        raise ResultsError(f"{path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not JSON (not UTF-8 text)") from None


def _schema_of(doc: Any) -> str:
    return repr(doc.get("schema")) if isinstance(doc, dict) else f"none: a JSON {type(doc).__name__}"


def _check_run(path: str, doc: Any) -> dict[str, Any]:
    from .results import RunFormatError, check_run

    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: not a serverzoo bench run (schema {_schema_of(doc)}, expected {SCHEMA!r})")
    try:
        check_run(doc)
    except RunFormatError as exc:
        raise ResultsError(f"{path}: {exc}") from None
    return doc


def read_run(path: str) -> dict[str, Any]:
    """A bench run (what `serverzoo bench` writes), checked against bench/run.schema.json."""
    return _check_run(path, _load_json(path))


def load_run(path: str) -> Run:
    """A bench run, checked and read into typed objects (bench.results)."""
    from .results import Run, RunFormatError

    doc = read_run(path)
    try:
        return Run.from_doc(doc, check=False)
    except RunFormatError as exc:
        raise ResultsError(f"{path}: {exc}") from None


def read_result(path: str) -> dict[str, Any]:
    """A bench run or a `serverzoo udp compare` result, told apart by its "schema", checked."""
    from serverzoo.clients.udp.compare import SCHEMA as UDP_COMPARE
    from serverzoo.clients.udp.compare import document_problem

    doc = _load_json(path)
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema == UDP_COMPARE:
        problem = document_problem(doc)
        if problem:
            raise ResultsError(f"{path}: incomplete udp-compare result ({problem})")
        return doc
    if schema == SCHEMA:
        return _check_run(path, doc)
    raise ResultsError(
        f"{path}: neither a serverzoo bench run nor a udp-compare result (schema {_schema_of(doc)}, "
        f"expected {SCHEMA!r} or {UDP_COMPARE!r})"
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str, doc: dict[str, Any]) -> None:
    """Replace path with doc's JSON in one step."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from other users
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
