"""Methods and canary routes on the server: ``model`` names a method of the served run, or a route.

``POST /v1/chat/completions`` with ``model`` a method name (``"lora n=200"``) answers with that method's
label for the last user message; with ``model`` a route name it first picks the route's arm for the caller
(:mod:`fewtune.serve.routes`). The answer's ``id`` is the request id, and ``fewtune`` in the answer names
the route, the arm and the method. The request log line records the route, the arm, the request id, the
cost of the request and the answer (a label, so that feedback can be scored later).

``GET /v1/routes`` lists the routes; ``PUT /v1/routes/NAME`` with ``{"weight": W, "by": "owner"}`` moves
the candidate's share (authenticated like every ``/v1`` call; in flight requests finish on the arm they
were given, so a rollback loses none). ``POST /v1/feedback`` with ``{"request_id": ..., "answer": ...}``
records the right answer for an earlier request (appended to the feedback log).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from pydantic import BaseModel, Field

from fewtune.decide.cost import PriceTable
from fewtune.serve.arms import Arm, ArmError, RunJob
from fewtune.serve.protocol import APIError, ChatCompletion
from fewtune.serve.routes import Route, RouteTable

USER_HEADER = "x-fewtune-user"
"""Header that names the caller for sticky routing when the request has no ``user`` field."""


class WeightRequest(BaseModel):
    weight: float = Field(ge=0, le=1)
    by: str = Field(default="unknown", max_length=200)
    reason: str = Field(default="", max_length=2000)


class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=200)
    answer: str = Field(max_length=10_000)


class RouteInfo(TypedDict):
    """Which route and arm answered, and the method that arm serves (``route`` and ``arm`` are None for a
    method asked by name)."""

    route: str | None
    arm: str | None
    method: str


class RoutedChatCompletion(ChatCompletion):
    """A chat completion answered by a method or a route, saying which."""

    fewtune: RouteInfo


class Canary:
    """The served methods (each a local arm), the routes, and the arms the routes use."""

    def __init__(
        self,
        arms: dict[str, Arm],
        routes: RouteTable,
        prices: PriceTable,
        feedback_log: Path | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.arms = arms
        """By spec: every method name, and every route arm's spec."""
        self.routes = routes
        self.prices = prices
        self.feedback_log = feedback_log
        self.timeout_s = timeout_s
        self._lock = threading.Lock()

    def handles(self, model: str) -> bool:
        return model in self.arms or self.routes.get(model) is not None

    def names(self) -> list[str]:
        return [*self.routes.names(), *(a for a in self.arms if "@" not in a)]

    async def chat(self, body: Any, headers: Any, record: Any, run_job: RunJob) -> RoutedChatCompletion:
        """Answer a chat request for a method or a route (module docstring)."""
        text = _user_text(body.messages)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        record.request_id = request_id
        route = self.routes.get(body.model)
        if route is not None:
            caller = str((body.model_extra or {}).get("user") or headers.get(USER_HEADER) or request_id)
            arm_name = route.arm_for(caller)
            spec = route.spec(arm_name)
            record.route, record.arm = route.name, arm_name
        else:
            spec = body.model
        arm = self.arms[spec]
        record.model, record.served, record.adapter = body.model, True, arm.method.adapter
        start = time.perf_counter()
        try:
            answer = await asyncio.wait_for(arm.answer(text, run_job), self.timeout_s)
        except TimeoutError:
            raise APIError(504, f"{spec}: no answer within {self.timeout_s:g} s", "timeout") from None
        except ArmError as err:
            raise APIError(502, str(err), "upstream_error") from None
        seconds = time.perf_counter() - start
        record.prompt_tokens, record.completion_tokens = answer.prompt_tokens, answer.completion_tokens
        record.cost_usd = arm.cost(answer, seconds, self.prices)
        record.answer = answer.text if answer.is_label else None
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            },
            "fewtune": {"route": record.route, "arm": record.arm, "method": arm.method.name},
        }

    def set_weight(self, name: str, body: WeightRequest) -> dict[str, Any]:
        if self.routes.get(name) is None:
            raise APIError(404, f"no route {name!r}; routes: {', '.join(self.routes.names()) or 'none'}")
        from dataclasses import asdict

        return asdict(self.routes.set_weight(name, body.weight, body.by))

    def feedback(self, body: FeedbackRequest) -> dict[str, Any]:
        if self.feedback_log is None:
            raise APIError(404, "this server keeps no feedback log")
        line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **body.model_dump()}
        self.feedback_log.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.feedback_log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        return {"recorded": True}

    async def close(self) -> None:
        for arm in self.arms.values():
            closing = getattr(arm, "close", None)
            if closing is not None:
                await closing()


def _user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The last user message's text: what the application sends a method (a 400 when there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str) and content.strip():
                return content
            if isinstance(content, list):
                parts = [
                    p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
                ]
                if "".join(parts).strip():
                    return " ".join(parts)
    raise APIError(400, "a method answers the last user message: send one with text", param="messages")


def build_canary(
    run_dir: Path | None,
    adapters: dict[str, Path],
    routes: list[Route],
    routes_file: Path | None,
    feedback_log: Path | None,
    costs: str | None,
    timeout_s: float,
) -> Canary | None:
    """The served methods of a classification run and the routes over them (None: nothing to serve by
    name). A route needs a run folder: its arms are the run's methods."""
    from fewtune.decide.cost import load_price_table
    from fewtune.errors import ConfigError, FewtuneError
    from fewtune.results.run_folder import cost_args_for, read_run
    from fewtune.serve.arms import LocalArm, build_arm
    from fewtune.serve.methods import methods_of_run

    if run_dir is None:
        if routes:
            raise ConfigError("--route needs a run folder: its arms are the run's methods")
        return None
    try:
        methods = methods_of_run(run_dir, adapters)
    except FewtuneError:
        if routes:
            raise
        return None  # not a classification run, or no finished method: serve the model and adapters only
    arms: dict[str, Arm] = {name: LocalArm(name, method) for name, method in methods.items()}
    for route in routes:
        for spec in (route.baseline, route.candidate):
            if spec not in arms:
                arms[spec] = build_arm(spec, methods)
    results, _ = read_run(run_dir)
    device = (results.get("hardware") or {}).get("device")
    prices = load_price_table(costs or cost_args_for(run_dir).costs, device)
    table = RouteTable(routes_file or run_dir / "routes.json", routes)
    return Canary(arms, table, prices, feedback_log or run_dir / "feedback.jsonl", timeout_s)


def add_canary_routes(app: Any, canary: Canary) -> None:
    """``GET /v1/routes``, ``PUT /v1/routes/NAME`` and ``POST /v1/feedback`` on ``app`` (module docstring);
    under ``/v1``, so the guard authenticates and logs them like every API call."""

    @app.get("/v1/routes")
    async def routes() -> dict[str, Any]:
        return {"routes": canary.routes.all()}

    @app.put("/v1/routes/{name}")
    async def set_route(name: str, body: WeightRequest) -> dict[str, Any]:
        return canary.set_weight(name, body)

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        return canary.feedback(body)
