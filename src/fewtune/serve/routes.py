"""Canary routes: a route name splits its traffic between a baseline arm and a candidate arm by weight.

Assignment is sticky per caller: the request's ``user`` field (else the ``X-Fewtune-User`` header) is hashed
with the route's name to a point in [0, 1); the caller gets the candidate while that point is below the
candidate's weight. Raising the weight only moves more callers to the candidate, lowering it only moves
callers back, and a caller never flips between arms while the weight stands. A request with neither field
is assigned on its own request id (not sticky).

Routes are set at start (``--route``) and changed at run time (``PUT /admin/routes/NAME``); every change is
written to the routes file (atomically) so a restart keeps it: a route in the file with the same arms as the
flag keeps the file's weight (a rollback stays rolled back), a route whose arms changed takes the flag's.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fewtune.errors import ConfigError
from fewtune.results.store import write_json_atomic

BASELINE, CANDIDATE = "baseline", "candidate"


@dataclass(frozen=True)
class Route:
    name: str
    baseline: str
    """Arm spec: a method name, or METHOD@URL#MODEL."""
    candidate: str
    weight: float
    """Share of callers sent to the candidate, 0-1."""
    changed_at: str = ""
    changed_by: str = ""

    def arm_for(self, caller: str) -> str:
        """``baseline`` or ``candidate`` for this caller (module docstring)."""
        digest = hashlib.sha256(f"{self.name}\x00{caller}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        return CANDIDATE if point < self.weight else BASELINE

    def spec(self, arm: str) -> str:
        return self.candidate if arm == CANDIDATE else self.baseline


def parse_route(value: str) -> Route:
    """``NAME=BASELINE,CANDIDATE[:WEIGHT]`` (weight default 0.05, the canary share)."""
    from fewtune.decide.thresholds import CANARY_TRAFFIC_SHARE

    name, sep, arms = value.partition("=")
    if not sep or not name.strip() or "," not in arms:
        raise ConfigError(f"--route takes NAME=BASELINE,CANDIDATE[:WEIGHT], got {value!r}")
    baseline, _, candidate = arms.partition(",")
    weight = CANARY_TRAFFIC_SHARE
    head, colon, tail = candidate.rpartition(":")
    if colon:
        try:
            weight = float(tail)
            candidate = head
        except ValueError:
            pass  # a URL's colon, not a weight
    return checked(Route(name.strip(), baseline.strip(), candidate.strip(), weight))


def checked(route: Route) -> Route:
    if not 0 <= route.weight <= 1:
        raise ConfigError(f"route {route.name}: the candidate's weight must be in [0, 1], got {route.weight}")
    if not route.baseline or not route.candidate:
        raise ConfigError(f"route {route.name}: needs a baseline and a candidate arm")
    return route


class RouteTable:
    """The server's routes, shared by request handlers (thread-safe) and persisted on every change."""

    def __init__(self, path: Path | None, given: list[Route]) -> None:
        self.path = path
        self._lock = threading.Lock()
        saved = self._load()
        self._routes: dict[str, Route] = {}
        for route in given:
            old = saved.get(route.name)
            same_arms = old is not None and (old.baseline, old.candidate) == (route.baseline, route.candidate)
            self._routes[route.name] = old if same_arms and old is not None else route
        if given:  # only the routes given at start are served; their file keeps their state
            self._save()

    def _load(self) -> dict[str, Route]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {r["name"]: checked(Route(**r)) for r in data["routes"]}
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{self.path}: not a routes file written by fewtune serve ({err})") from None

    def _save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {"routes": [asdict(r) for r in self._routes.values()]})

    def get(self, name: str) -> Route | None:
        with self._lock:
            return self._routes.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._routes)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._routes.values()]

    def set_weight(self, name: str, weight: float, by: str) -> Route:
        with self._lock:
            route = self._routes[name]
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            new = checked(Route(route.name, route.baseline, route.candidate, weight, now, by))
            self._routes[name] = new
            self._save()
            return new
