"""Who may change the server, not only use it: the operator key (``--admin-key``).

The API key lets an application ask for answers. Moving a route's weight (``PUT /v1/routes/NAME``, a
rollback included), posting feedback (``POST /v1/feedback``, which the monitor scores the arms by) and the
Files and Fine-tuning APIs (which train on the server's machine and add models to it) change what every
caller gets, so they need the operator key, sent the same way: ``Authorization: Bearer ADMIN_KEY``. The
operator key also passes the API-key check, so one key serves an operator's every call.

Without an operator key the safe default holds: when the server has an API key, those endpoints are refused
(403, naming the flag), so a leaked inference key cannot roll a route back, bias its monitor or fill the
disk; when it has none (``--no-auth``, which binds loopback only and answers only loopback ``Host`` names),
everything on it is already limited to this machine's users, and they are open as every endpoint is.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from fewtune.serve.protocol import APIError

ADMIN_KEY_ENV = "FEWTUNE_ADMIN_KEY"


def presented_key(authorization: str) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header value, as bytes (None: not a bearer token).
    Bytes, because :func:`hmac.compare_digest` refuses non-ASCII text, which would make a 500 of a bad key."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip().encode("latin-1", "replace")


def is_key(presented: bytes | None, key: str | None) -> bool:
    """``presented`` is ``key`` (compared in constant time); never true for a missing key."""
    return presented is not None and key is not None and hmac.compare_digest(presented, key.encode("utf-8"))


@dataclass(frozen=True)
class OperatorKey:
    """The FastAPI dependency of the operator endpoints (module docstring)."""

    admin_key: str | None
    api_key: str | None

    def allows(self, headers: Mapping[str, str]) -> bool:
        """A request with these headers may call the operator endpoints."""
        if self.admin_key is None:
            return self.api_key is None
        return is_key(presented_key(headers.get("authorization", "")), self.admin_key)

    def refusal(self, headers: Mapping[str, str]) -> APIError | None:
        if self.allows(headers):
            return None
        if self.admin_key is None:
            message = "route changes, feedback and fine-tuning are off on this server: start fewtune serve "
            return APIError(
                403, message + "with --admin-key (or FEWTUNE_ADMIN_KEY) to allow them", "permission_error"
            )
        message = "route changes, feedback and fine-tuning need the operator key (Authorization: Bearer KEY)"
        return APIError(403, message, "permission_error")

    async def __call__(self, request: Request) -> None:
        refused = self.refusal(request.headers)
        if refused is not None:
            raise refused
