"""Where runs live: a folder whose files are always readable, even after a crash or Ctrl-C.

``results.json`` is rewritten atomically after every finished method; ``predictions.jsonl`` is appended
per method. ``config.yaml`` holds the resolved settings; ``label_issues.jsonl`` the data checks' flagged rows.

A run folder never loses the user's files: ``fewtune-manifest.json`` lists every file and folder fewtune
wrote there. An ``--out`` that holds anything else is refused unless ``--overwrite``, and ``--overwrite``
removes only what the manifest lists (for a folder an earlier fewtune wrote without a manifest: the run
files by name).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from fewtune.errors import ConfigError


def default_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / datetime.now().strftime("%Y%m%d-%H%M%S")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a synced temporary file in the same folder, so a reader
    sees the old file or the new one, never a part; the temporary file is removed if writing fails."""
    fd, tmp = tempfile.mkstemp(prefix=f".fewtune-{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def check_run_folder(folder: str | Path) -> None:
    """Refuse, in one line, an ``--out`` that is (or sits inside) a file, before any work is done."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            what = f"--out {folder} is a file" if path == folder else f"--out {folder}: {path} is a file"
            raise ConfigError(f"{what}; give a folder")


# What `fewtune run` writes into a run folder; --overwrite removes exactly these, never the user's own files.
RUN_FILES = (
    "results.json",
    "analysis.json",
    "predictions.jsonl",
    "label_issues.jsonl",
    "report.md",
    "report.html",
)
RUN_FOLDERS = ("adapters",)
REPORT_IMAGES = "report-*.png"
MANIFEST = "fewtune-manifest.json"
# fewtune's, but kept by --overwrite: an endpoint's cached answers (a re-run sends nothing).
KEPT_ON_OVERWRITE = ("http_cache.sqlite",)
# What an earlier fewtune (before the manifest) wrote: recognised by name when its results.json is there.
LEGACY_FILES = (*RUN_FILES, "config.yaml", "http_cache.sqlite", *RUN_FOLDERS)


def _manifest(folder: Path) -> list[str] | None:
    try:
        names = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("written")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def owned(folder: str | Path) -> set[str]:
    """The entries of ``folder`` (relative names) that fewtune wrote."""
    folder = Path(folder)
    names = _manifest(folder)
    if names is not None:
        return {*names, MANIFEST}
    if (folder / "results.json").is_file():  # a run folder from before the manifest
        return {*LEGACY_FILES, *(p.name for p in folder.glob(REPORT_IMAGES))}
    return set()


def record_written(folder: str | Path, *names: str) -> None:
    """Add ``names`` (relative to ``folder``) to its manifest."""
    folder = Path(folder)
    listed = _manifest(folder) or []
    new = [n for n in names if n not in listed]
    if new:
        write_json_atomic(folder / MANIFEST, {"written": [*listed, *new]})


def foreign_entries(folder: str | Path) -> list[str]:
    """Top-level entries of ``folder`` that fewtune did not write, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mine = {name.split("/")[0] for name in owned(folder)}
    return sorted(
        p.name for p in folder.iterdir() if p.name not in mine and not p.name.startswith(".fewtune")
    )


def refuse_existing_run(folder: str | Path, overwrite: bool, resume: bool = False) -> None:
    """A folder that already holds a run is never silently replaced, nor one that holds files fewtune did
    not write used without ``overwrite``: one line each."""
    results = Path(folder) / "results.json"
    foreign = foreign_entries(folder)
    if foreign and not overwrite and not resume:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(
            f"--out {folder} holds files fewtune did not write ({shown}); give a new or empty folder, or "
            "--overwrite to write beside them (it removes only what fewtune wrote)"
        )
    if overwrite or resume or not results.is_file():
        return
    try:
        saved = json.loads(results.read_text(encoding="utf-8"))
        status = f"status {saved.get('status', '?')}, {len(saved.get('methods') or [])} finished methods"
    except (OSError, ValueError):
        status = "an unreadable results.json"
    raise ConfigError(
        f"--out {folder} already holds a run ({status}); pass --resume to finish it, --overwrite to replace "
        "it, or give another --out"
    )


def clear_run(folder: str | Path) -> None:
    """Remove what an earlier run wrote into ``folder`` (for --overwrite): the manifest's entries only."""
    folder = Path(folder)
    kept = set(KEPT_ON_OVERWRITE)
    for name in sorted(owned(folder) - kept, key=lambda n: n.count("/"), reverse=True):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for name in RUN_FOLDERS:  # a folder fewtune made, once nothing of the user's is left in it
        with contextlib.suppress(OSError):
            (folder / name).rmdir()


class RunStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        check_run_folder(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def results_path(self) -> Path:
        return self.folder / "results.json"

    @property
    def predictions_path(self) -> Path:
        return self.folder / "predictions.jsonl"

    @property
    def label_issues_path(self) -> Path:
        """Every row the data checks flag as possibly mislabelled, worst first."""
        return self.folder / "label_issues.jsonl"

    def adapter_dir(self, name: str) -> Path:
        record_written(self.folder, f"adapters/{name}")
        return self.folder / "adapters" / name

    def written(self, *names: str) -> None:
        """Record files fewtune wrote here (beside the ones written through this store)."""
        record_written(self.folder, *names)

    def write_results(self, results: Mapping[str, Any]) -> None:
        record_written(self.folder, self.results_path.name)
        write_json_atomic(self.results_path, results)

    def append_predictions(self, rows: Iterable[Mapping[str, Any]]) -> None:
        record_written(self.folder, self.predictions_path.name)
        with self.predictions_path.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def read_results(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "results.json").read_text())
