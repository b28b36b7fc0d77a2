"""The FastAPI app: OpenAI-compatible routes over an :class:`~fewtune.serve.engine.Engine`.

``/v1/*`` needs ``Authorization: Bearer <api key>`` when the app has a key; ``/health`` and ``/metrics``
are open, as in vLLM (a load balancer and a Prometheus scraper hold no key). Every ``/v1`` request, refused
ones included, is timed into the metrics and written as one line to the request log.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fewtune.errors import FewtuneError
from fewtune.serve.adapters import check_adapter_folder
from fewtune.serve.engine import BadRequest, Engine, Job, UnknownModel
from fewtune.serve.limits import Limits
from fewtune.serve.observe import Metrics, RequestLog, RequestRecord
from fewtune.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    LoadAdapterRequest,
    UnloadAdapterRequest,
    chat_response,
    completion_response,
)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
T = TypeVar("T")

RECORD_KEY = "fewtune.record"
"""Where the middleware leaves the request's :class:`RequestRecord` in the ASGI scope for the endpoint."""
ENDPOINTS = frozenset(
    {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
    }
)


class _Observe:
    """ASGI middleware for ``/v1``: checks the API key, then times the request and records its outcome."""

    def __init__(
        self, app: ASGIApp, *, api_key: str | None, metrics: Metrics, log: RequestLog, max_body_bytes: int
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.metrics = metrics
        self.log = log
        self.max_body_bytes = max_body_bytes

    async def _bounded_body(self, receive: Any) -> bytes | None:
        """The request body, read whole, or None when it is over the limit (read no further)."""
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return body
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return None
            if not message.get("more_body"):
                return body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        record = RequestRecord()
        scope[RECORD_KEY] = record
        status = 500

        async def send_and_note(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            if self.api_key is not None and not self._authorized(scope):
                error = APIError(401, "invalid or missing API key (send Authorization: Bearer KEY)")
                await JSONResponse(error.body(), status_code=401)(scope, receive, send_and_note)
                return
            body = await self._bounded_body(receive)
            if body is None:
                error = APIError(413, f"the request body is over this server's {self.max_body_bytes:,} bytes")
                await JSONResponse(error.body(), status_code=413)(scope, receive, send_and_note)
                return
            sent = False

            async def replay() -> dict[str, Any]:
                nonlocal sent
                if sent:
                    return await receive()  # the client's disconnect, when it comes
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send_and_note)
        finally:
            seconds = time.perf_counter() - start
            self.metrics.observe(record, endpoint, seconds, status)
            self.log.write(record, endpoint, seconds, status)

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        # Compared as bytes: compare_digest refuses non-ASCII text, which would make a 500 of a bad key.
        presented = token.strip().encode("latin-1", "replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented, self.api_key.encode("utf-8"))


def _record(request: Request) -> RequestRecord:
    record = request.scope.get(RECORD_KEY)
    return record if isinstance(record, RequestRecord) else RequestRecord()


async def _wait(future: Future[T]) -> T:
    """The engine's answer, its errors turned into HTTP ones."""
    try:
        return await asyncio.wrap_future(future)
    except UnknownModel as err:
        raise APIError(404, str(err), param="model") from None
    except FewtuneError as err:
        raise APIError(400, str(err)) from None
    except Exception as err:  # the worker printed the traceback; the client gets one line
        raise APIError(500, f"internal error ({type(err).__name__}: {err})", "internal_error") from None


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
    request_log: Path | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """The server's ASGI app over ``engine``; starts the engine's worker with the app, closes it after.

    ``api_key`` None serves ``/v1`` without authentication (the CLI allows that only on loopback).
    ``request_log`` None writes no request log.
    """
    metrics = Metrics()
    log = RequestLog(request_log)
    limits = limits or Limits()
    engine.on_batch = metrics.batch_prompts.observe

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="fewtune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics
    app.add_middleware(
        _Observe, api_key=api_key, metrics=metrics, log=log, max_body_bytes=limits.max_body_bytes
    )

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = err.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request body"}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse(APIError(400, message, param=where or None).body(), status_code=400)

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
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> dict[str, Any]:
        record = _record(request)
        adapter = _resolve(engine, record, body.model)
        body.check()
        prompts = body.prompts()
        max_tokens = body.max_tokens if body.max_tokens is not None else 16
        _within(limits, len(prompts), max_tokens)
        job = Job(
            adapter,
            prompts,
            max_tokens=max_tokens,
            stop=body.stop_string(),
            logprobs=body.logprobs,
            echo=body.echo,
        )
        outputs = await _wait(_submit(engine, job))
        record.prompt_tokens = sum(o.prompt_tokens for o in outputs)
        record.completion_tokens = sum(o.completion_tokens for o in outputs)
        return completion_response(body.model, prompts, outputs, body.echo)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> dict[str, Any]:
        record = _record(request)
        adapter = _resolve(engine, record, body.model)
        body.check()
        _within(limits, 1, body.new_tokens())
        schema = body.output_schema()
        try:
            prompt = engine.render_chat(body.messages)
        except Exception as err:  # jinja raises for messages a template does not accept
            raise APIError(400, f"messages: chat template failed ({err})", param="messages") from None
        job = Job(adapter, [prompt], max_tokens=body.new_tokens(), stop=body.stop_string(), schema=schema)
        (output,) = await _wait(_submit(engine, job))
        record.prompt_tokens, record.completion_tokens = output.prompt_tokens, output.completion_tokens
        return chat_response(body.model, output, structured=schema is not None)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadAdapterRequest, request: Request) -> PlainTextResponse:
        record = _record(request)
        record.model = body.lora_name
        try:
            check_adapter_folder(body.lora_path)
        except FewtuneError as err:
            raise APIError(400, str(err), param="lora_path") from None
        await _wait(engine.load_adapter(body.lora_name, body.lora_path))
        record.served, record.adapter = True, body.lora_name
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadAdapterRequest, request: Request) -> PlainTextResponse:
        record = _record(request)
        record.model = body.lora_name
        if not engine.adapters.has(body.lora_name):
            raise APIError(404, f"The adapter `{body.lora_name}` is not loaded", param="lora_name")
        record.served, record.adapter = True, body.lora_name
        await _wait(engine.unload_adapter(body.lora_name))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return app


def _submit(engine: Engine, job: Job) -> Future[Any]:
    try:
        return engine.submit(job)
    except BadRequest as err:
        raise APIError(400, str(err)) from None
