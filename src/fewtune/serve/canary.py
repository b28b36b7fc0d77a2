"""Methods and canary routes on the server: ``model`` names a method of the served run, or a route.

``POST /v1/chat/completions`` with ``model`` a method name (``"lora n=200"``) answers with that method's
label for the last user message; with ``model`` a route name it first picks the route's arm for the caller
(:mod:`fewtune.serve.routes`). The answer's ``id`` is the request id, and ``fewtune`` in the answer names
the route, the arm and the method. The request log line records the route, the arm, the request id, the
cost of the request and the answer (a label, so that feedback can be scored later).

``GET /v1/routes`` lists the routes (a remote arm as ``METHOD@remote`` unless the caller holds the operator
key); ``PUT /v1/routes/NAME`` with ``{"weight": W, "by": "owner"}`` moves the candidate's share (operator key,
:mod:`fewtune.serve.operator`; in flight requests finish on the arm they were given, so a rollback loses
none). ``POST /v1/feedback`` with ``{"request_id": ..., "answer": ...}`` (operator key) records the right
answer for a request this server answered, once per request (appended to the feedback log).

A route's arms are reached only through the route: naming an arm's spec, or a method that is a route's arm,
as ``model`` is a 404, so no caller can step around the split. An arm that fails is a 502 (504 past its
time), never a 500, and is written to the server's log with its URL; the caller's message names no URL.
When a route's remote candidate fails, the baseline answers the request instead: the caller sees no
error, and the request log charges the failure to the candidate (:mod:`fewtune.serve.observe`), so the
monitor rolls it back on its own evidence.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from fastapi import Depends, Request
from pydantic import BaseModel, Field

from fewtune.decide.cost import PriceTable
from fewtune.serve.arms import Answer, Arm, ArmError, RemoteArm, RunJob, public_spec
from fewtune.serve.observe import FailedArm
from fewtune.serve.operator import OperatorKey
from fewtune.serve.protocol import APIError, ChatCompletion
from fewtune.serve.routes import BASELINE, CANDIDATE, Route, RouteTable

USER_HEADER = "x-fewtune-user"
"""Header that names the caller for sticky routing when the request has no ``user`` field."""
MAX_ANSWERED = 100_000
"""Request ids kept for feedback (the latest; about 10 MB): feedback for an older one is refused, and so
the feedback log holds at most one line per answered request."""
CANDIDATE_SHARE = 0.5
"""Share of the request's time a remote candidate may take before the baseline is asked instead."""


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
        self._answered: OrderedDict[str, None] = OrderedDict()
        """Request ids answered and not yet given feedback, oldest first (at most :data:`MAX_ANSWERED`)."""

    def _route_arms(self) -> set[str]:
        specs = set()
        for name in self.routes.names():
            route = self.routes.get(name)
            if route is not None:
                specs |= {route.baseline, route.candidate}
        return specs

    def _methods(self) -> list[str]:
        """The methods a caller may name: not a remote arm, nor a route's arm (reached by its route)."""
        arms = self._route_arms()
        return [a for a in self.arms if "@" not in a and a not in arms]

    def handles(self, model: str) -> bool:
        return model in self.arms or self.routes.get(model) is not None

    def names(self) -> list[str]:
        return [*self.routes.names(), *self._methods()]

    async def chat(self, body: Any, headers: Any, record: Any, run_job: RunJob) -> RoutedChatCompletion:
        """Answer a chat request for a method or a route (module docstring)."""
        text = _user_text(body.messages)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        record.request_id = request_id
        route = self.routes.get(body.model)
        if route is not None:
            caller = str((body.model_extra or {}).get("user") or headers.get(USER_HEADER) or request_id)
            record.route, record.arm = route.name, route.arm_for(caller)
            record.model, record.served = body.model, True
            arm, answer, seconds = await self._routed(route, record, text, run_job)
        else:
            if body.model not in self._methods():
                routes = ", ".join(self.routes.names())
                message = f"{public_spec(body.model)!r} is an arm of a route; ask the route ({routes})"
                raise APIError(404, message, param="model")
            arm = self.arms[body.model]
            record.model, record.served = body.model, True
            answer, seconds = await self._attempt(arm, text, run_job, self.timeout_s, None)
        record.adapter = arm.method.adapter
        record.prompt_tokens, record.completion_tokens = answer.prompt_tokens, answer.completion_tokens
        record.cost_usd = arm.cost(answer, seconds, self.prices)
        record.answer = answer.text if answer.is_label else None
        self._remember(request_id)
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

    async def _attempt(
        self, arm: Arm, text: str, run_job: RunJob, budget_s: float, where: str | None
    ) -> tuple[Answer, float]:
        """``arm``'s answer and its seconds; a failure is a logged 502 (504 past ``budget_s``)."""
        start = time.perf_counter()
        try:
            answer = await asyncio.wait_for(arm.answer(text, run_job), budget_s)
        except TimeoutError:
            reason = f"{public_spec(arm.name)}: no answer within {budget_s:g} s"
            raise _failed(504, reason, reason, where, "timeout") from None
        except ArmError as err:
            raise _failed(502, str(err), err.detail, where, "upstream_error") from None
        return answer, time.perf_counter() - start

    async def _routed(
        self, route: Route, record: Any, text: str, run_job: RunJob
    ) -> tuple[Arm, Answer, float]:
        """The route's arm for this caller answers; a remote candidate that fails (unreachable, an error,
        too slow) leaves the request to the baseline, its failure kept on ``record``."""
        arm = self.arms[route.spec(record.arm)]
        where = f"route {route.name}, {record.arm} arm"
        if record.arm != CANDIDATE or not isinstance(arm, RemoteArm):
            return arm, *await self._attempt(arm, text, run_job, self.timeout_s, where)
        start = time.perf_counter()
        try:
            return arm, *await self._attempt(arm, text, run_job, self.timeout_s * CANDIDATE_SHARE, where)
        except APIError as err:
            spent = time.perf_counter() - start
            record.failover = FailedArm(CANDIDATE, err.status, spent, arm.method.adapter)
            _log(f"{where}: answered by the baseline instead")
        record.arm = BASELINE
        baseline = self.arms[route.baseline]
        left = max(self.timeout_s - spent, 1.0)
        return baseline, *await self._attempt(
            baseline, text, run_job, left, f"route {route.name}, baseline arm"
        )

    def _remember(self, request_id: str) -> None:
        with self._lock:
            self._answered[request_id] = None
            while len(self._answered) > MAX_ANSWERED:
                self._answered.popitem(last=False)

    def set_weight(self, name: str, body: WeightRequest, record: Any = None) -> dict[str, Any]:
        if self.routes.get(name) is None:
            raise APIError(404, f"no route {name!r}; routes: {', '.join(self.routes.names()) or 'none'}")
        from dataclasses import asdict

        changed = self.routes.set_weight(name, body.weight, body.by)
        if record is not None:  # the request log's line for the change
            record.route, record.weight, record.changed_by = name, changed.weight, changed.changed_by
        return asdict(changed)

    def listing(self, full: bool) -> list[dict[str, Any]]:
        """The routes; a remote arm's URL only when ``full`` (an operator asks)."""
        routes = self.routes.all()
        if not full:
            for route in routes:
                route["baseline"], route["candidate"] = map(
                    public_spec, (route["baseline"], route["candidate"])
                )
        return routes

    def feedback(self, body: FeedbackRequest) -> dict[str, Any]:
        if self.feedback_log is None:
            raise APIError(404, "this server keeps no feedback log")
        with self._lock:
            if body.request_id not in self._answered:
                message = f"no answered request {body.request_id!r} awaits feedback on this server "
                message += f"(ids of its last {MAX_ANSWERED:,} answers since it started, one feedback each)"
                raise APIError(404, message, param="request_id")
            del self._answered[body.request_id]
            line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **body.model_dump()}
            self.feedback_log.parent.mkdir(parents=True, exist_ok=True)
            with self.feedback_log.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
        return {"recorded": True}

    async def close(self) -> None:
        for arm in self.arms.values():
            closing = getattr(arm, "close", None)
            if closing is not None:
                await closing()


def _log(message: str) -> None:
    print(f"fewtune serve: {message}", file=sys.stderr, flush=True)


def _failed(status: int, public: str, detail: str, where: str | None, kind: str) -> APIError:
    """The caller's error (no URL in it), after the server's log line (the URL and the cause)."""
    _log(f"{where or 'method'}: {detail}")
    return APIError(status, f"{where}: {public}" if where else public, kind)


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
    arm_keys: Mapping[str, str] | None = None,
    allow_http: bool = False,
) -> Canary | None:
    """The served methods of a classification run and the routes over them (None: nothing to serve by
    name). A route needs a run folder: its arms are the run's methods. ``arm_keys``: host -> key of the
    remote arms; ``allow_http``: plain http to another machine (:func:`~fewtune.serve.arms.build_arm`)."""
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
                arms[spec] = build_arm(spec, methods, arm_keys, allow_http, timeout_s * CANDIDATE_SHARE)
    results, _ = read_run(run_dir)
    device = (results.get("hardware") or {}).get("device")
    prices = load_price_table(costs or cost_args_for(run_dir).costs, device)
    table = RouteTable(routes_file or run_dir / "routes.json", routes)
    return Canary(arms, table, prices, feedback_log or run_dir / "feedback.jsonl", timeout_s)


def add_canary_routes(app: Any, canary: Canary, operator: OperatorKey) -> None:
    """``GET /v1/routes``, ``PUT /v1/routes/NAME`` and ``POST /v1/feedback`` on ``app`` (module docstring);
    under ``/v1``, so the guard authenticates and logs them like every API call, and the last two need the
    operator key."""

    @app.get("/v1/routes")
    async def routes(request: Request) -> dict[str, Any]:
        return {"routes": canary.listing(full=operator.allows(request.headers))}

    @app.put("/v1/routes/{name}", dependencies=[Depends(operator)])
    async def set_route(name: str, body: WeightRequest, request: Request) -> dict[str, Any]:
        from fewtune.serve.guard import RECORD_KEY

        return canary.set_weight(name, body, request.scope.get(RECORD_KEY))

    @app.post("/v1/feedback", dependencies=[Depends(operator)])
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        return canary.feedback(body)
