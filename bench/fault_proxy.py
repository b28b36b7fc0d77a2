"""A reverse proxy that injects faults between a canary arm and its model (the bench's toxiproxy).

``POST /{fault}/v1/{path}`` is forwarded to ``UPSTREAM/v1/{path}`` (headers and body as sent) and the
upstream's answer returned, after the fault named by the first path segment:

- ``ok``: none (the same hop as the faulty arms, so an equal candidate pays the same transport);
- ``slow``: the answer is held for ``delay_s`` more;
- ``fail``: a seeded ``error_share`` of requests get a 500 without reaching the upstream.

Runs as a real uvicorn server in a background thread of the bench process (:func:`start`).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from fewtune.http_client import httpx


def make_app(upstream: str, delay_s: float, error_share: float, seed: int) -> FastAPI:
    app = FastAPI()
    rng = random.Random(seed)
    lock = threading.Lock()
    client = httpx.AsyncClient(base_url=upstream, timeout=120, trust_env=False)

    @app.post("/{fault}/v1/{path:path}")
    async def forward(fault: str, path: str, request: Request) -> Response:
        if fault == "fail":
            with lock:
                broken = rng.random() < error_share
            if broken:
                return JSONResponse({"error": {"message": "injected fault"}}, status_code=500)
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        reply = await client.post(f"/v1/{path}", content=body, headers=headers)
        if fault == "slow":
            await asyncio.sleep(delay_s)
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")

    return app


def start(upstream: str, port: int, delay_s: float = 1.0, error_share: float = 0.1, seed: int = 0) -> Any:
    """Serve the proxy on 127.0.0.1:``port`` in a daemon thread; returns the uvicorn server (``should_exit``
    stops it)."""
    config = uvicorn.Config(
        make_app(upstream, delay_s, error_share, seed), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fault proxy did not start")
        time.sleep(0.05)
    return server
