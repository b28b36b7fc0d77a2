"""The release policy: every threshold ``fewtune gate`` (and the monitor) judges by, named once.

Defaults are the shared numbers of :mod:`fewtune.decide.thresholds` (the report's rollout plan uses the same
ones); a YAML policy file overrides any of them, e.g.::

    margin_points: 2          # non-inferiority margin on the primary metric, in points
    class_drop_points: 10     # most recall a class may lose against the baseline, in points
    class_floors: {refund: 0.9}   # absolute recall floors for named classes (fields, labels)
    p95_ratio: 1.5            # candidate p95 latency / baseline p95; null = not checked
    cost_ratio: 1.2           # candidate cost per request / baseline's; null = not checked
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fewtune.config import _coerce, read_yaml
from fewtune.config_yaml import key_lines
from fewtune.decide.thresholds import (
    CLASS_DROP_POINTS,
    MARGIN_POINTS,
    ROLLBACK_COST_FACTOR,
    ROLLBACK_ERROR_RATE,
    ROLLBACK_P95_FACTOR,
    SIGNIFICANCE_ALPHA,
)
from fewtune.errors import ConfigError


@dataclass(frozen=True)
class Policy:
    """What a candidate must show against its baseline to be released."""

    margin_points: float = MARGIN_POINTS
    """Non-inferiority margin: the paired 95% interval of candidate minus baseline on the primary metric must
    stay above minus this many points."""
    class_drop_points: float = CLASS_DROP_POINTS
    """Most recall one class (label, field) may lose against the baseline, in points."""
    class_floors: dict[str, float] = field(default_factory=dict)
    """Absolute recall floors (0-1) for named classes, in place of the relative one."""
    unparsed_points: float = ROLLBACK_ERROR_RATE * 100
    """How many points more often than the baseline the candidate may give no valid answer (unparsed,
    schema-invalid or not a label)."""
    p95_ratio: float | None = ROLLBACK_P95_FACTOR
    """Most candidate p95 latency as a multiple of the baseline's; null = not checked."""
    cost_ratio: float | None = ROLLBACK_COST_FACTOR
    """Most candidate cost per request as a multiple of the baseline's; null = not checked."""
    alpha: float = SIGNIFICANCE_ALPHA
    """Error rate of each statistical check (class floors share it, Bonferroni-corrected)."""
    metric: str | None = None
    """Classification only: decide on 'accuracy' or 'macro-f1' instead of the run's automatic choice."""

    def __post_init__(self) -> None:
        for name in NUMBERS:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"policy {name} must be a finite number, got {value}")
        for label, floor in self.class_floors.items():
            if not math.isfinite(floor):
                raise ConfigError(f"policy class_floors.{label} must be a finite number, got {floor}")
        for name in ("margin_points", "class_drop_points", "unparsed_points"):
            if getattr(self, name) < 0:
                raise ConfigError(f"policy {name} must be >= 0, got {getattr(self, name)}")
        for name in ("p95_ratio", "cost_ratio"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"policy {name} must be > 0 or null, got {value}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"policy alpha must be in (0, 1), got {self.alpha}")
        for label, floor in self.class_floors.items():
            if not 0 <= floor <= 1:
                raise ConfigError(f"policy class_floors.{label} must be a recall in [0, 1], got {floor}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NUMBERS = ("margin_points", "class_drop_points", "unparsed_points", "p95_ratio", "cost_ratio", "alpha")


def load_policy(path: str | Path | None) -> Policy:
    """The policy file's values over the defaults; one-line errors name the file (and line)."""
    if path is None:
        return Policy()
    path = Path(path)
    values = read_yaml(path, "policy file", aliases=False)
    if values is None:
        return Policy()
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a policy is a mapping of names to numbers, got {type(values).__name__}")
    known = {f.name for f in fields(Policy)}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown policy keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    floors = values.pop("class_floors", None) or {}
    if not isinstance(floors, dict):
        raise ConfigError(f"{path}: class_floors maps class names to recall floors, e.g. {{refund: 0.9}}")
    try:
        parsed = {str(k): float(v) for k, v in floors.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: class_floors values must be numbers in [0, 1]") from None
    try:
        return Policy(**_coerce("policy", Policy, values), class_floors=parsed)
    except ConfigError as err:
        named = [k for k in known if re.search(rf"\bpolicy[ .]{k}\b", str(err))]
        line = key_lines(path).get(named[0]) if named else None
        raise ConfigError(f"{path}{f':{line}' if line else ''}: {err}") from None
