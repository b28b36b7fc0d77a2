"""The fine-tuning jobs' lifecycle: validated, queued, trained one at a time, compared, served.

Two threads of their own, so inference never waits on them: a validator (``validating_files`` ->
``queued``, or ``failed`` for a file that does not make a job) and a trainer, which takes the oldest queued
job and trains a LoRA adapter with :class:`fewtune.training.lora.Lora` on a fresh copy of the base model
(the engine's worker keeps its own), scores the held-out comparison on those copies
(:mod:`~fewtune.serve.finetune.compare`), then registers the adapter with the engine under
``ft:BASE:local:SUFFIX:ID`` and marks the job ``succeeded``: from then on ``/v1/chat/completions`` and
``/v1/completions`` (echo log-probabilities included) serve it.

``cancel`` ends a waiting job at once and a running one at its next optimizer step. A job that was running
when the server stopped (killed, or shut down mid-training) is queued again when the server starts: its
training continues from the last checkpoint :class:`~fewtune.training.lora.Lora` saved in the job's
adapter folder (every 60 s of training), and an event says so. The adapters of succeeded jobs are loaded
again at start.
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewtune.config import LoraArgs
from fewtune.data.load import Example
from fewtune.data.split import stratified_sample
from fewtune.decide.cost import PriceTable
from fewtune.errors import DataError, FewtuneError
from fewtune.serve.finetune.chat_rows import ChatRow, read_chat_rows
from fewtune.serve.finetune.create import JobRefused, model_name, new_job
from fewtune.serve.finetune.quota import ACTIVE, FINE_TUNE, Quota, held_back_count
from fewtune.serve.finetune.state import FINISHED, FineTuneStore, new_checkpoint, now
from fewtune.serve.finetune.training_job import TrainingJob, train_and_compare
from fewtune.serve.limits import FineTuneLimits

if TYPE_CHECKING:
    from fewtune.backends.hf import HFBackend
    from fewtune.serve.engine import Engine
    from fewtune.serve.finetune.compare import ResultFile
    from fewtune.serve.finetune.state import FileDeleted, FileObject, JobError, JobObject

RESULTS = "fine-tune-results"
IDLE_WAKE_S = 1.0


class _Stop(Exception):
    """The trainer is asked to end the job now: cancelled, or the server is stopping."""


def held_back(rows: list[ChatRow], seed: int) -> set[int]:
    """Lines of the training file held back for the comparison: a seeded sample stratified by answer."""
    count = held_back_count(len(rows))
    examples = [Example(str(row.line), row.answer) for row in rows]
    chosen, _ = stratified_sample(examples, count, seed)
    return {int(ex.text) for ex in chosen}


class FineTuning:
    """The fine-tuning API's work, over ``store`` and ``engine``; :meth:`start` and :meth:`close` bracket it.

    ``base_factory`` returns a fresh trainable backend of the served base model (its own copy of the
    weights, loaded for each job and dropped after it).
    """

    def __init__(
        self,
        store: FineTuneStore,
        engine: Engine,
        base_factory: Callable[[], HFBackend],
        prices: PriceTable,
        defaults: LoraArgs | None = None,
        limits: FineTuneLimits | None = None,
    ) -> None:
        self.store, self.engine, self.base_factory, self.prices = store, engine, base_factory, prices
        self.defaults = defaults or LoraArgs()
        self.quota = Quota.of(limits or FineTuneLimits(), engine)
        self._admit = threading.Lock()
        """Held from a quota's check to the record it allows: two requests cannot both take the last place."""
        self._wake = threading.Condition()
        self._changes = 0
        """Counts :meth:`_notify` calls: a thread that scanned before a change does not sleep through it."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def base_name(self) -> str:
        return self.engine.base_name

    # -- requests -------------------------------------------------------------------------------------
    def upload(self, filename: str, purpose: str, content: bytes) -> FileObject:
        if purpose != FINE_TUNE:
            raise JobRefused(
                f"purpose: this server keeps files for fine-tuning only ('{FINE_TUNE}')", "purpose"
            )
        try:
            rows = read_chat_rows(content, filename)
        except DataError as err:
            raise JobRefused(str(err), "file") from None
        self.quota.check_rows(rows, filename)
        with self._admit:
            self.quota.check_upload(self.store.files(), len(content))
            return self.store.add_file(filename, purpose, content)

    def delete_file(self, file_id: str) -> FileDeleted:
        """Forget a file (OpenAI's ``DELETE /v1/files/{id}``), unless a job waiting or training reads it."""
        with self._admit:
            if self.store.file(file_id) is None:
                raise JobRefused(f"no file {file_id!r} on this server", "file_id", 404)
            for job in self.store.jobs():
                if job["status"] in ACTIVE and file_id in (job["training_file"], job["validation_file"]):
                    raise JobRefused(
                        f"file {file_id} is read by job {job['id']}, which has not finished", "file_id"
                    )
            self.store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def _file_rows(self, file_id: str | None, param: str) -> list[ChatRow]:
        """A fine-tuning file's rows (none without a file id), each within the tokens a row may have."""
        file = self.store.file(file_id) if file_id else None
        if not file_id:
            return []
        if file is None or file["purpose"] != FINE_TUNE:
            raise JobRefused(f"{param}: no fine-tuning file {file_id!r} on this server", param)
        try:
            rows = self._rows(file_id)
        except DataError as err:  # kept by an older server that checked less
            raise JobRefused(str(err), param) from None
        self.quota.check_rows(rows, file["filename"], param)
        return rows

    def create(self, body: Mapping[str, Any]) -> JobObject:
        job = new_job(body, self.base_name, self.defaults)
        rows = self._file_rows(job["training_file"], "training_file")
        validation = len(self._file_rows(job["validation_file"], "validation_file"))
        if not job["validation_file"]:
            validation = held_back_count(len(rows)) if len(rows) > 1 else 0
        self.quota.check_job(job["hyperparameters"], len(rows) - validation, validation)
        adapters = self.engine.adapters
        with self._admit:
            self.quota.check_room(self.store, len(adapters.names()), adapters.policy.max_adapters)
            self.store.add_job(job, {})
        self.store.add_event(job["id"], f"Created fine-tuning job: {job['id']}")
        self.store.add_event(job["id"], f"Validating training file: {job['training_file']}")
        self._notify()
        return job

    def cancel(self, job_id: str) -> JobObject:
        with self._lock:
            job = self.job(job_id)
            if job["status"] in FINISHED:
                raise JobRefused(f"job {job_id} has already {job['status']}; it cannot be cancelled")
            job = self.store.update_job(job_id, status="cancelled", finished_at=now())
        self.store.add_event(job_id, "Fine-tuning job cancelled")
        self._notify()
        return job

    def job(self, job_id: str) -> JobObject:
        job = self.store.job(job_id)
        if job is None:
            raise JobRefused(f"no fine-tuning job {job_id!r} on this server", "fine_tuning_job_id", 404)
        return job

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Serve the succeeded jobs' models again, queue the jobs a stopped server left, start the threads
        (the engine's worker must be running)."""
        for job_id in self.store.oldest_first("running"):
            self.store.add_event(
                job_id,
                "The server stopped while this job was running; it is queued again, and training continues "
                "from its last checkpoint if one was saved",
                level="warn",
            )
            self.store.update_job(job_id, status="queued")
        for job in self.store.jobs():
            if job["status"] == "succeeded" and job["fine_tuned_model"]:
                self._serve_again(job["id"], job["fine_tuned_model"])
        for target, name in ((self._validate_loop, "validator"), (self._train_loop, "trainer")):
            thread = threading.Thread(target=target, name=f"fewtune-finetune-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve_again(self, job_id: str, model: str) -> None:
        folder = adapter_folder(self.store, job_id)
        try:
            self.engine.load_adapter(model, folder).result()
        except FewtuneError as err:
            print(f"fine-tuned model {model} not served: {err}", file=sys.stderr)
            message = f"The fine-tuned model could not be served again: {err}"
            self.store.add_event(job_id, message, level="warn")

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the threads; a job in training stops at its next step and stays ``running`` on disk, so the
        next start continues it."""
        self._stopping.set()
        self._notify()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads = []

    def _notify(self) -> None:
        with self._wake:
            self._changes += 1
            self._wake.notify_all()

    def _seen(self) -> int:
        with self._wake:
            return self._changes

    def _idle(self, seen: int) -> None:
        """Wait for a change after the one ``seen`` (or a second, whichever comes first)."""
        with self._wake:
            if self._changes == seen:
                self._wake.wait(IDLE_WAKE_S)

    # -- validating_files -> queued ---------------------------------------------------------------------
    def _validate_loop(self) -> None:
        while not self._stopping.is_set():
            seen = self._seen()
            waiting = self.store.oldest_first("validating_files")
            for job_id in waiting:
                self._guarded(job_id, self._validate, "invalid_training_file")
            if not waiting:
                self._idle(seen)

    def _guarded(self, job_id: str, work: Callable[[str], None], code: str) -> None:
        """``work(job_id)``, any exception it raises the job's ``failed`` status with its message; the
        thread goes on with the next job (if even the failure cannot be written, it waits a second)."""
        try:
            try:
                work(job_id)
            except _Stop:  # cancelled (recorded by cancel), or the server is stopping (resumed at next start)
                if self.job(job_id)["status"] == "cancelled":
                    shutil.rmtree(adapter_folder(self.store, job_id), ignore_errors=True)
            except Exception as err:
                self._fail(job_id, *failure(err, code))
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self._idle(self._seen())

    def _rows(self, file_id: str) -> list[ChatRow]:
        file = self.store.file(file_id)
        assert file is not None, "checked when the job was created"
        return read_chat_rows(self.store.file_content(file_id), file["filename"])

    def _validate(self, job_id: str) -> None:
        job = self.job(job_id)
        try:
            rows = self._rows(job["training_file"])
            if job["validation_file"]:
                self._rows(job["validation_file"])
                held: set[int] = set()
            elif len(rows) < 2:
                raise JobRefused(
                    f"training_file has {len(rows)} example: at least 2 are needed to hold one back for the "
                    "held-out comparison, or give a validation_file",
                    "training_file",
                )
            else:
                held = held_back(rows, job["seed"])
        except (DataError, JobRefused) as err:
            param = err.param if isinstance(err, JobRefused) else "training_file"
            self._fail(job_id, str(err), "invalid_training_file", param)
            return
        with self._lock:
            if self.job(job_id)["status"] != "validating_files":
                return  # cancelled meanwhile
            self.store.update_job(job_id, status="queued", internal={"held_back_lines": sorted(held)})
        self.store.add_event(job_id, "Files validated, moving job to queued state")
        self._notify()

    def _fail(self, job_id: str, message: str, code: str, param: str | None = None) -> None:
        with self._lock:
            if self.job(job_id)["status"] in FINISHED:
                return
            error: JobError = {"code": code, "message": message, "param": param}
            self.store.update_job(job_id, status="failed", error=error, finished_at=now())
        self.store.add_event(job_id, f"Fine-tuning job failed: {message}", level="error")

    # -- queued -> running -> succeeded ---------------------------------------------------------------
    def _train_loop(self) -> None:
        while not self._stopping.is_set():
            seen = self._seen()
            queued = self.store.oldest_first("queued")
            if not queued:
                self._idle(seen)
                continue
            self._guarded(queued[0], self._train, "training_failed")
            gc.collect()

    def _check(self, job_id: str) -> None:
        if self._stopping.is_set() or self.job(job_id)["status"] == "cancelled":
            raise _Stop

    def _train(self, job_id: str) -> None:

        with self._lock:
            if self.job(job_id)["status"] != "queued":
                return
            job = self.store.update_job(job_id, status="running")
        self.store.add_event(job_id, "Fine-tuning job started")
        adapters = self.engine.adapters
        if len(adapters.names()) >= adapters.policy.max_adapters:  # loaded since the job was created
            limit = adapters.policy.max_adapters
            raise FewtuneError(f"no room for the adapter: {limit} are loaded (--max-adapters); unload one")
        name = model_name(self.base_name, job["user_provided_suffix"], job_id)
        folder = adapter_folder(self.store, job_id)
        document = train_and_compare(
            TrainingJob(job, name, folder, *self._split(job_id, job)),
            self.base_factory,
            self.engine,
            self.prices,
            self.defaults,
            check=lambda: self._check(job_id),
            say=lambda message, **event: self.store.add_event(job_id, message, **event),
        )
        self._check(job_id)
        self.engine.load_adapter(name, folder).result()
        self._succeed(job_id, name, document)

    def _split(self, job_id: str, job: JobObject) -> tuple[list[ChatRow], list[ChatRow]]:
        """The rows to train on and the rows to compare on: the validation file's, or those held back."""
        held = set(self.store.internal(job_id).get("held_back_lines") or [])
        rows = self._rows(job["training_file"])
        train = [row for row in rows if row.line not in held]
        validation = [r for r in rows if r.line in held]
        if job["validation_file"]:
            validation = self._rows(job["validation_file"])
        return train, validation

    def _succeed(self, job_id: str, name: str, document: ResultFile) -> None:
        """Save the comparison and checkpoint, mark the job succeeded: under one lock (unless cancelled)."""
        training, steps = document["training"], document["steps"]
        content = json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8")
        with self._lock:
            if self.job(job_id)["status"] != "running":  # cancelled while the adapter was registered
                self.engine.unload_adapter(name).result()
                raise _Stop
            results = self.store.add_file(f"{job_id}-comparison.json", RESULTS, content)
            last = steps[-1]["train_loss"] if steps else None
            self.store.set_checkpoints(job_id, [new_checkpoint(job_id, name, training["steps"], last)])
            self.store.update_job(
                job_id,
                status="succeeded",
                fine_tuned_model=name,
                finished_at=now(),
                trained_tokens=training["trained_tokens"],
                result_files=[results["id"]],
            )
        self.store.add_event(job_id, f"New fine-tuned model created: {name}")
        self.store.add_event(job_id, "The job has successfully completed")


def failure(err: Exception, code: str) -> tuple[str, str]:
    """A job's error message and code for ``err``: fewtune's own sentence; an OSError's reason without its
    path (the client is not told the server's paths); otherwise its kind, the traceback in the log."""
    if isinstance(err, FewtuneError):
        return str(err), code
    if isinstance(err, OSError):
        return (
            f"{type(err).__name__}: {err.strerror or 'the server could not read or write a file'}",
            "server_error",
        )
    traceback.print_exception(err, file=sys.stderr)
    return f"the job failed ({type(err).__name__}); see the server's log", "server_error"


def adapter_folder(store: FineTuneStore, job_id: str) -> Path:
    """Where a job's adapter is saved (and its training checkpoints while it trains)."""
    return store.job_folder(job_id) / "adapter"
