"""The fine-tuning API's records on disk, so a restarted server still lists its files and jobs.

Layout of the state folder (``fewtune serve --finetune-dir``)::

    files/<file-id>.json        the file object and its order
    files/<file-id>.data        the uploaded bytes (or a result file's)
    jobs/<ftjob-id>/job.json    the job object, and what the server keeps to itself (the held-back rows)
    jobs/<ftjob-id>/events.jsonl  its events, oldest first
    jobs/<ftjob-id>/checkpoints.json
    jobs/<ftjob-id>/adapter/    the LoRA adapter (peft's files; training checkpoints while it runs)

Every JSON file is replaced atomically (:func:`~.results.store.write_json_atomic`), so a server killed at
any moment leaves each record whole. Objects are kept in the OpenAI API's shapes; lists come newest first,
as the API gives them (the routes page them: :func:`~.routes.page`). A record that cannot be read back is
skipped with a warning, never a server that does not start.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Unpack

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

from fewtune.results.store import write_json_atomic

STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
"""The job states the ``openai`` client knows."""
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
ORGANIZATION = "local"
"""The ``organization_id`` of every job, and the ORG part of a fine-tuned model's name."""


def new_id(prefix: str) -> str:
    """``file-…``, ``ftjob-…``, ``ftevent-…``: 24 random hex digits after the kind."""
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


class FileObject(TypedDict):
    """A file, as ``GET /v1/files/{id}`` returns it."""

    id: str
    object: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None
    expires_at: int | None


class FileDeleted(TypedDict):
    """``DELETE /v1/files/{id}``'s answer."""

    id: str
    object: str
    deleted: bool


class HyperparameterValues(TypedDict):
    """A job's hyperparameters with ``"auto"`` resolved (:func:`~.create.hyperparameters`)."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class SupervisedMethod(TypedDict):
    hyperparameters: HyperparameterValues


class JobMethod(TypedDict):
    type: str
    supervised: SupervisedMethod


class JobError(TypedDict):
    """Why a job failed: an OpenAI error ``code``, a sentence, and the request field at fault if any."""

    code: str
    message: str
    param: str | None


class JobObject(TypedDict):
    """A fine-tuning job, as ``GET /v1/fine_tuning/jobs/{id}`` returns it (:func:`~.create.new_job`)."""

    id: str
    object: str
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: HyperparameterValues
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Mapping[str, Any]]
    """Always empty: a request naming integrations is refused."""
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    method: JobMethod


class JobChanges(TypedDict, total=False):
    """The fields of a job object that change after it is created."""

    status: str
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    trained_tokens: int | None
    result_files: list[str]


class JobInternal(TypedDict, total=False):
    """What the server keeps of a job and never shows."""

    held_back_lines: list[int]
    """Lines of the training file held back for the comparison (set once its files are validated)."""


class EventData(TypedDict, total=False):
    """A ``metrics`` event's numbers (other events carry none)."""

    step: int
    total_steps: int
    train_loss: float


class Event(TypedDict):
    """A job's event, as ``GET /v1/fine_tuning/jobs/{id}/events`` lists it."""

    id: str
    object: str
    created_at: int
    level: str
    message: str
    data: EventData
    type: str


class CheckpointMetrics(TypedDict):
    step: int
    train_loss: float | None


class Checkpoint(TypedDict):
    """A job's checkpoint, as ``GET /v1/fine_tuning/jobs/{id}/checkpoints`` lists it."""

    id: str
    object: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


def new_checkpoint(job_id: str, model: str, step: int, train_loss: float | None) -> Checkpoint:
    """The checkpoint of a job that trained ``model`` for ``step`` steps, its last loss ``train_loss``."""
    return {
        "id": new_id("ftckpt"),
        "object": "fine_tuning.job.checkpoint",
        "created_at": now(),
        "fine_tuned_model_checkpoint": model,
        "fine_tuning_job_id": job_id,
        "metrics": {"step": step, "train_loss": train_loss},
        "step_number": step,
    }


class FileRecord(TypedDict):
    file: FileObject
    seq: int
    """Order of creation, over files and jobs."""


class JobRecord(TypedDict):
    job: JobObject
    internal: JobInternal
    seq: int


class FineTuneStore:
    """Files, jobs, events and checkpoints under ``folder``; safe to use from any thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._files_dir = self.folder / "files"
        self._jobs_dir = self.folder / "jobs"
        self._files_dir.mkdir(parents=True, exist_ok=True)
        self._jobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._files: dict[str, FileRecord] = {}
        self._jobs: dict[str, JobRecord] = {}
        self._seq = 0
        self._load()

    def _load(self) -> None:
        """Read the records back; one that is damaged (cut short, edited, of another shape) is skipped with
        a warning, so the server starts with the others."""
        for path in sorted(self._files_dir.glob("*.json")):
            file: FileRecord | None = _record(path, FILE_RECORD)
            if file is not None and (path.with_suffix(".data")).is_file():
                self._files[file["file"]["id"]] = file
        for path in sorted(self._jobs_dir.glob("*/job.json")):
            job: JobRecord | None = _record(path, JOB_RECORD)
            if job is not None:
                self._jobs[job["job"]["id"]] = job
        orders = [r["seq"] for r in [*self._files.values(), *self._jobs.values()]]
        self._seq = max(orders, default=0)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    # -- files ----------------------------------------------------------------------------------------
    def add_file(self, filename: str, purpose: str, content: bytes) -> FileObject:
        """Keep ``content`` as a new file; its file object."""
        with self._lock:
            file_id = new_id("file")
            file: FileObject = {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": now(),
                "filename": filename,
                "purpose": purpose,
                "status": "processed",
                "status_details": None,
                "expires_at": None,
            }
            (self._files_dir / f"{file_id}.data").write_bytes(content)
            record: FileRecord = {"file": file, "seq": self._next()}
            write_json_atomic(self._files_dir / f"{file_id}.json", record)
            self._files[file_id] = record
            return file.copy()

    def file(self, file_id: str) -> FileObject | None:
        with self._lock:
            record = self._files.get(file_id)
            return record["file"].copy() if record else None

    def delete_file(self, file_id: str) -> None:
        with self._lock:
            self._files.pop(file_id, None)
            for suffix in (".json", ".data"):  # the record first: a crash between leaves no listed file
                (self._files_dir / f"{file_id}{suffix}").unlink(missing_ok=True)

    def file_content(self, file_id: str) -> bytes:
        return (self._files_dir / f"{file_id}.data").read_bytes()

    def files(self, purpose: str | None = None) -> list[FileObject]:
        with self._lock:
            records = sorted(self._files.values(), key=lambda r: -r["seq"])
            return [r["file"].copy() for r in records if purpose in (None, r["file"]["purpose"])]

    # -- jobs -----------------------------------------------------------------------------------------
    def job_folder(self, job_id: str) -> Path:
        return self._jobs_dir / job_id

    def add_job(self, job: JobObject, internal: JobInternal) -> JobObject:
        with self._lock:
            record: JobRecord = {"job": job.copy(), "internal": internal.copy(), "seq": self._next()}
            self.job_folder(job["id"]).mkdir(parents=True, exist_ok=True)
            self._jobs[job["id"]] = record
            self._save(job["id"])
            return job.copy()

    def job(self, job_id: str) -> JobObject | None:
        with self._lock:
            record = self._jobs.get(job_id)
            return record["job"].copy() if record else None

    def internal(self, job_id: str) -> JobInternal:
        with self._lock:
            return self._jobs[job_id]["internal"].copy()

    def jobs(self) -> list[JobObject]:
        with self._lock:
            return [r["job"].copy() for r in sorted(self._jobs.values(), key=lambda r: -r["seq"])]

    def oldest_first(self, status: str) -> list[str]:
        """Ids of the jobs in ``status``, in the order they were created."""
        with self._lock:
            records = sorted(self._jobs.values(), key=lambda r: r["seq"])
            return [r["job"]["id"] for r in records if r["job"]["status"] == status]

    def update_job(
        self, job_id: str, *, internal: JobInternal | None = None, **changes: Unpack[JobChanges]
    ) -> JobObject:
        """Change fields of the job object (and of what the server keeps); the job as it now is."""
        with self._lock:
            record = self._jobs[job_id]
            record["job"].update(changes)
            record["internal"].update(internal or {})
            self._save(job_id)
            return record["job"].copy()

    def _save(self, job_id: str) -> None:
        write_json_atomic(self.job_folder(job_id) / "job.json", self._jobs[job_id])

    # -- events and checkpoints -----------------------------------------------------------------------
    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        data: EventData | None = None,
        kind: str = "message",
    ) -> None:
        event: Event = {
            "id": new_id("ftevent"),
            "object": "fine_tuning.job.event",
            "created_at": now(),
            "level": level,
            "message": message,
            "data": data or {},
            "type": kind,
        }
        with self._lock, (self.job_folder(job_id) / "events.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(event) + "\n")

    def events(self, job_id: str) -> list[Event]:
        """The job's events, newest first (a line cut short by a crash is skipped)."""
        path = self.job_folder(job_id) / "events.jsonl"
        with self._lock:
            lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        events: list[Event] = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events[::-1]

    def set_checkpoints(self, job_id: str, checkpoints: list[Checkpoint]) -> None:
        with self._lock:
            write_json_atomic(self.job_folder(job_id) / "checkpoints.json", checkpoints)

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        """The job's checkpoints, newest first."""
        record = _record(self.job_folder(job_id) / "checkpoints.json", CHECKPOINTS)
        return list(record or [])[::-1]


FILE_RECORD, JOB_RECORD = TypeAdapter(FileRecord), TypeAdapter(JobRecord)
CHECKPOINTS = TypeAdapter(list[Checkpoint])


def _record(path: Path, shape: TypeAdapter[Any]) -> Any:
    """The record at ``path`` if it has ``shape``; None if there is none, a warning if it is damaged."""
    if not path.is_file():
        return None
    try:
        return shape.validate_json(path.read_bytes())
    except (OSError, ValidationError) as err:
        reason = err.strerror if isinstance(err, OSError) else err.errors()[0]["msg"]
        warnings.warn(f"{path}: a damaged fine-tuning record, skipped ({reason})", stacklevel=2)
        return None
