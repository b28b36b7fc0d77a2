"""``fewtune serve``'s Files and Fine-tuning APIs, driven by the unmodified ``openai`` client against a real
uvicorn server on loopback: a tiny model, a tiny training file, one or two epochs."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from finetune_server import (
    BASE,
    BATCH,
    EPOCHS,
    KEY,
    LABELS,
    ROWS,
    Server,
    chat_file,
    chat_lines,
    prompt,
    reference_model,
    running,
    token_log_probs,
)
from tiny import tiny_model

from fewtune.backends.hf import HFBackend
from fewtune.http_client import httpx


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("finetune")) as served:
        yield served


@pytest.fixture(scope="module")
def trained(server: Server) -> Any:
    """One job, trained to the end on 12 rows (2 held back for the comparison)."""
    created = server.create(training_file=server.upload(chat_file()), suffix="t")
    assert created.status == "validating_files"
    return server.wait(created.id)


def test_an_uploaded_file_reads_back_as_it_was_sent(server: Server) -> None:
    content = chat_file(3)
    client = server.client()
    file = client.files.create(file=("mine.jsonl", content), purpose="fine-tune")
    assert (file.object, file.purpose, file.bytes, file.filename) == (
        "file",
        "fine-tune",
        len(content),
        "mine.jsonl",
    )
    assert client.files.retrieve(file.id).id == file.id
    assert client.files.content(file.id).read() == content
    assert file.id in [f.id for f in client.files.list()]


BAD_FILES = [
    (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "bad.jsonl:1: the messages must end with"),
    (chat_file(1) + b'{"messages": [\n', "bad.jsonl:2: not valid JSON"),
    (
        chat_file(2) + b"\n" + b'{"prompt": "a", "completion": "b"}\n',
        'bad.jsonl:4: expected an object with a "messages"',
    ),
    (
        b'{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        "role 'tool'",
    ),
    (
        b'{"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]}',
        "content as text",
    ),
    (
        b'{"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        "no user message",
    ),
    (
        b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}',
        "answer is empty",
    ),
    (chat_file(1) + b'{"messages": "\xff"}\n', "bad.jsonl:2: not UTF-8 text"),
    (b"\n\n", "bad.jsonl: no training examples"),
]


@pytest.mark.parametrize(("content", "fragment"), BAD_FILES)
def test_a_bad_training_file_is_a_one_line_400_naming_its_line(
    server: Server, content: bytes, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().files.create(file=("bad.jsonl", content), purpose="fine-tune")
    message = caught.value.body["message"]  # type: ignore[index]
    assert fragment in message and "\n" not in message
    assert caught.value.body["param"] == "file"  # type: ignore[index]


def test_only_fine_tuning_files_are_kept(server: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="fine-tuning only"):
        server.client().files.create(file=("b.jsonl", chat_file(2)), purpose="batch")


def test_a_job_goes_through_its_states_to_a_model(server: Server, trained: Any) -> None:
    job = trained
    assert job.status == "succeeded" and job.error is None
    assert job.fine_tuned_model == f"ft:{BASE}:local:t:{job.id}"
    assert job.hyperparameters.n_epochs == EPOCHS and job.hyperparameters.batch_size == BATCH
    assert job.finished_at >= job.created_at and len(job.result_files) == 1
    events = list(server.client().fine_tuning.jobs.list_events(job.id, limit=100))[::-1]  # oldest first
    messages = [e.message for e in events]
    steps = math.ceil((ROWS - 2) / BATCH) * EPOCHS
    for expected in (
        f"Created fine-tuning job: {job.id}",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
        f"Step {steps}/{steps}: training loss=",
        f"New fine-tuned model created: {job.fine_tuned_model}",
        "The job has successfully completed",
    ):
        assert any(m.startswith(expected) for m in messages), expected
    order = [
        next(i for i, m in enumerate(messages) if m.startswith(s))
        for s in ("Files", "Fine-tuning job", "New")
    ]
    assert order == sorted(order)
    metrics = [e.data for e in events if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert all(m["total_steps"] == steps and m["train_loss"] > 0 for m in metrics)
    # the tokens trained on: every training row's prompt and answer, once per epoch
    held = {
        row["line"] for row in json.loads(server.client().files.content(job.result_files[0]).read())["rows"]
    }
    train = [line for i, line in enumerate(chat_lines(ROWS), 1) if i not in held]
    tokens = sum(
        len(server.tokenizer(r["messages"][0]["content"]).input_ids)
        + len(server.tokenizer(r["messages"][1]["content"], add_special_tokens=False).input_ids)
        for r in train
    )
    assert job.trained_tokens == tokens * EPOCHS


def test_events_and_checkpoints_are_cursor_pages(server: Server, trained: Any) -> None:
    client = server.client()
    everything = [e.id for e in client.fine_tuning.jobs.list_events(trained.id, limit=100)]
    first = client.fine_tuning.jobs.list_events(trained.id, limit=2)
    assert len(first.data) == 2 and first.has_more
    assert [e.id for e in first] == everything  # auto-paging with after= walks every page
    assert len(everything) == len(set(everything)) > 6
    (checkpoint,) = client.fine_tuning.jobs.checkpoints.list(trained.id)
    assert checkpoint.fine_tuned_model_checkpoint == trained.fine_tuned_model
    assert checkpoint.step_number == math.ceil((ROWS - 2) / BATCH) * EPOCHS
    assert checkpoint.metrics.train_loss is not None and checkpoint.fine_tuning_job_id == trained.id


def test_the_fine_tuned_model_is_served_at_once(server: Server, trained: Any) -> None:
    client = server.client()
    name = trained.fine_tuned_model
    assert name in [m.id for m in client.models.list()]
    text = prompt("great fun") + " positive"
    response = client.completions.create(model=name, prompt=text, max_tokens=0, echo=True, logprobs=1)
    served = response.choices[0].logprobs.token_logprobs[1:]
    ids = server.tokenizer(text).input_ids
    assert served == pytest.approx(token_log_probs(reference_model(server, trained.id), ids), abs=1e-4)
    base = token_log_probs(tiny_model(server.tokenizer, sliding_window=512).eval(), ids)
    assert max(abs(a - b) for a, b in zip(served, base, strict=True)) > 1e-3  # training changed the model
    chat = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": prompt("great fun")}], max_tokens=2
    )
    assert chat.model == name and chat.choices[0].message.content is not None


def test_the_result_file_holds_the_held_out_comparison(server: Server, trained: Any) -> None:
    doc = json.loads(server.client().files.content(trained.result_files[0]).read())
    rows = doc["rows"]
    assert doc["object"] == "fewtune.fine_tuning.comparison" and doc["job"] == trained.id
    assert doc["validation"] == {"rows": 2, "source": "held back from training_file", "file": None}
    assert len(rows) == 2 and doc["labels"] == LABELS and doc["metric"] == "accuracy"
    assert not {row["line"] for row in rows} & set(doc["few_shot"]["demo_lines"])  # demos: training rows
    assert doc["few_shot"]["shots"] == 5 and doc["training"]["examples"] == ROWS - 2
    for side in ("few_shot", "fine_tuned"):
        correct = [row[side] == row["answer"] for row in rows]
        assert doc[side]["correct"] == sum(correct) and doc[side]["score"] == sum(correct) / len(rows)
    # the fine-tuned side is the job's model: its answers are the argmax of its label log-likelihoods here
    reference = HFBackend(reference_model(server, trained.id), server.tokenizer)
    lines = chat_lines(ROWS)
    prompts = [lines[row["line"] - 1]["messages"][0]["content"] for row in rows]
    scores = reference.score_choices(prompts, LABELS)
    assert [LABELS[i] for i in scores.argmax(axis=1)] == [row["fine_tuned"] for row in rows]
    assert [row["fine_tuned_logprob"] for row in rows] == pytest.approx(scores.max(axis=1).tolist(), abs=1e-4)
    comparison = doc["comparison"]
    assert comparison["test"] == "exact McNemar" and comparison["rows"] == 2
    assert comparison["baseline"] == "few-shot k=5" and comparison["candidate"] == trained.fine_tuned_model
    assert doc["verdict"].startswith(
        ("fine-tuning pays", "fine-tuning was not needed", "fine-tuning helps", "not settled")
    )
    assert "not settled on 2 validation rows" in doc["verdict"]  # 2 rows show nothing either way
    cost = doc["cost"]
    assert cost["fine_tuned"]["setup"] > cost["few_shot"]["setup"] > 0 and cost["pricing"] == "self-hosted"
    assert cost["fine_tuned"]["setup_breakdown"]["labelling"] == pytest.approx((ROWS - 2) * 0.10)


def test_a_validation_file_is_used_instead_of_holding_rows_back(server: Server) -> None:
    job = server.create(
        training_file=server.upload(chat_file(6)), validation_file=server.upload(chat_file(4, 50))
    )
    job = server.wait(job.id)
    doc = json.loads(server.client().files.content(job.result_files[0]).read())
    assert job.status == "succeeded" and doc["training"]["examples"] == 6
    assert doc["validation"]["rows"] == 4 and doc["validation"]["source"] == "validation_file"


BAD_JOBS = [
    (
        {"model": "gpt-4o"},
        "model 'gpt-4o' cannot be fine-tuned on this server; it fine-tunes tiny-base",
        "model",
    ),
    ({"training_file": "file-nope"}, "training_file: no fine-tuning file 'file-nope'", "training_file"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs must be between 1 and 50", "n_epochs"),
    ({"hyperparameters": {"batch_size": 1.5}}, "batch_size must be a whole number", "batch_size"),
    ({"method": {"type": "dpo"}}, "supervised fine-tuning only", "method"),
    ({"suffix": "a:b"}, "suffix must be 1-64 letters", "suffix"),
    ({"seed": -1}, "seed must be a whole number", "seed"),
]


@pytest.mark.parametrize(("change", "fragment", "param"), BAD_JOBS)
def test_a_job_the_server_cannot_run_is_a_one_line_400(
    server: Server, change: dict[str, Any], fragment: str, param: str
) -> None:
    body = {"model": BASE, "training_file": server.upload(chat_file(4)), **change}
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().fine_tuning.jobs.create(**body)
    assert fragment in caught.value.body["message"] and caught.value.body["param"] == param  # type: ignore[index]


def test_unknown_ids_finished_jobs_and_missing_keys_are_refused(server: Server, trained: Any) -> None:
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="no fine-tuning job 'ftjob-nope'"):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError, match="no file 'file-nope'"):
        client.files.content("file-nope")
    with pytest.raises(openai.BadRequestError, match=f"job {trained.id} has already succeeded"):
        client.fine_tuning.jobs.cancel(trained.id)
    with pytest.raises(openai.BadRequestError, match="after: 'ftevent-nope' is not an id"):
        client.fine_tuning.jobs.list_events(trained.id, after="ftevent-nope")
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").fine_tuning.jobs.list()


def test_jobs_list_newest_first_in_pages_and_waiting_jobs_cancel_at_once(
    server: Server, trained: Any
) -> None:
    client = server.client()
    file = server.upload(chat_file(4))
    waiting = [server.create(training_file=file) for _ in range(2)]
    cancelled = [client.fine_tuning.jobs.cancel(job.id) for job in waiting]
    assert [job.status for job in cancelled] == ["cancelled", "cancelled"]
    listed = [job.id for job in client.fine_tuning.jobs.list(limit=1)]
    assert listed[:2] == [waiting[1].id, waiting[0].id] and trained.id in listed
    assert client.fine_tuning.jobs.list(limit=1).has_more
    time.sleep(0.3)  # the worker had its chance: a cancelled job never runs
    for job in waiting:
        assert server.wait(job.id).status == "cancelled" and server.wait(job.id).fine_tuned_model is None
        assert not (server.folder / "jobs" / job.id / "adapter").exists()


VERDICTS = [  # (lead CI in points, p-value, rows, rows needed) -> the verdict's start
    ((8.0, 20.0), 0.001, 200, 150, "fine-tuning pays"),
    ((8.0, 20.0), 0.2, 200, 150, "not settled"),  # an interval without significance proves nothing
    (
        (-19.0, -4.0),
        0.008,
        100,
        50,  # enough rows to show "within 5 points", but prompting is better: that is what it says
        "fine-tuning was not needed: 5-shot prompting of the base model is significantly better",
    ),
    (
        (-3.0, 4.0),
        0.6,
        400,
        300,
        "fine-tuning was not needed: 5-shot prompting of the base model is shown within",
    ),
    ((-3.0, 4.0), 0.6, 100, 300, "not settled on 100 validation rows"),  # too few rows to show it
    ((0.0, 0.0), 1.0, 2, 155, "not settled on 2 validation rows"),
    ((1.0, 9.0), 0.01, 300, 250, "fine-tuning helps, but is not shown more than 5 points ahead"),
]


@pytest.mark.parametrize(("interval", "p_value", "rows", "needed", "start"), VERDICTS)
def test_the_verdict_line(
    interval: tuple[float, float], p_value: float, rows: int, needed: int, start: str
) -> None:
    from fewtune.decide.evidence import Comparison
    from fewtune.serve.finetune.compare import verdict

    lead = sum(interval) / 2 / 100
    c = Comparison("few-shot k=5", "ft", 0.5, 0.5 + lead, test="exact McNemar", rows=rows, p_value=p_value,
                   lead_ci95=interval, rows_needed=needed, rows_needed_points=5.0)  # fmt: skip
    assert verdict(c, 5, "accuracy").startswith(start)


def test_a_row_with_a_system_message_and_turns_reads_into_prompt_and_answer() -> None:
    from fewtune.serve.finetune.chat_rows import few_shot_prompt, read_chat_rows

    line = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": " later"},
        ]
    }
    (row,) = read_chat_rows(json.dumps(line).encode() + b"\n\n", "f.jsonl")
    assert row.line == 1 and row.answer == " later" and len(row.messages) == 4

    def render(messages: Any) -> str:
        return "\n".join(m["content"] for m in messages)

    assert few_shot_prompt([row], row, render, chat_template=False) == (
        "Be brief.\nhi\nhello\nbye later\nBe brief.\nhi\nhello\nbye"
    )
    chat = few_shot_prompt([row], row, lambda m: json.dumps([x["role"] for x in m]), chat_template=True)
    assert json.loads(chat)[0] == "system" and json.loads(chat).count("system") == 1


VALUES = [None, True, 0, -1, 1.5, 2**40, "", "auto", "x" * 300, [], {}, {"type": "supervised"}, [1, "a"]]
FIELDS = ["model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed"]


def test_no_job_request_or_upload_gets_a_server_error(server: Server) -> None:
    """Random job bodies and uploads (hypothesis, seeded): refusals, never a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from fewtune.http_client import httpx

    headers = {"Authorization": f"Bearer {KEY}"}
    value = st.sampled_from(VALUES) | st.text(max_size=20) | st.integers()
    nested = value | st.dictionaries(st.sampled_from(["n_epochs", "batch_size", "type", "supervised"]), value)
    bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), nested, max_size=6)
    statuses: list[int] = []

    @given(
        body=bodies | value, raw=st.binary(max_size=200), purpose=st.sampled_from(["fine-tune", "batch", ""])
    )
    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def send(body: Any, raw: bytes, purpose: str) -> None:
        created = httpx.post(f"{server.url}/v1/fine_tuning/jobs", json=body, headers=headers, timeout=30)
        files = {"file": ("f.jsonl", raw)}
        uploaded = httpx.post(
            f"{server.url}/v1/files", files=files, data={"purpose": purpose}, headers=headers
        )
        garbled = httpx.post(f"{server.url}/v1/files", content=raw, headers=headers)
        for response in (created, uploaded, garbled):
            statuses.append(response.status_code)
            assert response.status_code < 500, response.text
            assert response.status_code == 200 or "error" in response.json()

    send()
    assert len(statuses) == 180 and statuses.count(400) > 100


def test_fine_tuning_routes_have_their_own_metrics_labels(server: Server, trained: Any) -> None:
    """/metrics counts /v1/fine_tuning/jobs/{id}/... under its collection: a label per route, not per job."""
    server.client().fine_tuning.jobs.retrieve(trained.id)
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 'endpoint="/v1/fine_tuning/jobs"' in text and 'endpoint="/v1/files"' in text
    endpoints = set(re.findall(r'endpoint="([^"]*)"', text))
    assert not [label for label in endpoints if trained.id in label], endpoints
