"""Optional MLflow logging of a finished run, for teams that already track experiments there.

One MLflow run per fewtune run folder (named after it, tagged with its registry id): the settings as params,
each method's primary metric with its interval, p95 latency and cost per request as metrics (keys
``<method>.<figure>``, the method name with characters MLflow refuses replaced), and the report, results,
config and adapters as artifacts. Needs the ``mlflow`` extra (``pip install 'fewtune[mlflow]'``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewtune.config import CONFIG_FILE, RunConfig
from fewtune.errors import FewtuneError

EXPERIMENT = "fewtune"
ARTIFACTS = ("report.md", "report.html", "results.json", "analysis.json", "config.yaml", "predictions.jsonl")
PARAM_CHARS = (
    500  # MLflow's limit on a param value is 6000; long values (paths, lists) are cut to stay readable
)


def _key(text: str) -> str:
    """A metric key MLflow accepts (alphanumerics, ``_ - . / space``)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[_key(f"{prefix}{key}")] = str(value)[:PARAM_CHARS]
    return flat


def log_run(folder: str | Path, uri: str, run_id: str | None = None) -> str:
    """Log the run in ``folder`` to the MLflow tracking server at ``uri``; returns the MLflow run id."""
    try:
        import mlflow
    except ImportError:
        raise FewtuneError("--mlflow needs the mlflow extra: pip install 'fewtune[mlflow]'") from None
    from fewtune.results.rows import rows
    from fewtune.results.run_folder import read_analysed

    folder = Path(folder)
    results = read_analysed(folder)
    config = RunConfig.load_values(folder) if (folder / CONFIG_FILE).is_file() else {}
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(EXPERIMENT)
        tags = {
            "fewtune.folder": str(folder.resolve()),
            "fewtune.task": str((results.get("task") or {}).get("name")),
        }
        if run_id:
            tags["fewtune.run_id"] = run_id
        with mlflow.start_run(run_name=folder.resolve().name, tags=tags) as run:
            mlflow.log_params(_flat(config))
            for row in rows(results):
                name = _key(row.name)
                primary = row.primary
                figures = {
                    "primary": primary.get("value"),
                    "primary_ci_low": (primary.get("ci95") or [None, None])[0],
                    "primary_ci_high": (primary.get("ci95") or [None, None])[1],
                    "p95_ms": row.p95,
                    "cost_per_request": row.per_request_cost,
                    "train_seconds": row.train_seconds,
                }
                mlflow.log_metrics({f"{name}.{k}": float(v) for k, v in figures.items() if v is not None})
            for artifact in ARTIFACTS:
                if (folder / artifact).is_file():
                    mlflow.log_artifact(str(folder / artifact))
            if (folder / "adapters").is_dir():
                mlflow.log_artifacts(str(folder / "adapters"), artifact_path="adapters")
            return str(run.info.run_id)
    except mlflow.exceptions.MlflowException as err:
        raise FewtuneError(f"--mlflow {uri}: {str(err).splitlines()[0]}") from None
