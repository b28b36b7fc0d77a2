"""The FastAPI app: OpenAI-compatible routes over an :class:`~fewtune.serve.engine.Engine`.

``/v1/*`` needs ``Authorization: Bearer <api key>`` when the app has a key; ``/health`` and ``/metrics``
are open, as in vLLM (a load balancer and a Prometheus scraper hold no key). Without a key, only the
allowed Host names are answered (:mod:`fewtune.serve.guard`, which also times and logs every request).
Route changes, feedback and the fine-tuning API need the operator key (:mod:`fewtune.serve.operator`).

A request waits for its answer at most the server's request timeout (504 past it) and no longer than its
client stays connected; either way its work is cancelled (:meth:`~fewtune.serve.jobs.Job.cancel`). A full
queue is a 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from fewtune.errors import FewtuneError
from fewtune.serve.adapters import DoesNotFit
from fewtune.serve.canary import Canary, add_canary_routes
from fewtune.serve.engine import Engine
from fewtune.serve.guard import RECORD_KEY, Guard, allowed_hosts
from fewtune.serve.jobs import Abandoned, BadRequest, Job, Output, QueueFull, TimedOut, UnknownModel
from fewtune.serve.limits import Limits
from fewtune.serve.observe import Metrics, RequestLog, RequestRecord
from fewtune.serve.operator import OperatorKey
from fewtune.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    LoadAdapterRequest,
    UnloadAdapterRequest,
    chat_response,
    completion_response,
)

if TYPE_CHECKING:
    from fewtune.serve.finetune.service import FineTuning

T = TypeVar("T")

RETRY_AFTER_S = 1
"""Seconds a client refused for a full queue is told to wait (``Retry-After``)."""


def _record(request: Request) -> RequestRecord:
    record = request.scope.get(RECORD_KEY)
    return record if isinstance(record, RequestRecord) else RequestRecord()


def _late(limits: Limits) -> APIError:
    message = f"the request ran past this server's time limit ({limits.request_timeout_s:g} s)"
    return APIError(504, message + "; its work was stopped", "timeout_error")


async def _wait(answer: Awaitable[T], limits: Limits) -> T:
    """The engine's answer, its errors turned into HTTP ones."""
    try:
        return await answer
    except TimedOut:
        raise _late(limits) from None
    except Abandoned as err:
        raise APIError(499, str(err)) from None
    except UnknownModel as err:
        raise APIError(404, str(err), param="model") from None
    except FewtuneError as err:
        raise APIError(400, str(err)) from None
    except Exception as err:  # the worker printed the traceback; the client gets one line
        # its text may name server paths: the client gets the kind, the server log the traceback
        raise APIError(500, f"internal error ({type(err).__name__})", "internal_error") from None


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body was read before: what comes is the
    disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _run(engine: Engine, job: Job, request: Request, limits: Limits) -> list[Output]:
    """Submit ``job`` and wait for its outputs, until its deadline at most and while the client stays
    connected; a job given up on is cancelled (dropped from the queue, or stopped at its next step)."""
    job.deadline = time.monotonic() + limits.request_timeout_s
    try:
        future = engine.submit(job)
    except QueueFull as err:
        raise APIError(
            429, f"{err}; retry later", "rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_S)}
        ) from None
    except BadRequest as err:
        raise APIError(400, str(err)) from None
    answer = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    waiting: list[asyncio.Future[Any]] = [answer, gone]
    try:
        done, _ = await asyncio.wait(
            waiting, timeout=limits.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        gone.cancel()
    if answer not in done:
        answer.cancel()  # so that the worker's late answer or error is not left unread
        job.cancel()
        if gone in done:  # nobody reads this answer; the log and the metrics do
            raise APIError(499, "the client closed the request; its work was stopped")
        raise _late(limits)
    return await _wait(answer, limits)


def _resolve(engine: Engine, record: RequestRecord, model: str) -> str | None:
    record.model = model
    try:
        adapter = engine.resolve(model)
    except UnknownModel as err:
        raise APIError(404, str(err), param="model") from None
    record.served, record.adapter = True, adapter
    return adapter


def _within(limits: Limits, prompts: int, tokens: int) -> None:
    """A 400 naming the limit a request is over."""
    if prompts > limits.max_prompts:
        raise APIError(
            400, f"at most {limits.max_prompts} prompts per request, got {prompts}", param="prompt"
        )
    if tokens > limits.max_tokens:
        message = f"max_tokens is at most {limits.max_tokens} on this server, got {tokens}"
        raise APIError(400, message, param="max_tokens")


def create_app(
    engine: Engine,
    *,
    api_key: str | None = None,
    admin_key: str | None = None,
    request_log: Path | None = None,
    limits: Limits | None = None,
    hosts: Sequence[str] = (),
    canary: Canary | None = None,
    finetune: FineTuning | None = None,
) -> FastAPI:
    """The server's ASGI app over ``engine``; starts the engine's worker with the app, closes it after.

    ``api_key`` None serves ``/v1`` without authentication (the CLI allows that only on loopback).
    ``admin_key``: the operator key route changes, feedback and fine-tuning need; None refuses them when
    there is an ``api_key`` (:mod:`fewtune.serve.operator`).
    ``request_log`` None writes no request log. ``hosts``: Host names answered besides the loopback ones
    when there is no key. ``canary``: the run's methods served by name and the routes over them
    (:mod:`fewtune.serve.canary`). ``finetune``: the Files and Fine-tuning APIs
    (:mod:`fewtune.serve.finetune`), started after the engine and closed before it.
    """
    metrics = Metrics()
    log = RequestLog(request_log)
    limits = limits or Limits()
    engine.on_batch = metrics.batch_prompts.observe
    engine.max_queue = limits.max_queue

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if finetune is not None:
            await asyncio.to_thread(finetune.start)
        yield
        if finetune is not None:
            await asyncio.to_thread(finetune.close)
        if canary is not None:
            await canary.close()
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="fewtune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics
    app.add_middleware(
        Guard,
        api_key=api_key,
        admin_key=admin_key,
        hosts=allowed_hosts(hosts),
        metrics=metrics,
        log=log,
        max_body_bytes=limits.max_body_bytes,
    )

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = err.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request body"}
        if first.get("type") == "json_invalid":
            return APIError(400, "the request body is not valid JSON").response()
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        said = str(first.get("msg")).removeprefix("Value error, ")  # a model validator's own sentence
        message = f"{where}: {said}" if where else said
        return APIError(400, message, param=where or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body it cannot parse, an unknown path or method), in OpenAI's shape.
        return APIError(err.status_code, str(err.detail), headers=dict(err.headers or {})).response()

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        created = int(time.time())
        base = engine.base_name
        data = [
            {
                "id": base,
                "object": "model",
                "created": created,
                "owned_by": "fewtune",
                "root": base,  # names only: the server's file paths are not the caller's business
            }
        ]
        data += [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "fewtune",
                "root": name,
                "parent": base,
            }
            for name in engine.adapters.names()
        ]
        data += [
            {"id": name, "object": "model", "created": created, "owned_by": "fewtune", "root": name}
            for name in (canary.names() if canary else [])
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> dict[str, Any]:
        record = _record(request)
        adapter = _resolve(engine, record, body.model)
        body.check()
        prompts = body.prompts()
        max_tokens = body.new_tokens(limits.max_tokens)
        _within(limits, len(prompts), max_tokens)
        job = Job(
            adapter,
            prompts,
            max_tokens=max_tokens,
            stop=body.stop_string(),
            logprobs=body.logprobs,
            echo=body.echo,
        )
        outputs = await _run(engine, job, request, limits)
        record.prompt_tokens = sum(o.prompt_tokens for o in outputs)
        record.completion_tokens = sum(o.completion_tokens for o in outputs)
        return dict(completion_response(body.model, prompts, outputs, body.echo))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> dict[str, Any]:
        record = _record(request)
        if canary is not None and canary.handles(body.model):  # a method or a route: the input alone
            body.check()

            async def run_job(job: Job) -> list[Output]:
                return await _run(engine, job, request, limits)

            return dict(await canary.chat(body, request.headers, record, run_job))
        adapter = _resolve(engine, record, body.model)
        body.check()
        _within(limits, 1, body.new_tokens(limits.max_tokens))
        schema = body.output_schema()
        try:
            prompt = engine.render_chat(body.messages)
        except Exception as err:  # jinja raises for messages a template does not accept
            raise APIError(400, f"messages: chat template failed ({err})", param="messages") from None
        max_tokens = body.new_tokens(limits.max_tokens)
        job = Job(adapter, [prompt], max_tokens=max_tokens, stop=body.stop_string(), schema=schema)
        (output,) = await _run(engine, job, request, limits)
        record.prompt_tokens, record.completion_tokens = output.prompt_tokens, output.completion_tokens
        return dict(chat_response(body.model, output, structured=schema is not None))

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadAdapterRequest, request: Request) -> PlainTextResponse:
        record = _record(request)
        record.model = body.lora_name
        try:  # one sentence for a path that is missing, outside the roots or not an adapter
            folder = engine.adapters.policy.locate(body.lora_path)
            await asyncio.wrap_future(engine.load_adapter(body.lora_name, folder))
        except DoesNotFit as err:  # its own message names the server's paths
            print(f"load_lora_adapter {body.lora_name}: {err}", file=sys.stderr)
            raise APIError(400, err.public, param="lora_path") from None
        except FewtuneError as err:
            raise APIError(400, str(err), param="lora_path") from None
        except Exception as err:  # the worker printed the traceback
            raise APIError(500, f"internal error ({type(err).__name__})", "internal_error") from None
        record.served, record.adapter = True, body.lora_name
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadAdapterRequest, request: Request) -> PlainTextResponse:
        record = _record(request)
        record.model = body.lora_name
        if not engine.adapters.has(body.lora_name):
            raise APIError(404, f"The adapter `{body.lora_name}` is not loaded", param="lora_name")
        record.served, record.adapter = True, body.lora_name
        await _wait(asyncio.wrap_future(engine.unload_adapter(body.lora_name)), limits)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    operator = OperatorKey(admin_key, api_key)
    if canary is not None:
        add_canary_routes(app, canary, operator)
    if finetune is not None:
        from fastapi import Depends

        from fewtune.serve.finetune.routes import finetune_router

        app.include_router(finetune_router(finetune), dependencies=[Depends(operator)])
    return app
