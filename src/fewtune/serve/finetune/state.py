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
as the API gives them, and are paged with ``after`` (the last id of the previous page) and ``limit``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


class UnknownCursor(ValueError):
    """``after`` names no item of the list."""


def page(items: Sequence[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
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


class FineTuneStore:
    """Files, jobs, events and checkpoints under ``folder``; safe to use from any thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._files_dir = self.folder / "files"
        self._jobs_dir = self.folder / "jobs"
        self._files_dir.mkdir(parents=True, exist_ok=True)
        self._jobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._files: dict[str, dict[str, Any]] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        """id -> ``{"job": the API object, "internal": what only the server reads, "seq": order}``."""
        self._seq = 0
        self._load()

    def _load(self) -> None:
        for path in sorted(self._files_dir.glob("*.json")):
            record = _read(path)
            if record is not None and (path.with_suffix(".data")).is_file():
                self._files[record["file"]["id"]] = record
        for path in sorted(self._jobs_dir.glob("*/job.json")):
            record = _read(path)
            if record is not None:
                self._jobs[record["job"]["id"]] = record
        orders = [r["seq"] for r in [*self._files.values(), *self._jobs.values()]]
        self._seq = max(orders, default=0)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    # -- files ----------------------------------------------------------------------------------------
    def add_file(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        """Keep ``content`` as a new file; its file object."""
        with self._lock:
            file_id = new_id("file")
            file: dict[str, Any] = {
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
            record = {"file": file, "seq": self._next()}
            write_json_atomic(self._files_dir / f"{file_id}.json", record)
            self._files[file_id] = record
            return dict(file)

    def file(self, file_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._files.get(file_id)
            return dict(record["file"]) if record else None

    def file_content(self, file_id: str) -> bytes:
        return (self._files_dir / f"{file_id}.data").read_bytes()

    def files(self, purpose: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            records = sorted(self._files.values(), key=lambda r: -r["seq"])
            return [dict(r["file"]) for r in records if purpose in (None, r["file"]["purpose"])]

    # -- jobs -----------------------------------------------------------------------------------------
    def job_folder(self, job_id: str) -> Path:
        return self._jobs_dir / job_id

    def add_job(self, job: dict[str, Any], internal: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            record = {"job": dict(job), "internal": dict(internal), "seq": self._next()}
            self.job_folder(job["id"]).mkdir(parents=True, exist_ok=True)
            self._jobs[job["id"]] = record
            self._save(job["id"])
            return dict(job)

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._jobs.get(job_id)
            return dict(record["job"]) if record else None

    def internal(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._jobs[job_id]["internal"])

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r["job"]) for r in sorted(self._jobs.values(), key=lambda r: -r["seq"])]

    def oldest_first(self, status: str) -> list[str]:
        """Ids of the jobs in ``status``, in the order they were created."""
        with self._lock:
            records = sorted(self._jobs.values(), key=lambda r: r["seq"])
            return [r["job"]["id"] for r in records if r["job"]["status"] == status]

    def update_job(
        self, job_id: str, *, internal: dict[str, Any] | None = None, **changes: Any
    ) -> dict[str, Any]:
        """Change fields of the job object (and of what the server keeps); the job as it now is."""
        with self._lock:
            record = self._jobs[job_id]
            record["job"].update(changes)
            record["internal"].update(internal or {})
            self._save(job_id)
            return dict(record["job"])

    def _save(self, job_id: str) -> None:
        write_json_atomic(self.job_folder(job_id) / "job.json", self._jobs[job_id])

    # -- events and checkpoints -----------------------------------------------------------------------
    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        data: dict[str, Any] | None = None,
        kind: str = "message",
    ) -> None:
        event = {
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

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events, newest first (a line cut short by a crash is skipped)."""
        path = self.job_folder(job_id) / "events.jsonl"
        with self._lock:
            lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events[::-1]

    def set_checkpoints(self, job_id: str, checkpoints: list[dict[str, Any]]) -> None:
        with self._lock:
            write_json_atomic(self.job_folder(job_id) / "checkpoints.json", checkpoints)

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """The job's checkpoints, newest first."""
        record = _read(self.job_folder(job_id) / "checkpoints.json")
        return list(record or [])[::-1]


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
