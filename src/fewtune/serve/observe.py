"""What the server records: Prometheus metrics and a JSON-lines request log.

Both are labelled by the served model name (the base's, an adapter's, a method's or a route's) and the
endpoint. Neither ever holds a prompt, a free-text output or the API key: the log line is time, model,
adapter, endpoint, latency, token counts and the HTTP status, and for a method or route request its id,
route, arm, cost and answered label (docs/request-log.schema.json). A route's candidate that failed and was
answered for by the baseline leaves a line of its own (the candidate's status, ``"failover": true``) before
the request's, so the monitor counts the failure against the candidate; a route change's line names the
route and its new weight.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds: from a cached-prefix label score (tens of ms) to a long CPU generation (a minute or more)."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
UNKNOWN_MODEL = "<unknown>"
"""The model label of requests that named no served model: a client's typos must not mint label values."""


@dataclass
class RequestRecord:
    """Filled in by the endpoint while it handles a request, read by the middleware once it answered."""

    model: str | None = None
    """The ``model`` the request named."""
    served: bool = False
    """``model`` is one this server serves (only then is it a metrics label)."""
    adapter: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_id: str | None = None
    """The answer's id, for a request answered by a served method or route (what feedback refers to)."""
    route: str | None = None
    arm: str | None = None
    """``baseline`` or ``candidate`` of the route."""
    cost_usd: float | None = None
    answer: str | None = None
    """The label a method answered (a label from the run's set, never free text)."""
    failover: FailedArm | None = None
    """The route's arm that failed before the other answered (:mod:`fewtune.serve.canary`)."""
    weight: float | None = None
    """A route change's new candidate weight (``route`` names the route)."""
    changed_by: str | None = None


@dataclass(frozen=True)
class FailedArm:
    """A route arm's failed attempt at a request that another arm then answered."""

    arm: str
    status: int
    """The status the caller would have got: 502 (unreachable, an error, a broken answer) or 504."""
    seconds: float
    adapter: str | None = None


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (two apps in one process do not clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "endpoint")
        self.latency = Histogram(
            "fewtune_request_latency_seconds",
            "Time from request to response, by served model and endpoint.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "fewtune_prompt_tokens", "Prompt tokens processed.", labels, registry=self.registry
        )
        self.completion_tokens = Counter(
            "fewtune_completion_tokens", "Tokens generated.", labels, registry=self.registry
        )
        self.batch_prompts = Histogram(
            "fewtune_batch_prompts",
            "Prompts the worker ran together in one batch (one adapter, one set of decoding settings).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "fewtune_request_errors",
            "Requests answered with an HTTP error status.",
            (*labels, "status"),
            registry=self.registry,
        )
        self.failovers = Counter(
            "fewtune_route_failovers",
            "Requests a route's failing candidate left to its baseline (the caller got its answer).",
            ("route",),
            registry=self.registry,
        )

    def observe(self, record: RequestRecord, endpoint: str, seconds: float, status: int) -> None:
        model = record.model if record.served and record.model else UNKNOWN_MODEL
        self.latency.labels(model, endpoint).observe(seconds)
        if record.prompt_tokens > 0:  # a counter refuses a negative step: an arm's bad count is no crash
            self.prompt_tokens.labels(model, endpoint).inc(record.prompt_tokens)
        if record.completion_tokens > 0:
            self.completion_tokens.labels(model, endpoint).inc(record.completion_tokens)
        if status >= 400:
            self.errors.labels(model, endpoint, str(status)).inc()
        if record.failover is not None and record.route is not None:
            self.failovers.labels(record.route).inc()


class RequestLog:
    """Appends one JSON line per API request to ``path`` (thread-safe; each line flushed as written)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: RequestRecord, endpoint: str, seconds: float, status: int) -> None:
        if self.path is None:
            return
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        lines = []
        if record.failover is not None:  # the failed arm's attempt, counted against it by the monitor
            failed = record.failover
            lines.append(
                _line(now, record, endpoint, failed.seconds, failed.status)
                | {
                    "adapter": failed.adapter,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "arm": failed.arm,
                    "cost_usd": None,
                    "answer": None,
                    "failover": True,
                }
            )
        lines.append(_line(now, record, endpoint, seconds, status))
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(line) + "\n" for line in lines))


def _line(now: str, record: RequestRecord, endpoint: str, seconds: float, status: int) -> dict[str, Any]:
    line: dict[str, Any] = {
        "time": now,
        "model": record.model,
        "adapter": record.adapter,
        "endpoint": endpoint,
        "latency_ms": round(seconds * 1000, 2),
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "status": status,
    }
    if record.request_id is not None:  # a method or route request (docs/request-log.schema.json)
        line |= {
            "request_id": record.request_id,
            "route": record.route,
            "arm": record.arm,
            "cost_usd": record.cost_usd,
            "answer": record.answer,
        }
    elif record.weight is not None:  # a route change
        line |= {"route": record.route, "weight": record.weight, "changed_by": record.changed_by}
    return line
