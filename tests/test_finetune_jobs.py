"""Fine-tuning jobs on their own ``fewtune serve``: cancelled while running, failing with their error, and
surviving a restart (the unmodified ``openai`` client on loopback, a tiny model)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from finetune_server import Gate, chat_file, prompt, reference_model, running, token_log_probs

from fewtune.backends.hf import HFBackend
from fewtune.errors import ModelError


def test_cancel_stops_a_running_job(tmp_path: Path) -> None:
    gate = Gate()
    with running(tmp_path, gate) as server:
        job = server.create(training_file=server.upload(chat_file()))
        assert gate.entered.wait(60) and server.wait(job.id, ("running",)).status == "running"
        assert server.client().fine_tuning.jobs.cancel(job.id).status == "cancelled"
        gate.open.set()
        later = server.create(training_file=server.upload(chat_file(4)))  # the trainer is free again
        assert server.wait(later.id).status == "succeeded"
        job = server.wait(job.id)
        assert job.status == "cancelled" and job.fine_tuned_model is None and job.result_files == []
        assert list(server.client().fine_tuning.jobs.checkpoints.list(job.id)) == []
        served = [m.id for m in server.client().models.list()]
        assert later.id in " ".join(served) and job.id not in " ".join(served)
        messages = [e.message for e in server.client().fine_tuning.jobs.list_events(job.id)]
        assert "Fine-tuning job cancelled" in messages and not any(m.startswith("Step") for m in messages)


def test_a_job_that_cannot_train_fails_with_its_error(tmp_path: Path) -> None:
    def broken(tokenizer: Any) -> HFBackend:
        raise ModelError("the base model cannot be loaded for training")

    with running(tmp_path, broken) as server:
        lonely = server.wait(server.create(training_file=server.upload(chat_file(1))).id)
        assert lonely.status == "failed" and lonely.error.code == "invalid_training_file"
        assert "training_file has 1 example: at least 2 are needed" in lonely.error.message
        job = server.wait(server.create(training_file=server.upload(chat_file())).id)
        assert job.status == "failed" and job.error.message == "the base model cannot be loaded for training"
        assert job.fine_tuned_model is None and job.finished_at is not None
        (last, *_) = server.client().fine_tuning.jobs.list_events(job.id)
        assert last.level == "error" and last.message.endswith("cannot be loaded for training")


def test_jobs_survive_a_restart_and_a_running_job_resumes(tmp_path: Path) -> None:
    gate = Gate()
    with running(tmp_path, gate) as first:
        file = first.upload(chat_file())
        job = first.create(training_file=file)
        assert gate.entered.wait(60)
        threading.Timer(0.5, gate.open.set).start()  # let the held job see the server stopping
    assert json.loads((tmp_path / "jobs" / job.id / "job.json").read_text())["job"]["status"] == "running"
    with running(tmp_path) as second:
        client = second.client()
        assert client.files.retrieve(file).id == file
        done = second.wait(job.id)
        assert done.status == "succeeded" and [j.id for j in client.fine_tuning.jobs.list()] == [job.id]
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any(m.startswith("The server stopped while this job was running") for m in messages)
    with running(tmp_path) as third:  # a succeeded job's model is served again after a restart
        text = prompt("great fun") + " positive"
        response = third.client().completions.create(
            model=done.fine_tuned_model, prompt=text, max_tokens=0, echo=True, logprobs=1
        )
        expected = token_log_probs(reference_model(third, job.id), third.tokenizer(text).input_ids)
        assert response.choices[0].logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
