"""What every ``/v1`` request passes before an endpoint sees it, and what it leaves behind.

In order: the ``Host`` header (served without an API key, only the loopback names and those allowed by
``--allowed-host``: a web page whose own domain a DNS rebinding points at 127.0.0.1 sends its domain as the
Host, so it cannot read the server's answers), the API key (``Authorization: Bearer KEY``), and the body's
size (read no further than ``--max-body-bytes``: a 413). The operator key (``--admin-key``,
:mod:`fewtune.serve.operator`) passes the key check too; which endpoints need it is the app's business. Each
refusal is an OpenAI-style error. Every
request, refused ones included, is timed into the metrics and written as one line to the request log.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from fewtune.serve.observe import Metrics, RequestLog, RequestRecord
from fewtune.serve.operator import is_key, presented_key
from fewtune.serve.protocol import APIError

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

RECORD_KEY = "fewtune.results.record"
"""Where the guard leaves the request's :class:`RequestRecord` in the ASGI scope for the endpoint."""
ENDPOINTS = frozenset(
    {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
        "/v1/routes",
        "/v1/feedback",
    }
)
ROUTE_CHANGE = "/v1/routes/{name}"
"""The label of a route change (``PUT /v1/routes/NAME``): one label for every route, and not ``other``."""
# Routes with an id in the path (/v1/files/{id}, /v1/fine_tuning/jobs/{id}/events, ...) are counted under
# their collection, so /metrics keeps one label per route rather than one per job.
COLLECTIONS = ("/v1/fine_tuning/jobs", "/v1/files")


def endpoint_label(path: str) -> str:
    """The /metrics label of a request path: a known endpoint, its collection, or "other"."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/routes/"):
        return ROUTE_CHANGE
    for prefix in COLLECTIONS:
        if path == prefix or path.startswith(prefix + "/"):
            return prefix
    return "other"


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The Host names a server without an API key answers by default."""


def host_name(header: str) -> str | None:
    """The name in a ``Host`` header, lower-case, without its port (``[::1]:8000`` -> ``::1``); None when
    the header is not a name with an optional numeric port."""
    value = header.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
    else:
        name, bracket, rest = value.rpartition(":") if ":" in value else (value, "", "")
        rest = f":{rest}" if bracket else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    return name or None


def allowed_hosts(extra: Iterable[str] = ()) -> frozenset[str]:
    """The loopback names and ``extra`` (``--allowed-host``), as :func:`host_name` reads them."""
    names = {host_name(h) or h.lower() for h in extra} | set(LOOPBACK_HOSTS)
    return frozenset(names)


class Guard:
    """ASGI middleware for ``/v1``: checks the Host (without a key), the key and the body size, then times
    the request and records its outcome."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        hosts: frozenset[str],
        admin_key: str | None = None,
        metrics: Metrics,
        log: RequestLog,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.admin_key = admin_key
        self.hosts = hosts
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

    def _refusal(self, scope: Scope, *, key: bool = True) -> APIError | None:
        """Why the request is refused (None: it is not): its Host without an API key, else its key."""
        headers = dict(scope.get("headers") or [])
        if self.api_key is None:
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.hosts:
                # A DNS-rebinding page sends its own domain: without a key, only known names are served.
                message = "Host not allowed: this server has no API key and answers only localhost, "
                message += "127.0.0.1, [::1] and the names given with --allowed-host"
                return APIError(400, message, param="host")
            return None
        if not key:
            return None
        presented = presented_key(headers.get(b"authorization", b"").decode("latin-1"))
        if is_key(presented, self.api_key) or is_key(presented, self.admin_key):
            return None
        return APIError(401, "invalid or missing API key (send Authorization: Bearer KEY)")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not scope["path"].startswith("/v1/"):
            refused = self._refusal(scope, key=False)  # /health and /metrics: no key, but the Host
            await (refused.response() if refused else self.app)(scope, receive, send)
            return
        start = time.perf_counter()
        endpoint = endpoint_label(scope["path"])
        record = RequestRecord()
        scope[RECORD_KEY] = record
        status = 500

        async def send_and_note(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            refused = self._refusal(scope)
            if refused is not None:
                await refused.response()(scope, receive, send_and_note)
                return
            body = await self._bounded_body(receive)
            if body is None:
                error = APIError(413, f"the request body is over this server's {self.max_body_bytes:,} bytes")
                await error.response()(scope, receive, send_and_note)
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
            # The log first: it is what the monitor reads, so nothing the metrics refuse may cost its line.
            self.log.write(record, endpoint, seconds, status)
            self.metrics.observe(record, endpoint, seconds, status)
