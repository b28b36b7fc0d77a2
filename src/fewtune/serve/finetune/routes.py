"""The routes of OpenAI's Files and Fine-tuning APIs, as the unmodified ``openai`` client calls them.

``POST /v1/files`` (multipart: ``file`` and ``purpose``), ``GET /v1/files``, ``/v1/files/{id}``,
``/v1/files/{id}/content``, ``DELETE /v1/files/{id}``; ``POST /v1/fine_tuning/jobs``,
``GET /v1/fine_tuning/jobs``, ``/v1/fine_tuning/jobs/{id}``, ``POST /v1/fine_tuning/jobs/{id}/cancel``,
``GET .../events`` and ``.../checkpoints``. Lists are cursor pages (``after``, ``limit``, ``has_more``),
newest first.

They sit behind the same guard as every ``/v1`` route (the API key, or without one the loopback Host
names; the ``--max-body-bytes`` limit, which is also the largest file one can upload). The multipart body
is parsed with the standard library's MIME parser, so the server needs no multipart package.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Generic, Literal, TypedDict, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from fewtune.serve.finetune.create import JobRefused
from fewtune.serve.finetune.service import FineTuning
from fewtune.serve.finetune.state import FileObject
from fewtune.serve.inputs import BadInput, parse_json
from fewtune.serve.protocol import APIError, ErrorBody

MAX_PAGE = 100
"""Most items a list page returns (OpenAI's limit for events and jobs)."""
_TEXT, _WHOLE = {"type": "string"}, {"anyOf": [{"type": "integer"}, {"const": "auto"}]}
JOB_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["model", "training_file"],
    "properties": {
        **{name: _TEXT for name in ("model", "training_file", "validation_file", "suffix")},
        "seed": {"type": "integer"},
        "hyperparameters": {
            "type": "object",
            "properties": {
                "n_epochs": _WHOLE,
                "batch_size": _WHOLE,
                "learning_rate_multiplier": {"anyOf": [{"type": "number"}, {"const": "auto"}]},
            },
        },
        "method": {"type": "object", "properties": {"type": {"const": "supervised"}}},
        "metadata": {"type": "object", "additionalProperties": _TEXT},
    },
}
"""The job body's schema, for the OpenAPI document (the route reads the body itself: :mod:`.create`)."""
UPLOAD_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary"}, "purpose": _TEXT},
}


class FineTuneAPIError(APIError):
    """An OpenAI-style error with the fine-tuning API's own ``code`` (not the model routes' codes)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(status, message, param=param)
        self.code = code

    def body(self) -> ErrorBody:
        body = super().body()
        body["error"]["code"] = self.code
        return body


def _refused(err: JobRefused) -> FineTuneAPIError:
    code = "not_found" if err.status == 404 else None
    return FineTuneAPIError(err.status, str(err), err.param, code)


async def _call(work: Any, *args: Any) -> Any:
    """``work(*args)`` off the event loop (it writes files), its refusals as OpenAI-style errors."""
    try:
        return await asyncio.to_thread(work, *args)
    except JobRefused as err:
        raise _refused(err) from None


Item = TypeVar("Item", bound=Mapping[str, Any])
"""A listed object (it has an ``id``)."""


class Page(TypedDict, Generic[Item]):
    """A cursor page of a list, as the ``openai`` client reads it."""

    object: Literal["list"]
    data: list[Item]
    has_more: bool


class UnknownCursor(ValueError):
    """``after`` names no item of the list."""


def page(items: Sequence[Item], after: str | None, limit: int) -> Page[Item]:
    """One page of a list (newest first): the items after the one whose id is ``after``, at most
    ``limit``, and whether more follow (the ``openai`` client's cursor page)."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise UnknownCursor(after)
        start = ids.index(after) + 1
    chosen = list(items[start : start + limit])
    return {"object": "list", "data": chosen, "has_more": start + limit < len(items)}


def _paged(items: list[Item], after: str | None, limit: int) -> dict[str, Any]:
    """A page of ``items`` as the routes answer it: a free-form object to FastAPI, which would otherwise
    validate it against :class:`Page`, turning whole numbers in float fields into floats."""
    try:
        return dict(page(items, after, limit))
    except UnknownCursor:
        raise FineTuneAPIError(400, f"after: {after!r} is not an id of this list", "after") from None


def form_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A ``multipart/form-data`` body's fields: name -> (file name or None, bytes)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise FineTuneAPIError(400, "expected a multipart/form-data body with 'file' and 'purpose'", "file")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, tuple[str | None, bytes]] = {}
    parts = message.get_payload() if message.is_multipart() else []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str):
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def finetune_router(service: FineTuning) -> APIRouter:
    """The routes over ``service``."""
    router = APIRouter()

    @router.post(
        "/v1/files",
        openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": UPLOAD_BODY}}}},
    )
    async def upload(request: Request) -> dict[str, Any]:
        fields = form_fields(request.headers.get("content-type", ""), await request.body())
        if "file" not in fields:
            raise FineTuneAPIError(400, "file: the form has no 'file' field", "file")
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
        filename, content = fields["file"]
        return dict(await _call(service.upload, filename or "upload.jsonl", purpose, content))

    @router.get("/v1/files")
    async def list_files(
        purpose: str | None = None,
        after: str | None = None,
        limit: int = Query(10_000, ge=1, le=10_000),
    ) -> dict[str, Any]:
        return _paged(service.store.files(purpose), after, limit)

    def known_file(file_id: str) -> FileObject:
        file = service.store.file(file_id)
        if file is None:
            raise FineTuneAPIError(404, f"no file {file_id!r} on this server", "file_id", "not_found")
        return file

    @router.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str) -> dict[str, Any]:
        return dict(known_file(file_id))

    @router.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> dict[str, Any]:
        return dict(await _call(service.delete_file, file_id))

    @router.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        file = known_file(file_id)
        kind = "application/json" if file["filename"].endswith(".json") else "application/jsonl"
        return Response(await asyncio.to_thread(service.store.file_content, file_id), media_type=kind)

    @router.post(
        "/v1/fine_tuning/jobs",
        openapi_extra={"requestBody": {"content": {"application/json": {"schema": JOB_BODY}}}},
    )
    async def create_job(request: Request) -> dict[str, Any]:
        try:
            body = parse_json(await request.body())
        except BadInput as err:
            raise FineTuneAPIError(400, str(err)) from None
        if not isinstance(body, dict):
            raise FineTuneAPIError(400, "the request body must be a JSON object")
        return dict(await _call(service.create, body))

    @router.get("/v1/fine_tuning/jobs")
    async def list_jobs(
        after: str | None = None, limit: int = Query(20, ge=1, le=MAX_PAGE)
    ) -> dict[str, Any]:
        return _paged(service.store.jobs(), after, limit)

    @router.get("/v1/fine_tuning/jobs/{job_id}")
    async def retrieve_job(job_id: str) -> dict[str, Any]:
        return dict(await _call(service.job, job_id))

    @router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        return dict(await _call(service.cancel, job_id))

    @router.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def list_events(
        job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=MAX_PAGE)
    ) -> dict[str, Any]:
        await _call(service.job, job_id)
        return _paged(service.store.events(job_id), after, limit)

    @router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def list_checkpoints(
        job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=MAX_PAGE)
    ) -> dict[str, Any]:
        await _call(service.job, job_id)
        return _paged(service.store.checkpoints(job_id), after, limit)

    return router
