"""Where runs live: a folder whose files are always readable, even after a crash or Ctrl-C.

``results.json`` is rewritten atomically after every finished method; ``predictions.jsonl`` is appended
per method. ``config.yaml`` holds the resolved settings; ``label_issues.jsonl`` the data checks' flagged rows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from fewtune.errors import ConfigError


def default_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / datetime.now().strftime("%Y%m%d-%H%M%S")


def write_json_atomic(path: Path, payload: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, path)


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


def refuse_existing_run(folder: str | Path, overwrite: bool) -> None:
    """A folder that already holds a run is never silently replaced: one line, unless ``overwrite``."""
    results = Path(folder) / "results.json"
    if overwrite or not results.is_file():
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
    """Remove what an earlier run wrote into ``folder`` (for --overwrite)."""
    folder = Path(folder)
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for image in folder.glob(REPORT_IMAGES):
        image.unlink()
    for name in RUN_FOLDERS:
        shutil.rmtree(folder / name, ignore_errors=True)


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
        return self.folder / "adapters" / name

    def write_results(self, results: dict[str, Any]) -> None:
        write_json_atomic(self.results_path, results)

    def append_predictions(self, rows: Iterable[dict[str, Any]]) -> None:
        with self.predictions_path.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def read_results(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "results.json").read_text())
