"""The run registry: every run recorded in an embedded SQLite database under its runs root.

The database is ``fewtune-runs.sqlite`` in the run folder's parent (``runs/`` by default), or the file
``FEWTUNE_REGISTRY`` names. A run is recorded (and updated in place) each time its report is written, by
``fewtune run`` and ``fewtune report``: its id, times, config and data hashes, task, model, the recommended
method and whether that verdict is settled (:mod:`fewtune.release.verdict`), and per method the
primary metric with its interval, p95 latency, cost per request and the adapter's path and hash. The run
folder stays the source of truth; the registry is its index, so ``fewtune runs`` can list and compare runs
and ``fewtune gate`` can take a run id where a folder is expected.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewtune.errors import FewtuneError

if TYPE_CHECKING:
    from fewtune.release.sides import Side

REGISTRY_FILE = "fewtune-runs.sqlite"
DEFAULT_ROOT = Path("runs")
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, folder TEXT NOT NULL UNIQUE, recorded_at TEXT NOT NULL, started_at TEXT,
    finished_at TEXT, status TEXT, task TEXT, model TEXT, seed INTEGER, config_sha256 TEXT,
    data_sha256 TEXT, test_sha256 TEXT, test_rows INTEGER, recommended TEXT, fewtune_version TEXT,
    settled INTEGER
);
CREATE TABLE IF NOT EXISTS methods (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, name TEXT NOT NULL, method TEXT,
    shots INTEGER, train_examples INTEGER, metric TEXT, value REAL, ci_low REAL, ci_high REAL,
    p95_ms REAL, cost_per_request REAL, adapter_path TEXT, adapter_sha256 TEXT,
    PRIMARY KEY (run_id, name)
);
"""
# Columns added to ``runs`` since the first schema, with their types: a registry created before them is
# migrated when opened (CREATE TABLE IF NOT EXISTS leaves an existing table as it was).
ADDED_RUN_COLUMNS = {"settled": "INTEGER"}  # 1 settled, 0 provisional, NULL unknown (an older report)


def registry_path(root: str | Path | None = None) -> Path:
    """``FEWTUNE_REGISTRY``, else ``root`` (default ``runs/``)/fewtune-runs.sqlite."""
    if os.environ.get("FEWTUNE_REGISTRY"):
        return Path(os.environ["FEWTUNE_REGISTRY"])
    return Path(root or DEFAULT_ROOT) / REGISTRY_FILE


@contextmanager
def connect(path: Path, create: bool = True) -> Iterator[sqlite3.Connection]:
    if not create and not path.is_file():
        raise FewtuneError(f"{path}: no run registry here yet (`fewtune run` and `fewtune report` create it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30)
    except (OSError, sqlite3.Error) as err:
        raise FewtuneError(f"{path}: cannot open the run registry ({err})") from None
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys = ON")
        db.executescript(SCHEMA)
        _migrate(db)
        with db:
            yield db
    except sqlite3.DatabaseError as err:
        raise FewtuneError(f"{path}: not a readable run registry ({err})") from None
    finally:
        db.close()


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns a registry made by an older fewtune lacks; its rows keep their values (NULL in the new
    columns). A registry that cannot be written (read-only) is left as it is and read as it is."""
    for column, kind in ADDED_RUN_COLUMNS.items():
        present = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
        if column in present:
            continue
        try:
            db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError:  # another process added it first, or the file is read-only
            continue


def _sha256(path: Path) -> str | None:
    from fewtune.files import file_sha256

    return file_sha256(path) if path.is_file() else None


def run_id_of(folder: Path, started_at: str) -> str:
    """A stable id: the folder's name and a short hash of its absolute path and start time."""
    digest = hashlib.sha256(f"{folder.resolve()}|{started_at}".encode()).hexdigest()[:8]
    return f"{folder.resolve().name}-{digest}"


def record_run(folder: str | Path, path: Path | None = None) -> tuple[str, Path]:
    """Add or update the run in ``folder`` (its results.json with the report's analysis.json laid over it)
    in the registry; return its id and the registry file."""
    from fewtune.release.verdict import Verdict
    from fewtune.results.rows import Run
    from fewtune.results.run_folder import read_analysed

    folder = Path(folder)
    results = read_analysed(folder)
    path = path or registry_path(folder.resolve().parent)
    started = str(results.get("started_at") or "")
    run_id = run_id_of(folder, started)
    dataset = results.get("dataset") or {}
    record = Run(results)
    methods = []
    for row in record.rows:
        primary = row.primary
        low, high = [*(primary.get("ci95") or []), None, None][:2]
        adapter = row.adapter_path
        adapter_file = Path(adapter) / "adapter_model.safetensors" if adapter else None
        methods.append(
            (
                run_id, row.name, row.method, row.shots, row.train_examples_recorded, primary.get("label"),
                primary.get("value"), low, high, row.p95, row.per_request_cost,
                adapter, _sha256(adapter_file) if adapter_file else None,
            )
        )  # fmt: skip
    verdict = Verdict.of(record.recommendation)
    run = {
        "run_id": run_id, "folder": str(folder.resolve()),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"), "started_at": started,
        "finished_at": results.get("finished_at"), "status": results.get("status"),
        "task": (results.get("task") or {}).get("name"), "model": results.get("model"),
        "seed": results.get("seed"), "config_sha256": _sha256(folder / "config.yaml"),
        "data_sha256": dataset.get("data_sha256"), "test_sha256": dataset.get("test_sha256"),
        "test_rows": dataset.get("test_size"), "recommended": verdict.method,
        "fewtune_version": results.get("fewtune_version"),
        "settled": None if verdict.settled is None else int(verdict.settled),
    }  # fmt: skip
    with connect(path) as db:
        db.execute("DELETE FROM runs WHERE run_id = ? OR folder = ?", (run_id, run["folder"]))
        db.execute(
            f"INSERT INTO runs ({', '.join(run)}) VALUES ({', '.join('?' * len(run))})", tuple(run.values())
        )
        db.executemany(f"INSERT INTO methods VALUES ({', '.join('?' * 13)})", methods)
    return run_id, path


def list_runs(path: Path) -> list[dict[str, Any]]:
    with connect(path, create=False) as db:
        rows = db.execute("SELECT * FROM runs ORDER BY started_at, run_id").fetchall()
        return [dict(r) for r in rows]


@dataclass(frozen=True)
class RegisteredRun:
    """A run as the registry holds it: its ``runs`` columns, and its rows of the ``methods`` table."""

    columns: Mapping[str, Any]
    """run_id, folder, task, model, hashes, recommended, settled, ... (the ``runs`` table)."""
    methods: list[Mapping[str, Any]]
    """Per method: name, method, shots, metric, value, ci_low, ci_high, p95_ms, cost_per_request, adapter."""


def find_run(path: Path, key: str) -> RegisteredRun:
    """The run whose id (or a unique prefix of it) or folder is ``key``, with its methods."""
    with connect(path, create=False) as db:
        rows = db.execute(
            "SELECT * FROM runs WHERE run_id = ? OR folder = ? OR run_id LIKE ? ESCAPE '\\'",
            (key, str(Path(key).resolve()), key.replace("%", "\\%").replace("_", "\\_") + "%"),
        ).fetchall()
        exact = [r for r in rows if r["run_id"] == key or r["folder"] == str(Path(key).resolve())]
        rows = exact or rows
        if not rows:
            raise FewtuneError(f"{path}: no run {key!r} (`fewtune runs` lists them)")
        if len(rows) > 1:
            ids = ", ".join(r["run_id"] for r in rows[:5])
            raise FewtuneError(f"{path}: {key!r} matches {len(rows)} runs ({ids}); give more of the id")
        run = dict(rows[0])
        methods = db.execute("SELECT * FROM methods WHERE run_id = ? ORDER BY rowid", (run["run_id"],))
        return RegisteredRun(run, [dict(m) for m in methods.fetchall()])


def resolve(spec: str) -> Side:
    """A gate side from ``RUN[:METHOD]``: RUN a run folder, else a run id in the default registry."""
    from fewtune.release.sides import read_side, split_spec

    folder, _ = split_spec(spec)
    if folder.is_dir():
        return read_side(spec)
    path = registry_path()
    if not path.is_file():
        raise FewtuneError(f"{folder}: no such run folder (and no run registry at {path} to look it up in)")
    return read_side(spec, Path(find_run(path, str(folder)).columns["folder"]))
