"""Reading a run folder: results.json, predictions.jsonl and the settings saved in config.yaml; and the
report's own analysis.json, which holds what the report adds (costs, break-even, the recommendation) so that
results.json stays as the run wrote it."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from fewtune.config import CONFIG_FILE, CostArgs, RunConfig
from fewtune.errors import ConfigError, FewtuneError
from fewtune.results.run_record import REPORT_KEYS, REPORT_ROW_KEYS, RunRecord

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.jsonl"
ANALYSIS_FILE = "analysis.json"


def read_run(folder: str | Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """results.json and predictions.jsonl (grouped by method name, in row order) of a run folder."""
    record = read_record(folder)
    if not record.methods:
        raise FewtuneError(f"{Path(folder) / RESULTS_FILE}: no finished methods to report yet")
    return record.to_dict(), read_predictions(folder)


def read_record(folder: str | Path) -> RunRecord:
    """results.json as a :class:`RunRecord` (earlier versions are read as this one), possibly without
    finished methods yet; one-line errors name the file."""
    folder = Path(folder)
    path = folder / RESULTS_FILE
    if not path.is_file():
        raise FewtuneError(f"{folder}: no results.json here; give a run folder written by `fewtune run`")
    record = RunRecord.from_dict(_read_json(path), path)
    record.folder = folder
    return record


def read_predictions(folder: str | Path) -> dict[str, list[dict[str, Any]]]:
    """predictions.jsonl's rows grouped by method name, in row order; empty when the file is absent."""
    predictions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    pred_path = Path(folder) / PREDICTIONS_FILE
    if pred_path.is_file():
        with pred_path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise FewtuneError(f"{pred_path}:{number}: malformed JSON ({err.msg})") from None
                if not isinstance(row, dict) or "method" not in row or "row" not in row:
                    raise FewtuneError(f"{pred_path}:{number}: a prediction needs 'method' and 'row' fields")
                predictions[row.get("name") or row["method"]].append(row)
    for rows in predictions.values():
        rows.sort(key=lambda r: r["row"])
    return dict(predictions)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FewtuneError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise FewtuneError(f"{path}: not a UTF-8 text file") from None


def cost_args_for(folder: str | Path, overrides: Mapping[str, Any] | None = None) -> CostArgs:
    """The run's saved ``cost`` settings (config.yaml), with non-None ``overrides`` on top."""
    values: dict[str, Any] = {}
    config = Path(folder) / CONFIG_FILE
    if config.is_file():
        values.update(RunConfig.load_values(config).get("cost") or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return CostArgs(**values)
    except TypeError as err:
        raise ConfigError(f"{config}: bad cost section ({err})") from None


def _saved_or_none(folder: Path) -> Mapping[str, Any] | None:
    """The run's config.yaml as written, or None when it is missing or unreadable."""
    config = folder / CONFIG_FILE
    try:
        return RunConfig.load_values(config) if config.is_file() else None
    except ConfigError:
        return None


def saved_setting(folder: Path, section: str, key: str) -> Any:
    """One value from the run's config.yaml, or None."""
    saved = _saved_or_none(folder) or {}
    return (saved.get(section) or {}).get(key)


def saved_setting_top(folder: Path, key: str) -> Any:
    """A top-level value of the run's config.yaml (``model``, ``mlflow``, ...), or None."""
    return (_saved_or_none(folder) or {}).get(key)


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


def settings_from_file(path: str | Path) -> RunConfig:
    """A YAML settings file (a run's config.yaml, or a ``--config`` file) as :class:`RunConfig`
    (:meth:`RunConfig.load`, kept for ``fewtune.api``)."""
    return RunConfig.load(path)


class RunFolder:
    """A run folder, read through one typed reader: its record (results.json), predictions
    (predictions.jsonl), settings (config.yaml) and the report's analysis (analysis.json).

    Opening it reads the record, so a folder without a readable results.json fails at once, in one line;
    the other files are read when first asked for, each failing in one line naming the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.record: RunRecord = read_record(self.path)
        """What the run measured: its typed method rows (``record.methods``) and header."""

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @cached_property
    def predictions(self) -> dict[str, list[dict[str, Any]]]:
        """Each method's predictions.jsonl rows (by method name, in test-row order)."""
        return read_predictions(self.path)

    @cached_property
    def settings(self) -> RunConfig:
        """The resolved settings the run was made with (config.yaml); ``fewtune.run(settings)`` re-runs it."""
        path = self.path / CONFIG_FILE
        if not path.is_file():
            raise FewtuneError(f"{path}: no such file; the run's settings are saved there by `fewtune run`")
        return RunConfig.load(path)

    @cached_property
    def analysis(self) -> Mapping[str, Any]:
        """What the report computed (analysis.json): ``recommendation``, ``break_even``, ``cost_assumptions``,
        ``curves`` and, under ``methods``, each row's ``costs``."""
        path = self.path / ANALYSIS_FILE
        if not path.is_file():
            raise FewtuneError(f"{path}: no such file; write the report first: fewtune report {self.path}")
        analysis = _read_json(path)
        if not isinstance(analysis, dict):
            raise FewtuneError(f"{path}: expected a JSON object, got {type(analysis).__name__}")
        return analysis

    @property
    def recommendation(self) -> Mapping[str, Any]:
        """The report's verdict: ``headline``, ``choice``, ``method``, ``reasons``, ``next_steps``, ..."""
        verdict = self.analysis.get("recommendation")
        if not isinstance(verdict, dict):
            raise FewtuneError(f"{self.path / ANALYSIS_FILE}: no recommendation in it")
        return verdict
