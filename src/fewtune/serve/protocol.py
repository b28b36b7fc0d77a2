"""Request bodies and response shapes of the OpenAI API (the subset served), and its error JSON.

Unknown fields are accepted and ignored (clients send ``user``, ``seed``, ``top_p``...), except those that
would change the answer and that this server cannot honour: sampling (``temperature`` above 0: decoding is
greedy), ``n`` above 1, ``stream`` and ``best_of``, which are a 400 with a sentence saying so.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fewtune.serve.inputs import check_json
from fewtune.serve.jobs import Output

if TYPE_CHECKING:
    from fewtune.serve.tokens import LegacyLogprobs

DEFAULT_CHAT_MAX_TOKENS = 256
"""Chat requests without ``max_tokens``: OpenAI has no limit, a CPU server needs one (the server's
``--max-tokens-limit`` where that is lower)."""
DEFAULT_COMPLETION_MAX_TOKENS = 16
"""Completions without ``max_tokens``: OpenAI's default (or the server's limit where that is lower)."""


class ErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(TypedDict):
    """OpenAI's error JSON."""

    error: ErrorDetail


class APIError(Exception):
    """An error answered as OpenAI's ``{"error": {message, type, param, code}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.headers = headers

    def body(self) -> ErrorBody:
        code = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded", 504: "timeout"}
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": code.get(self.status),
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class CheckedBody(BaseModel):
    """A request body whose every value (unknown fields such as ``user`` included) passes
    :func:`~fewtune.serve.inputs.check_json` before its fields are read: a 400, never a 500 later."""

    @model_validator(mode="before")
    @classmethod
    def _takeable(cls, data: Any) -> Any:
        check_json(data)
        return data


class _Request(CheckedBody):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False

    def check(self) -> None:
        """Refuse what greedy, non-streaming decoding cannot give (400)."""
        if self.temperature not in (None, 0, 0.0):
            raise APIError(
                400,
                "this server decodes greedily: set temperature to 0 (or leave it out)",
                param="temperature",
            )
        if self.n != 1:
            raise APIError(400, "this server returns one choice per prompt: n must be 1", param="n")
        if self.stream:
            raise APIError(400, "streaming is not supported: leave stream unset", param="stream")

    def stop_string(self) -> str | None:
        """The one stop string (generate_batch stops on one; a list of one is fine)."""
        stops = [self.stop] if isinstance(self.stop, str) else [s for s in self.stop or [] if s]
        if len(stops) > 1:
            raise APIError(400, "this server takes one stop string, got several", param="stop")
        return stops[0] if stops and stops[0] else None


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=0)  # OpenAI's default
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0)
    best_of: int | None = None

    def check(self) -> None:
        super().check()
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of is not supported (greedy decoding has one answer)", param="best_of")
        if isinstance(self.prompt, list) and not self.prompt:
            raise APIError(400, "prompt is an empty list", param="prompt")

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def new_tokens(self, limit: int) -> int:
        """``max_tokens`` as asked; not given (or null), the default, capped by the server's ``limit``."""
        if self.max_tokens is not None and "max_tokens" in self.model_fields_set:
            return self.max_tokens
        return min(DEFAULT_COMPLETION_MAX_TOKENS, limit)


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_schema"]
    json_schema: JsonSchema | None = None


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None

    def check(self) -> None:
        super().check()
        if self.logprobs:
            raise APIError(
                400,
                "chat logprobs are not served; use /v1/completions with echo and logprobs",
                param="logprobs",
            )
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, list):  # OpenAI content parts: keep the text ones
                message["content"] = "".join(
                    str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
                )

    def new_tokens(self, limit: int) -> int:
        """The tokens asked for; none asked, the default, capped by the server's ``limit``."""
        for value in (self.max_completion_tokens, self.max_tokens):
            if value is not None:
                return value
        return min(DEFAULT_CHAT_MAX_TOKENS, limit)

    def output_schema(self) -> dict[str, Any] | None:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.json_schema is None:
            raise APIError(
                400, "response_format json_schema needs a json_schema.schema", param="response_format"
            )
        return fmt.json_schema.schema_


class LoadAdapterRequest(CheckedBody):
    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str = Field(min_length=1, max_length=4096)
    """A folder inside one of the server's adapter roots: relative to the root, or absolute."""


class UnloadAdapterRequest(CheckedBody):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None  # vLLM accepts it; names are enough here


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(TypedDict):
    index: int
    text: str
    logprobs: LegacyLogprobs | None
    finish_reason: str


class Completion(TypedDict):
    """A ``/v1/completions`` response."""

    id: str
    object: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatMessage(TypedDict):
    role: str
    content: str


class ChatChoice(TypedDict):
    index: int
    message: ChatMessage
    logprobs: None
    finish_reason: str


class ChatCompletion(TypedDict):
    """A ``/v1/chat/completions`` response."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


def usage(outputs: list[Output]) -> Usage:
    prompt = sum(o.prompt_tokens for o in outputs)
    completion = sum(o.completion_tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_response(model: str, prompts: list[str], outputs: list[Output], echo: bool) -> Completion:
    choices: list[CompletionChoice] = [
        {
            "index": i,
            "text": (prompt if echo else "") + output.text,
            "logprobs": output.logprobs,
            "finish_reason": output.finish_reason,
        }
        for i, (prompt, output) in enumerate(zip(prompts, outputs, strict=True))
    ]
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(outputs),
    }


def chat_response(model: str, output: Output, structured: bool) -> ChatCompletion:
    # The schema grammar starts with the space that follows "Output:" in fewtune's prompts; a chat answer
    # is the JSON alone.
    content = output.text.lstrip() if structured else output.text
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": output.finish_reason,
            }
        ],
        "usage": usage([output]),
    }
