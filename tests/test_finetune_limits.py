"""The fine-tuning API's limits (:mod:`fewtune.serve.finetune.quota`) and its workers under faults: rows over
the context, too many files or bytes, jobs, steps, validation rows or adapters are one-line 400s at upload or
create; ``DELETE /v1/files/{id}``; a cancel stops the held-out comparison; an exception in a worker fails
its job and the next job still runs; damaged records are skipped at start (tiny model, loopback)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from finetune_server import BASE, KEY, Gate, Server, chat_file, fresh_base, prompt, running
from servers import make_adapter

from fewtune.backends.hf import HFBackend
from fewtune.http_client import httpx
from fewtune.serve.finetune.state import FineTuneStore
from fewtune.serve.limits import FineTuneLimits

SMALL = FineTuneLimits(
    max_train_tokens=4096,
    max_files=3,
    max_upload_bytes=20_000,
    max_jobs=2,
    max_steps=40,
    max_validation_rows=5,
)


def _message(caught: pytest.ExceptionInfo[openai.APIStatusError]) -> str:
    message = str(caught.value.body["message"])  # type: ignore[index]
    assert "\n" not in message
    return message


def long_row(chars: int) -> bytes:
    user = {"role": "user", "content": prompt("word " * (chars // 5))}
    return json.dumps({"messages": [user, {"role": "assistant", "content": " positive"}]}).encode() + b"\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("limits")) as served:  # the default limits
        yield served


def test_a_64_kb_row_is_refused_at_upload_in_one_line(server: Server) -> None:
    """Training memory grows with a row's square: a row over the model's context (1024 tokens for the tiny
    model, under the default --max-train-tokens 4096) is refused before it is kept or trained."""
    content = chat_file(3) + long_row(64 * 1024)
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().files.create(file=("long.jsonl", content), purpose="fine-tune")
    message = _message(caught)
    assert message.startswith("long.jsonl:4: ") and "tokens, over this server's 1024 per row" in message
    assert caught.value.body["param"] == "file"  # type: ignore[index]
    assert "long.jsonl" not in [f.filename for f in server.client().files.list()]


def test_a_file_is_deleted_as_openai_deletes_it(server: Server) -> None:
    client = server.client()
    file_id = server.upload(chat_file(3))
    deleted = client.files.delete(file_id)
    assert (deleted.id, deleted.object, deleted.deleted) == (file_id, "file", True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError, match="no file"):
        client.files.delete(file_id)
    assert not list(server.folder.glob(f"files/{file_id}.*"))


def test_files_bytes_jobs_steps_and_validation_rows_have_limits(tmp_path: Path) -> None:
    gate = Gate()
    with running(tmp_path, gate, limits=SMALL) as server:
        client = server.client()
        files = [server.upload(chat_file(12, offset=i)) for i in range(2)]
        with pytest.raises(openai.BadRequestError) as caught:  # 2 x ~3 KB kept, 20 KB allowed
            client.files.create(file=("big.jsonl", chat_file(80)), purpose="fine-tune")
        assert "past 20000 bytes" in _message(caught) and "DELETE /v1/files/{id}" in _message(caught)
        big = server.upload(chat_file(30))  # 3 files: the most
        with pytest.raises(openai.BadRequestError) as caught:
            client.files.create(file=("one.jsonl", chat_file(2)), purpose="fine-tune")
        assert "at most 3 files (--max-files)" in _message(caught)
        with pytest.raises(openai.BadRequestError) as caught:  # 50 epochs x 10 rows / batch 1
            hyper = {"n_epochs": 50, "batch_size": 1}
            client.fine_tuning.jobs.create(model=BASE, training_file=files[0], hyperparameters=hyper)
        assert "would take 500 steps (50 epochs of 10 rows in batches of 1)" in _message(caught)
        assert "over this server's 40 (--max-train-steps)" in _message(caught)
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model=BASE, training_file=files[0], validation_file=big)
        assert "validation_file has 30 rows, over this server's 5" in _message(caught)
        jobs = [server.create(training_file=files[0]) for _ in range(2)]
        assert gate.entered.wait(60)
        with pytest.raises(openai.BadRequestError) as caught:
            server.create(training_file=files[0])
        assert "2 jobs are waiting or training, this server's most (--max-jobs)" in _message(caught)
        with pytest.raises(openai.BadRequestError, match="is read by job"):  # a waiting job reads it
            client.files.delete(files[0])
        client.fine_tuning.jobs.cancel(jobs[1].id)
        client.files.delete(big)  # room again for a file, and a job
        server.upload(chat_file(2))
        gate.open.set()
        assert server.wait(jobs[0].id).status == "succeeded"


def test_the_adapter_budget_is_checked_before_training(tmp_path: Path) -> None:
    gate = Gate()
    with running(tmp_path, gate, max_adapters=3) as server:
        file_id = server.upload(chat_file())
        first = server.create(training_file=file_id)
        assert gate.entered.wait(60)
        second = server.create(training_file=file_id)  # 0 loaded + 2 to come: within 3
        engine = server.service.engine
        for name in ("a", "b"):  # an operator loads two adapters while the jobs wait
            engine.load_adapter(name, make_adapter(server.tokenizer, tmp_path / name, seed=1)).result()
        with pytest.raises(openai.BadRequestError) as caught:
            server.create(training_file=file_id)
        assert "no room for this job's adapter: 2 loaded and 2 being trained" in _message(caught)
        gate.open.set()
        assert server.wait(first.id).status == "succeeded"  # its adapter is the third
        job = server.wait(second.id)
        assert job.status == "failed" and "no room for the adapter: 3 are loaded" in job.error.message
        messages = [e.message for e in server.client().fine_tuning.jobs.list_events(second.id, limit=100)]
        assert not any(m.startswith("Step") for m in messages)  # refused before any training


class HeldScoring:
    """A base factory whose model holds the comparison's first scoring call until it is let through."""

    def __init__(self) -> None:
        self.entered, self.open = threading.Event(), threading.Event()
        self.calls = 0

    def __call__(self, tokenizer: Any) -> HFBackend:
        outer = self
        backend = fresh_base(tokenizer)
        score = backend.score_choices

        def held(*args: Any, **kwargs: Any) -> Any:
            outer.calls += 1
            outer.entered.set()
            assert outer.open.wait(60)
            return score(*args, **kwargs)

        backend.score_choices = held  # type: ignore[method-assign]
        return backend


def test_cancel_stops_the_held_out_comparison(tmp_path: Path) -> None:
    held = HeldScoring()
    with running(tmp_path, held) as server:
        job = server.create(training_file=server.upload(chat_file(40)))
        assert held.entered.wait(60)  # trained; scoring the few-shot side of the comparison
        server.client().fine_tuning.jobs.cancel(job.id)
        held.open.set()
        assert server.wait(job.id).status == "cancelled"
        time.sleep(0.5)
        messages = [e.message for e in server.client().fine_tuning.jobs.list_events(job.id, limit=100)]
        assert not any(m.startswith("Held-out comparison") for m in messages), messages
        assert held.calls == 1  # the fine-tuned side was never scored
        assert job.id not in " ".join(m.id for m in server.client().models.list())


def test_an_oserror_in_the_validator_fails_its_job_and_the_next_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path) as server:
        file_id = server.upload(chat_file())
        store = server.service.store
        read = store.file_content
        faults = iter([OSError(28, "No space left on device", "/srv/secret/file.data")])

        def flaky(name: str) -> bytes:
            if threading.current_thread().name.endswith("validator"):
                fault = next(faults, None)
                if fault is not None:
                    raise fault
            return read(name)

        monkeypatch.setattr(store, "file_content", flaky)
        broken = server.wait(server.create(training_file=file_id).id)
        assert broken.status == "failed" and broken.error.message == "OSError: No space left on device"
        assert broken.error.code == "server_error" and "/srv" not in broken.error.message
        assert server.wait(server.create(training_file=file_id).id).status == "succeeded"


def test_damaged_records_are_skipped_at_start_with_a_warning(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        kept = server.wait(server.create(training_file=server.upload(chat_file(4))).id)
    (tmp_path / "jobs" / "ftjob-cut").mkdir()
    (tmp_path / "jobs" / "ftjob-cut" / "job.json").write_text('{"job": {"id": "ftjob-cut"}, "seq": 3}')
    (tmp_path / "jobs" / "ftjob-odd").mkdir()
    (tmp_path / "jobs" / "ftjob-odd" / "job.json").write_text("[1, 2]")
    (tmp_path / "files" / "file-odd.json").write_text('{"file": "x", "seq": "y"}')
    (tmp_path / "files" / "file-odd.data").write_bytes(chat_file(2))
    (tmp_path / "jobs" / kept.id / "checkpoints.json").write_text('{"not": "a list"}')
    with pytest.warns(UserWarning, match="a damaged fine-tuning record, skipped") as caught:
        FineTuneStore(tmp_path)
    assert len(caught) == 3
    with pytest.warns(UserWarning), running(tmp_path) as server:
        client = server.client()
        assert [job.id for job in client.fine_tuning.jobs.list()] == [kept.id]
        assert list(client.fine_tuning.jobs.checkpoints.list(kept.id)) == []


def test_forty_concurrent_job_creations_leave_inference_answering(tmp_path: Path) -> None:
    """40 clients create a job at once: the queue takes --max-jobs (4 by default), the rest are 400s, and
    inference answers throughout."""
    gate = Gate()
    with running(tmp_path, gate) as server:
        file_id = server.upload(chat_file())
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {"model": BASE, "training_file": file_id}

        def create(_: int) -> int:
            return httpx.post(
                f"{server.url}/v1/fine_tuning/jobs", json=body, headers=headers, timeout=60
            ).status_code

        def ask() -> float:
            start = time.monotonic()
            answer = httpx.post(
                f"{server.url}/v1/completions",
                json={"model": BASE, "prompt": prompt("great fun"), "max_tokens": 2},
                headers=headers,
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            return time.monotonic() - start

        with ThreadPoolExecutor(48) as pool:
            created = pool.map(create, range(40))
            answers = [pool.submit(ask) for _ in range(8)]
            statuses = sorted(created)
            seconds = [a.result() for a in answers]
        assert statuses == [200] * 4 + [400] * 36
        assert max(seconds) < 10, seconds
        gate.open.set()
        assert ask() < 10
