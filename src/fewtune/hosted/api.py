"""A fine-tuning API (OpenAI's, or any that speaks it, ``fewtune serve`` included) through the ``openai``
client, with every failure the client does not smooth over turned into one line naming the URL.

What differs between providers and shows: no fine-tuning API at all (a 404 on ``/files`` or
``/fine_tuning/jobs``), a refused key, a refused file or setting (a 400 whose message is the provider's),
a job that fails (its ``error``) or is cancelled. Retries of connection errors, 429 and 5xx are the
client's own (``max_retries``, exponential backoff).

What a provider answers is checked before it is used: a job or event is read into :class:`Job` /
:class:`Event` (the fields fewtune reads, of their types), so an HTML page, cut-short JSON or a field of the
wrong type is one line naming the URL, never a traceback; lists are read a bounded number of pages, and stop
where the provider's cursor does not move; text from the provider is stripped of control and escape
sequences before it reaches a terminal (:func:`clean_text`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import TypedDict

from fewtune.backends.endpoint import EndpointSpec, Refused, ServerFailed, Unauthorized, Unreachable
from fewtune.errors import FewtuneError

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
L = TypeVar("L", "Job", "Event")
EVENTS_PAGE = 100
"""Events asked for per page (OpenAI's most)."""
MESSAGE_CHARS = 300
FINISHED = ("succeeded", "failed", "cancelled")
UNFINISHED = ("validating_files", "queued", "running")
"""OpenAI's states of a job still under way; any state in neither list is reported, not followed."""
MAX_PAGES = 50
"""Most pages of one list read in one go (5,000 events, 5,000 jobs): a provider whose cursor never ends
cannot keep the client paging."""
ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
"""ANSI escape sequences: CSI (colours, cursor moves), OSC (window titles, hyperlinks), and two-byte ones."""


class Job(BaseModel):
    """The fields of a fine-tuning job that fewtune reads, checked."""

    model_config = ConfigDict(extra="ignore")
    id: str
    status: str
    created_at: int
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    result_files: list[str] | None = None
    hyperparameters: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    training_file: str | None = None
    validation_file: str | None = None


class StoredFile(BaseModel):
    """The fields of an uploaded file that fewtune reads, checked."""

    model_config = ConfigDict(extra="ignore")
    id: str
    filename: str | None = None


class Metrics(BaseModel):
    """A ``metrics`` event's data: the step reached, of how many, and the training loss."""

    step: int
    total_steps: int
    train_loss: float | None = None


class Event(BaseModel):
    """The fields of a job's event that fewtune reads, checked."""

    model_config = ConfigDict(extra="ignore")
    id: str
    type: str | None = None
    message: str = ""
    data: Any = None

    def metrics(self) -> Metrics | None:
        """The step it reports, for a ``metrics`` event whose data says one (else None)."""
        if self.type != "metrics":
            return None
        try:
            return Metrics.model_validate(self.data)
        except ValidationError:
            return None


class Hyperparameters(TypedDict, total=False):
    """A supervised job's hyperparameters, as OpenAI's API names them; what is left out, the provider
    chooses."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class JobOptions(TypedDict, total=False):
    """The optional arguments of a job's creation that fewtune gives."""

    validation_file: str
    suffix: str


class NoFineTuningAPI(FewtuneError):
    """The endpoint answers, but has no Files or Fine-tuning API (HTTP 404 on its routes)."""


class Missing(FewtuneError):
    """A file or job the endpoint does not know (HTTP 404 on its own route)."""


class JobFailed(FewtuneError):
    """The fine-tuning job ended failed or cancelled, or is in a state fewtune does not follow."""


class JobTimedOut(FewtuneError):
    """The fine-tuning job was still under way when the run's wait for it ran out."""


def clean_text(text: object) -> str:
    """``text`` safe to print: escape sequences and control characters (C0, C1, DEL; bidi overrides and
    other format characters) removed, so a provider's message cannot recolour, retitle or rewrite the user's
    terminal."""
    text = ESCAPES.sub("", str(text))
    return "".join(
        " " if ch in "\t\n\r" else ch
        for ch in text
        if ch in "\t\n\r" or unicodedata.category(ch) not in ("Cc", "Cf")
    )


def _one_line(text: object) -> str:
    line = " ".join(clean_text(text).split())
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 3] + "..."


def _message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body["error"] if isinstance(body.get("error"), dict) else body
        if inner.get("message"):
            return _one_line(str(inner["message"]))
    response = getattr(err, "response", None)
    return _one_line(response.text if response is not None else str(err)) or "no message"


class HostedAPI:
    """The Files and Fine-tuning APIs of ``spec``'s endpoint (``spec.model`` is the model to fine-tune)."""

    def __init__(self, spec: EndpointSpec) -> None:
        import openai

        self.spec = spec
        self._openai = openai
        self.client = openai.OpenAI(
            base_url=spec.url,
            api_key=spec.read_api_key(),
            max_retries=spec.max_retries,
            timeout=spec.timeout_s,
        )

    def close(self) -> None:
        self.client.close()

    def _call(self, route: str, call: Callable[[], T], missing: str | None = None) -> T:
        """``call()``, its errors as one line about ``route``; ``missing`` is the sentence for a 404 (else: no
        fine-tuning API here)."""
        openai, where = self._openai, f"{self.spec.url}/{route}"
        try:
            return call()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            variable = self.spec.api_key_env or "(no key variable: --api-key-env none)"
            message = f"{where}: the server refused the API key from {variable} (HTTP {err.status_code})"
            raise Unauthorized(message) from None
        except openai.APITimeoutError:
            raise Unreachable(f"{where}: no answer within {self.spec.timeout_s:g} s") from None
        except openai.APIConnectionError as err:
            raise Unreachable(f"{where}: cannot connect ({_one_line(str(err.__cause__ or err))})") from None
        except openai.NotFoundError as err:
            if missing is not None:
                raise Missing(f"{where}: {missing} (HTTP 404: {_message(err)})") from None
            raise NoFineTuningAPI(
                f"{where}: HTTP 404 ({_message(err)}): this endpoint has no fine-tuning API "
                "(hosted-ft needs OpenAI's /files and /fine_tuning/jobs)"
            ) from None
        except openai.APIStatusError as err:
            status, message = err.status_code, _message(err)
            if 400 <= status < 500:
                code = err.code if isinstance(err.code, str) else None
                raise Refused(f"{where}: HTTP {status}: {message}", status, code) from None
            raise ServerFailed(f"{where}: HTTP {status}: {message}") from None
        except openai.APIError as err:  # an answer the client could not read as the API's
            raise ServerFailed(f"{where}: {type(err).__name__}: {_one_line(str(err))}") from None
        except ValueError as err:  # cut-short or invalid JSON under a JSON content type
            raise ServerFailed(f"{where}: the answer is not valid JSON ({_one_line(str(err))})") from None

    def _checked(self, route: str, model: type[M], answer: Any) -> M:
        """``answer`` (the client's object for a JSON reply, or the text of any other) read as ``model``; one
        line about ``route`` when it is not one."""
        where = f"{self.spec.url}/{route}"
        if isinstance(answer, BaseModel):
            answer = answer.model_dump(mode="json", warnings=False)
        if not isinstance(answer, dict):
            raise ServerFailed(f"{where}: the answer is not JSON: {_one_line(str(answer))[:120]}")
        try:
            return model.model_validate(answer)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "the answer"
            raise ServerFailed(
                f"{where}: not a fine-tuning API's answer ({field}: {_one_line(first['msg'])})"
            ) from None

    def _listed(self, route: str, model: type[L], first: Callable[[], Any]) -> Iterator[L]:
        """The items of a paged list, each read as ``model``, page by page; stops after :data:`MAX_PAGES`
        pages, or where a page repeats an item already read (a provider that ignores the cursor)."""
        page, seen = self._call(route, first), set()
        for number in range(1, MAX_PAGES + 1):
            data = getattr(page, "data", None)
            if not isinstance(data, list):
                raise ServerFailed(f"{self.spec.url}/{route}: the answer is not a list (no data)")
            for item in data:
                checked = self._checked(route, model, item)
                if checked.id in seen:
                    return  # the cursor did not move
                seen.add(checked.id)
                yield checked
            if not data or number == MAX_PAGES or not self._call(route, page.has_next_page):
                return
            page = self._call(route, page.get_next_page)

    # -- files ----------------------------------------------------------------------------------------
    def upload(self, filename: str, content: bytes) -> str:
        """Upload a chat JSONL training file; its file id."""
        answer = self._call(
            "files", lambda: self.client.files.create(file=(filename, content), purpose="fine-tune")
        )
        return self._checked("files", StoredFile, answer).id

    def has_file(self, file_id: str) -> bool:
        try:
            self._call(
                f"files/{file_id}", lambda: self.client.files.retrieve(file_id), missing="no such file"
            )
        except Missing:
            return False
        return True

    def file_name(self, file_id: str) -> str:
        """The name a file was stored under (a result file's, as its provider names it)."""
        route = f"files/{file_id}"
        answer = self._call(route, lambda: self.client.files.retrieve(file_id), missing="no such file")
        return self._checked(route, StoredFile, answer).filename or file_id

    def content(self, file_id: str) -> bytes:
        response = self._call(
            f"files/{file_id}/content", lambda: self.client.files.content(file_id), missing="no such file"
        )
        return bytes(response.read())

    # -- jobs -----------------------------------------------------------------------------------------
    def create_job(
        self,
        training_file: str,
        validation_file: str | None,
        hyperparameters: Hyperparameters,
        suffix: str | None,
        seed: int,
    ) -> Job:
        """Create a supervised job on ``spec.model``; the job."""
        method: Any = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
        optional = JobOptions()
        if validation_file:
            optional["validation_file"] = validation_file
        if suffix:
            optional["suffix"] = suffix
        answer = self._call(
            "fine_tuning/jobs",
            lambda: self.client.fine_tuning.jobs.create(
                model=self.spec.model, training_file=training_file, method=method, seed=seed, **optional
            ),
        )
        return self._checked("fine_tuning/jobs", Job, answer)

    def job(self, job_id: str) -> Job:
        route = f"fine_tuning/jobs/{job_id}"
        answer = self._call(
            route,
            lambda: self.client.fine_tuning.jobs.retrieve(job_id),
            missing=f"the fine-tuning job {job_id} recorded in the run folder is not known here",
        )
        return self._checked(route, Job, answer)

    def jobs(self) -> list[Job]:
        """Every job the key can see (at most :data:`MAX_PAGES` pages), newest first."""
        route = "fine_tuning/jobs"
        return list(self._listed(route, Job, lambda: self.client.fine_tuning.jobs.list(limit=100)))

    def new_events(self, job_id: str, seen: set[str]) -> list[Event]:
        """The job's events not in ``seen`` (which they are added to), oldest first: the lists come newest
        first, so pages are read until a seen event."""
        route = f"fine_tuning/jobs/{job_id}/events"
        fresh = []
        for event in self._listed(
            route, Event, lambda: self.client.fine_tuning.jobs.list_events(job_id, limit=EVENTS_PAGE)
        ):
            if event.id in seen:
                break
            fresh.append(event)
        seen.update(e.id for e in fresh)
        return fresh[::-1]


def job_error(job: Job) -> str:
    """Why a job ended without a model, in a clause."""
    if job.status == "cancelled":
        return "was cancelled"
    error = job.error or {}
    message = error.get("message") or "no error given"
    code = error.get("code")
    return f"failed: {_one_line(message)}" + (f" ({_one_line(code)})" if code else "")
