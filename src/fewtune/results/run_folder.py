"""Reading a run folder: results.json, predictions.jsonl and the settings saved in config.yaml; and the
report's own analysis.json, which holds what the report adds (costs, break-even, the recommendation) so that
results.json stays as the run wrote it."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from fewtune.config import CostArgs
from fewtune.errors import ConfigError, FewtuneError
from fewtune.results.run_record import REPORT_KEYS, REPORT_ROW_KEYS


def read_run(folder: str | Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """results.json and predictions.jsonl (grouped by method name, in row order) of a run folder."""
    folder = Path(folder)
    path = folder / "results.json"
    if not path.is_file():
        raise FewtuneError(f"{folder}: no results.json here; give a run folder written by `fewtune run`")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FewtuneError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
    from fewtune.results.run_record import RunRecord

    record = RunRecord.from_dict(results, path)  # earlier versions are read as this one
    if not record.methods:
        raise FewtuneError(f"{path}: no finished methods to report yet")
    results = record.to_dict()
    predictions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    pred_path = folder / "predictions.jsonl"
    if pred_path.is_file():
        with pred_path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise FewtuneError(f"{pred_path}:{number}: malformed JSON ({err.msg})") from None
                predictions[row.get("name") or row["method"]].append(row)
    for rows in predictions.values():
        rows.sort(key=lambda r: r["row"])
    return results, dict(predictions)


def cost_args_for(folder: str | Path, overrides: dict[str, Any] | None = None) -> CostArgs:
    """The run's saved ``cost`` settings (config.yaml), with non-None ``overrides`` on top."""
    values: dict[str, Any] = {}
    config = Path(folder) / "config.yaml"
    if config.is_file():
        try:
            saved = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            raise ConfigError(f"{config}: invalid YAML") from None
        values.update((saved.get("cost") or {}) if isinstance(saved, dict) else {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return CostArgs(**values)
    except TypeError as err:
        raise ConfigError(f"{config}: bad cost section ({err})") from None


def saved_setting(folder: Path, section: str, key: str) -> Any:
    """One value from the run's config.yaml, or None."""
    config = folder / "config.yaml"
    if not config.is_file():
        return None
    try:
        saved = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return None
    return ((saved.get(section) or {}) if isinstance(saved, dict) else {}).get(key)


def saved_setting_top(folder: Path, key: str) -> Any:
    """A top-level value of the run's config.yaml (``model``, ``mlflow``, ...), or None."""
    config = folder / "config.yaml"
    try:
        saved = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    return saved.get(key) if isinstance(saved, dict) else None


ANALYSIS_FILE = "analysis.json"


def analysis_of(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the report added to or changed in a run's results: top-level keys, and per method row (by name)
    the row keys, under ``methods``."""
    added: dict[str, Any] = {
        k: v
        for k, v in after.items()
        if k != "methods" and (k in REPORT_KEYS or k not in before or before[k] != v)
    }
    rows_before = {row.get("name", row.get("method")): row for row in before.get("methods") or []}
    methods = {}
    for row in after.get("methods") or []:
        old = rows_before.get(row.get("name"), {})
        changed = {k: v for k, v in row.items() if k in REPORT_ROW_KEYS or k not in old or old[k] != v}
        if changed:
            methods[row["name"]] = changed
    added["methods"] = methods
    return added


def read_analysed(folder: str | Path) -> dict[str, Any]:
    """results.json with the report's analysis.json laid over it: the view the report shows."""
    folder = Path(folder)
    results: dict[str, Any] = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    path = folder / ANALYSIS_FILE
    if not path.is_file():
        return results
    analysis = json.loads(path.read_text(encoding="utf-8"))
    rows = analysis.pop("methods", {})
    for row in results.get("methods") or []:
        row.update(rows.get(row.get("name"), {}))
    return {**results, **analysis}
