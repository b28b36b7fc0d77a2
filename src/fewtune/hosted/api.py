"""A fine-tuning API (OpenAI's, or any that speaks it, ``fewtune serve`` included) through the ``openai``
client, with every failure the client does not smooth over turned into one line naming the URL.

What differs between providers and shows: no fine-tuning API at all (a 404 on ``/files`` or
``/fine_tuning/jobs``), a refused key, a refused file or setting (a 400 whose message is the provider's),
a job that fails (its ``error``) or is cancelled. Retries of connection errors, 429 and 5xx are the
client's own (``max_retries``, exponential backoff).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from typing_extensions import TypedDict

from fewtune.backends.endpoint import EndpointSpec, Refused, ServerFailed, Unauthorized, Unreachable
from fewtune.errors import FewtuneError

T = TypeVar("T")
EVENTS_PAGE = 100
"""Events asked for per page (OpenAI's most)."""
MESSAGE_CHARS = 300
FINISHED = ("succeeded", "failed", "cancelled")


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
    """The fine-tuning job ended failed or cancelled."""


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
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

    # -- files ----------------------------------------------------------------------------------------
    def upload(self, filename: str, content: bytes) -> str:
        """Upload a chat JSONL training file; its file id."""
        file = self._call(
            "files", lambda: self.client.files.create(file=(filename, content), purpose="fine-tune")
        )
        return str(file.id)

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
        file = self._call(
            f"files/{file_id}", lambda: self.client.files.retrieve(file_id), missing="no such file"
        )
        return str(file.filename)

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
    ) -> Any:
        """Create a supervised job on ``spec.model``; the job object."""
        method: Any = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
        optional = JobOptions()
        if validation_file:
            optional["validation_file"] = validation_file
        if suffix:
            optional["suffix"] = suffix
        return self._call(
            "fine_tuning/jobs",
            lambda: self.client.fine_tuning.jobs.create(
                model=self.spec.model, training_file=training_file, method=method, seed=seed, **optional
            ),
        )

    def job(self, job_id: str) -> Any:
        return self._call(
            f"fine_tuning/jobs/{job_id}",
            lambda: self.client.fine_tuning.jobs.retrieve(job_id),
            missing=f"the fine-tuning job {job_id} recorded in the run folder is not known here",
        )

    def jobs(self) -> list[Any]:
        """Every job the key can see (all pages), newest first."""
        return self._call("fine_tuning/jobs", lambda: list(self.client.fine_tuning.jobs.list(limit=100)))

    def new_events(self, job_id: str, seen: set[str]) -> list[Any]:
        """The job's events not in ``seen`` (which they are added to), oldest first: the lists come newest
        first, so pages are read until a seen event."""

        def read() -> list[Any]:
            fresh = []
            for event in self.client.fine_tuning.jobs.list_events(job_id, limit=EVENTS_PAGE):
                if event.id in seen:
                    break
                fresh.append(event)
            return fresh

        fresh = self._call(f"fine_tuning/jobs/{job_id}/events", read)
        seen.update(e.id for e in fresh)
        return fresh[::-1]


def job_error(job: Any) -> str:
    """Why a job ended without a model, in a clause."""
    if job.status == "cancelled":
        return "was cancelled"
    error = getattr(job, "error", None)
    message = getattr(error, "message", None) or "no error given"
    code = getattr(error, "code", None)
    return f"failed: {_one_line(message)}" + (f" ({code})" if code else "")
