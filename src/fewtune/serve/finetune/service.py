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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewtune.config import LoraArgs
from fewtune.data.load import Example
from fewtune.data.split import stratified_sample
from fewtune.decide.cost import PriceTable
from fewtune.errors import DataError, FewtuneError
from fewtune.methods import Method
from fewtune.serve.finetune.chat_rows import ChatRow, RenderedTemplate, as_examples, read_chat_rows
from fewtune.serve.finetune.create import JobRefused, model_name, new_job
from fewtune.serve.finetune.state import FINISHED, FineTuneStore, new_checkpoint, now

if TYPE_CHECKING:
    from fewtune.backends.hf import HFBackend
    from fewtune.results.sections import LocalTraining
    from fewtune.serve.engine import Engine
    from fewtune.serve.finetune.compare import LossStep, ResultFile
    from fewtune.serve.finetune.state import EventData, FileObject, JobError, JobObject

FINE_TUNE = "fine-tune"
RESULTS = "fine-tune-results"
HELD_BACK_SHARE = 0.2
"""Share of the training file held back for the comparison when no validation_file is given."""
MAX_HELD_BACK = 200
STEP_EVENTS = 100
"""About this many metrics events per job (every step of a short job)."""
IDLE_WAKE_S = 1.0


class _Stop(Exception):
    """The trainer is asked to end the job now: cancelled, or the server is stopping."""


def held_back(rows: list[ChatRow], seed: int) -> set[int]:
    """Lines of the training file held back for the comparison: a seeded sample stratified by answer."""
    count = min(MAX_HELD_BACK, max(1, round(HELD_BACK_SHARE * len(rows))))
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
    ) -> None:
        self.store, self.engine, self.base_factory, self.prices = store, engine, base_factory, prices
        self.defaults = defaults or LoraArgs()
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
            read_chat_rows(content, filename)
        except DataError as err:
            raise JobRefused(str(err), "file") from None
        return self.store.add_file(filename, purpose, content)

    def _training_file(self, file_id: str | None, param: str) -> None:
        file = self.store.file(file_id) if file_id else None
        if file_id and (file is None or file["purpose"] != FINE_TUNE):
            raise JobRefused(f"{param}: no fine-tuning file {file_id!r} on this server", param)

    def create(self, body: Mapping[str, Any]) -> JobObject:
        job = new_job(body, self.base_name, self.defaults)
        self._training_file(job["training_file"], "training_file")
        self._training_file(job["validation_file"], "validation_file")
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
                self._validate(job_id)
            if not waiting:
                self._idle(seen)

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
            job_id = queued[0]
            try:
                self._train(job_id)
            except _Stop:  # cancelled (recorded by cancel), or the server is stopping (resumed at next start)
                if self.job(job_id)["status"] == "cancelled":
                    shutil.rmtree(adapter_folder(self.store, job_id), ignore_errors=True)
            except FewtuneError as err:
                self._fail(job_id, str(err), "training_failed")
            except Exception as err:  # its text may hold server paths: the traceback goes to the log
                traceback.print_exc(file=sys.stderr)
                message = f"training failed ({type(err).__name__}); see the server's log"
                self._fail(job_id, message, "server_error")
            gc.collect()

    def _check(self, job_id: str) -> None:
        if self._stopping.is_set() or self.job(job_id)["status"] == "cancelled":
            raise _Stop

    def _train(self, job_id: str) -> None:
        from fewtune.serve.finetune.compare import Training, compare_on_validation

        with self._lock:
            if self.job(job_id)["status"] != "queued":
                return
            job = self.store.update_job(job_id, status="running")
        self.store.add_event(job_id, "Fine-tuning job started")
        train, validation = self._split(job_id, job)
        hyper = job["hyperparameters"]
        args = replace(
            self.defaults,
            epochs=hyper["n_epochs"],
            batch_size=hyper["batch_size"],
            lr=self.defaults.lr * hyper["learning_rate_multiplier"],
        )
        base = self.base_factory()
        self._check(job_id)
        render = self.engine.render_chat
        examples = as_examples(train, render)
        total_tokens = sum(
            len(base.encode_prompt(ex.text)) + len(base.encode_continuation(ex.label)) for ex in examples
        )
        folder = adapter_folder(self.store, job_id)
        tuned, info, steps = self._fit(job_id, base, examples, args, folder, job["seed"])
        self._check(job_id)
        name = model_name(self.base_name, job["user_provided_suffix"], job_id)
        chat_template = bool(getattr(self.engine.adapters.tokenizer, "chat_template", None))
        result = compare_on_validation(
            base=base,
            tuned=tuned,
            train=train,
            validation=validation,
            render=render,
            chat_template=chat_template,
            seed=job["seed"],
            training=Training(len(train), info.train_seconds, info.train_tokens_per_second),
            prices=self.prices,
            tuned_name=name,
            say=lambda message: self.store.add_event(job_id, message),
        )
        del base, tuned
        self._check(job_id)
        self.engine.load_adapter(name, folder).result()
        trained_tokens = total_tokens * args.epochs
        document: ResultFile = {
            "job": job_id,
            "fine_tuned_model": name,
            "base_model": self.base_name,
            "training": {
                "examples": len(train),
                "trained_tokens": trained_tokens,
                "train_seconds": info.train_seconds,
                "steps": info.train_steps,
                "hyperparameters": hyper,
                "learning_rate": args.lr,
                Method.LORA.value: {"r": args.r, "alpha": args.alpha, "dropout": args.dropout},
            },
            "validation": {
                "rows": len(validation),
                "source": "validation_file" if job["validation_file"] else "held back from training_file",
                "file": job["validation_file"],
            },
            **result,
            "steps": steps,
        }
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

    def _fit(
        self, job_id: str, base: HFBackend, examples: list[Example], args: LoraArgs, folder: Path, seed: int
    ) -> tuple[HFBackend, LocalTraining, list[LossStep]]:
        """Train the job's adapter (from its checkpoint if any); returns each step's loss as well."""
        from fewtune.training.lora import Lora

        steps: list[LossStep] = []

        def on_step(step: int, total: int, loss: float) -> None:
            self._check(job_id)
            steps.append({"step": step, "train_loss": loss})
            if step % max(1, total // STEP_EVENTS) == 0 or step == total:
                data: EventData = {"step": step, "total_steps": total, "train_loss": loss}
                self.store.add_event(
                    job_id, f"Step {step}/{total}: training loss={loss:.4f}", data=data, kind="metrics"
                )

        lora = Lora(base, RenderedTemplate(), args, folder, seed=seed, progress=on_step)
        tuned, info = lora.train(examples)
        if resumed := info.resumed_at_step:
            self.store.add_event(job_id, f"Training continued from the checkpoint at step {resumed}")
        return tuned, info, steps

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


def adapter_folder(store: FineTuneStore, job_id: str) -> Path:
    """Where a job's adapter is saved (and its training checkpoints while it trains)."""
    return store.job_folder(job_id) / "adapter"
