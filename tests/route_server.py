"""A stand-in for ``fewtune serve``'s route API (``GET /v1/routes``, ``PUT /v1/routes/NAME``), for the
release commands' tests: it can answer 503 a given number of times first, as a restarting server does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from servers import serving


@dataclass
class RouteState:
    weight: float = 0.5
    failures_left: int = 0
    """Calls to answer 503 before answering properly."""
    calls: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


@contextmanager
def route_server(state: RouteState) -> Iterator[str]:
    """Serve one route, ``support`` (baseline few-shot, candidate lora) at ``state.weight``; yields a URL."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    def route() -> dict[str, Any]:
        return {"name": "support", "baseline": "few-shot", "candidate": "lora", "weight": state.weight}

    def unavailable(call: str) -> JSONResponse | None:
        state.calls.append(call)
        if state.failures_left > 0:
            state.failures_left -= 1
            return JSONResponse({"error": {"message": "restarting"}}, status_code=503)
        return None

    @app.get("/v1/routes")
    def routes() -> Any:
        return unavailable("get") or {"routes": [route()]}

    @app.put("/v1/routes/{name}")
    def set_weight(name: str, body: dict[str, Any]) -> Any:
        failed = unavailable("put")
        if failed:
            return failed
        state.weight = float(body["weight"])
        state.reasons.append(str(body.get("reason")))
        return route()

    with serving(app) as url:
        yield url
