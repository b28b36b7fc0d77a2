"""One OpenAI-compatible endpoint as fewtune talks to it: where it is, how to authenticate, and a request
function that goes through the response cache and counts what was sent.

The API key is read from the environment variable the spec names, handed to the ``openai`` client, and kept
nowhere else: not in the spec, not in ``repr``, not in the cache (keys hash the request body, which never
holds it), and not in error messages (a 401 is reported without the server's text, which for OpenAI
repeats part of the key).

Retries are the ``openai`` client's own: connection errors, 408, 409, 429 and 5xx are retried
``max_retries`` times with exponential backoff and jitter (honouring ``Retry-After``), so nothing here loops.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from fewtune.backends.response_cache import Refusal, ResponseCache, request_key
from fewtune.errors import ConfigError, FewtuneError

Route = Literal["completions", "chat/completions"]

NO_KEY = "no-key"
"""Sent as the bearer token when the spec names no key variable (a local server without authentication)."""
MESSAGE_CHARS = 300
"""Server error text kept in a one-line error message."""
_RETRIED = frozenset({408, 409, 429})
"""Client-error statuses the ``openai`` client retries: transient, so never cached as an answer."""


class EndpointError(FewtuneError):
    """The server could not be reached, refused the key, or failed; one line naming the URL, never the key."""


class Unreachable(EndpointError):
    """No answer: the connection failed or timed out (after the client's retries)."""


class Unauthorized(EndpointError):
    """The server refused the API key (HTTP 401 or 403)."""


class ServerFailed(EndpointError):
    """The server answered with an error of its own (5xx, or 429 after every retry), or with no JSON."""


class Refused(EndpointError):
    """The server answered a request with a client error (4xx other than auth): the request, not the
    connection, is at fault (an endpoint it does not have, a parameter it does not take)."""

    def __init__(self, message: str, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class EndpointSpec:
    """Where an OpenAI-compatible model is served and how to reach it (saved with a run; holds no secret)."""

    base_url: str
    """The API root, as the ``openai`` client takes it, usually ending in ``/v1``
    (``https://api.openai.com/v1``, ``http://127.0.0.1:8000/v1``)."""
    model: str
    """The ``model`` field of every request."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key; None sends no real key (local servers)."""
    concurrency: int = 8
    """Requests in flight at once."""
    max_retries: int = 5
    """Retries of the ``openai`` client (backoff 0.5 s doubling up to 8 s) on connection errors, 429, 5xx."""
    timeout_s: float = 120.0
    """Seconds one request may take (a CPU server scoring a long prompt is slow)."""
    chat_token_limit: str = "max_completion_tokens"
    """The chat field that caps new tokens: ``max_completion_tokens`` (OpenAI's current name, which vLLM
    and ``fewtune serve`` take) or ``max_tokens`` (older servers)."""

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^\s/]+", self.base_url):
            raise ConfigError(f"base URL must start with http:// or https://, got {self.base_url!r}")
        if not self.model.strip():
            raise ConfigError("the endpoint needs a model name")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ConfigError(
                f"api_key_env must name an environment variable (e.g. OPENAI_API_KEY), got "
                f"{self.api_key_env!r}; never put the key itself in a config"
            )
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be 1 or more, got {self.concurrency}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be above 0, got {self.timeout_s}")
        if self.chat_token_limit not in ("max_completion_tokens", "max_tokens"):
            raise ConfigError(
                f"chat_token_limit must be max_completion_tokens or max_tokens, got {self.chat_token_limit!r}"
            )

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/")

    def read_api_key(self) -> str:
        """The key from the environment; a one-line :class:`ConfigError` if the variable is unset or empty."""
        if self.api_key_env is None:
            return NO_KEY
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"environment variable {self.api_key_env} is not set: it must hold the API key for {self.url}"
            )
        return key

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NO_KEY_ENV = "none"
"""``--api-key-env none``: the endpoint takes no key (a local server started with ``--no-auth``)."""


def is_endpoint(model: str) -> bool:
    """A model spec that names a served model, ``URL#MODEL``, rather than a local one."""
    return bool(re.match(r"^https?://", model))


def endpoint_spec(model: str, api_key_env: str) -> EndpointSpec:
    """``http://127.0.0.1:8000/v1#gemma-3-270m`` -> the endpoint (base URL and model name)."""
    url, sep, name = model.partition("#")
    if not sep or not name.strip():
        raise ConfigError(
            f"model {model!r}: an endpoint is given as URL#MODEL, e.g. http://127.0.0.1:8000/v1#gemma-3-270m"
        )
    key_env = None if api_key_env.strip().lower() == NO_KEY_ENV else api_key_env.strip()
    return EndpointSpec(base_url=url, model=name.strip(), api_key_env=key_env)


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 3] + "..."


def _server_message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        for field in ("message", "detail", "error"):
            if body.get(field):
                return _one_line(str(body[field]))
    text = err.response.text if getattr(err, "response", None) is not None else str(err)
    return _one_line(text) or "no message"


T = TypeVar("T")


def _pass_key(made: list[tuple[str, bool]]) -> str:
    """The key of a pass: the SHA-256 of its sorted request keys."""
    return hashlib.sha256("\n".join(sorted(key for key, _ in made)).encode()).hexdigest()


class Endpoint:
    """Sends requests to one endpoint through a :class:`ResponseCache`; safe to call from many threads.

    ``requests_sent`` counts requests that went to the network (an ``openai`` client retry of one request
    is not counted again); ``cache_hits`` those answered from the cache; ``usage_totals`` the ``usage``
    tokens of every answer, cached ones included (they are what the requests cost when sent).
    """

    def __init__(self, spec: EndpointSpec, cache: ResponseCache | None) -> None:
        import openai

        self.spec = spec
        self.cache = cache
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=spec.url,
            api_key=spec.read_api_key(),
            max_retries=spec.max_retries,
            timeout=spec.timeout_s,
        )
        self._lock = threading.Lock()
        self.requests_sent = 0
        self.cache_hits = 0
        self.usage_totals = {"prompt_tokens": 0, "completion_tokens": 0}
        self._timing: list[float] | None = None
        self._made: list[tuple[str, bool]] | None = None

    def __repr__(self) -> str:
        return (
            f"Endpoint({self.spec.url!r}, model={self.spec.model!r}, api_key_env={self.spec.api_key_env!r})"
        )

    def request(
        self, route: Route, body: Mapping[str, Any], *, cache_refusals: bool = False, work: bool = True
    ) -> Mapping[str, Any]:
        """The response JSON for ``body`` POSTed to ``route``, from the cache when it holds it.

        Raises :class:`Refused` for a 4xx answer (stored, and raised again from the cache, when
        ``cache_refusals``: the probe's refusals are facts about the server), :class:`EndpointError` for
        everything else that is not an answer. ``work=False`` marks a request that is not part of what
        :meth:`timing` measures (a token count a client would keep).
        """
        timing = self._timing if work else None
        key = request_key(route, self.spec.url, self.spec.model, body if timing is None else {"timed": body})
        stored = self.cache.get(key) if self.cache is not None else None
        seconds: float | None = None
        if stored is not None:
            with self._lock:
                self.cache_hits += 1
            if "refused" in stored:
                refused = stored["refused"]
                raise Refused(refused["message"], int(refused["status"]), refused.get("code"))
            response: Mapping[str, Any] = stored["response"]
            seconds = stored.get("seconds")
        else:
            with self._lock:
                self.requests_sent += 1
            try:
                started = time.perf_counter()
                response = self._send(route, body)
                seconds = time.perf_counter() - started
            except Refused as err:
                if cache_refusals and self.cache is not None:
                    refusal = Refusal(message=str(err), status=err.status, code=err.code)
                    self.cache.put(key, route, {"refused": refusal})
                raise
            if self.cache is not None:
                self.cache.put(key, route, {"response": response, "seconds": seconds})
        with self._lock:
            if timing is not None and seconds is not None:
                timing.append(float(seconds))
            if self._made is not None and work:
                self._made.append((key, stored is None))
        self._count(response)
        return response

    @contextmanager
    def timing(self) -> Iterator[list[float]]:
        """Requests made inside are latency samples: cached apart from the same request made for its answer
        (so the first run sends and times it, one call at a time) and stored with the seconds it took. The
        list yielded collects those seconds, measured or replayed from the cache."""
        seconds: list[float] = []
        self._timing = seconds
        try:
            yield seconds
        finally:
            self._timing = None

    def measure(self, call: Callable[[], T]) -> tuple[T, float | None]:
        """``call()``'s result and its wall-clock seconds when it sent every request it made (the time is
        then stored under its request keys), else the seconds stored for the same requests, else None."""
        made: list[tuple[str, bool]] = []
        self._made = made
        try:
            start = time.perf_counter()
            result = call()
            seconds = time.perf_counter() - start
        finally:
            self._made = None
        if all(sent for _, sent in made) or self.cache is None:
            if made and self.cache is not None:
                self.cache.put_seconds(_pass_key(made), seconds)
            return result, seconds
        return result, self.cache.get_seconds(_pass_key(made))

    def _count(self, response: Mapping[str, Any]) -> None:
        usage = response.get("usage") or {}
        with self._lock:
            for field in self.usage_totals:
                value = usage.get(field)
                self.usage_totals[field] += int(value) if isinstance(value, int | float) else 0

    def _send(self, route: Route, body: Mapping[str, Any]) -> Mapping[str, Any]:
        openai, where = self._openai, f"{self.spec.url}/{route}"
        try:
            if route == "completions":
                raw = self._client.completions.with_raw_response.create(**body)
            else:
                raw = self._client.chat.completions.with_raw_response.create(**body)
            data = json.loads(raw.text)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            variable = self.spec.api_key_env or "(no key variable set)"
            raise Unauthorized(
                f"{where}: the server refused the API key from {variable} (HTTP {err.status_code})"
            ) from None
        except openai.APITimeoutError:
            raise Unreachable(
                f"{where}: no answer within {self.spec.timeout_s:g} s "
                f"(after {self.spec.max_retries} retries); raise timeout_s for a slow server"
            ) from None
        except openai.APIConnectionError as err:
            cause = _one_line(str(err.__cause__ or err))
            raise Unreachable(
                f"{where}: cannot connect ({cause}; after {self.spec.max_retries} retries)"
            ) from None
        except openai.APIStatusError as err:
            status, message = err.status_code, self._scrub(_server_message(err))
            if 400 <= status < 500 and status not in _RETRIED:
                code = err.code if isinstance(err.code, str) else None
                last_resort = route == "chat/completions" and status == 404 and code is None
                hint = " (does the base URL end in /v1?)" if last_resort else ""
                raise Refused(f"{where}: HTTP {status}: {message}{hint}", status, code) from None
            raise ServerFailed(
                f"{where}: HTTP {status}: {message} (after {self.spec.max_retries} retries)"
            ) from None
        except json.JSONDecodeError:
            raise ServerFailed(f"{where}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise ServerFailed(f"{where}: the answer is not a JSON object")
        return data

    def _scrub(self, text: str) -> str:
        key = str(self._client.api_key or "")
        return text.replace(key, "***") if key and key != NO_KEY else text

    def close(self) -> None:
        self._client.close()
