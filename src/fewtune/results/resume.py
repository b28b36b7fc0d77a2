"""``fewtune run --resume``: finish an interrupted run in its own folder, skipping the methods it finished.

A run may be resumed only with the settings and data it started with: the resolved config must equal the
saved ``config.yaml`` and the data files must hash the same (SHA-256), so the finished rows and the new ones
are measured on the same test rows. Seeded runs make a resumed run's numbers those of an uninterrupted one.
Methods are the unit of resumption: a LoRA size whose rows are not all finished is trained again.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from fewtune.config import CONFIG_FILE, RunConfig
from fewtune.errors import ConfigError
from fewtune.results.store import RunStore

# Draws after the first are named "<row name> seed=<seed>" in predictions.jsonl.
DRAW_SUFFIX = " seed="


def fingerprint(data: str, test: str | None) -> dict[str, str | None]:
    """SHA-256 of the pool and test files."""

    def digest(path: str | None) -> str | None:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None

    return {"data_sha256": digest(data), "test_sha256": digest(test)}


def _first_difference(saved: Any, now: Any, where: str = "") -> str | None:
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in sorted(set(saved) | set(now)):
            found = _first_difference(saved.get(key), now.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    return None if saved == now else f"{where} (run: {saved!r}, now: {now!r})"


def resume_results(store: RunStore, config: dict[str, Any], files: dict[str, str | None]) -> dict[str, Any]:
    """The earlier run's results, ready to continue; one-line errors when it cannot be resumed."""
    folder = store.folder
    try:
        results = json.loads(store.results_path.read_text(encoding="utf-8"))
        saved = RunConfig.load_values(folder / CONFIG_FILE)
    except (OSError, ValueError, ConfigError) as err:
        raise ConfigError(f"--resume: {folder} holds no readable run ({err}); use --overwrite") from None
    # config.yaml is written through YAML, so compare like with like.
    difference = _first_difference(saved, yaml.safe_load(yaml.safe_dump(config, sort_keys=False)))
    if difference:
        raise ConfigError(f"--resume: the settings differ from the run in {folder}: {difference}")
    before = {k: (results.get("dataset") or {}).get(k) for k in files}
    if before != files:
        raise ConfigError(f"--resume: the data files changed since the run in {folder} started (SHA-256)")
    done = {row["name"] for row in results.get("methods") or []}
    kept = []
    if store.predictions_path.is_file():
        lines = store.predictions_path.read_text(encoding="utf-8").split("\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                name = str(json.loads(line).get("name", ""))
            except (ValueError, AttributeError):
                if number - 1 == last:  # cut off mid-write: a method that had not finished
                    continue
                raise ConfigError(
                    f"--resume: {store.predictions_path}:{number}: not a predictions line (malformed JSON); "
                    "use --overwrite to start the run again"
                ) from None
            if name.split(DRAW_SUFFIX)[0] in done:
                kept.append(line + "\n")
    # Lines of a method that was cut off before results.json listed it are dropped with it.
    store.predictions_path.write_text("".join(kept), encoding="utf-8")
    results["status"] = "running"
    results.setdefault("resumed_at", []).append(datetime.now(UTC).isoformat(timespec="seconds"))
    return results
