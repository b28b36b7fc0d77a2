"""A real ``fewtune serve`` with its Files and Fine-tuning APIs on loopback, over a tiny model, and the chat
training files its tests upload (tests/test_finetune_api.py, tests/test_finetune_jobs.py)."""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import torch
from servers import serving
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.hf import HFBackend
from fewtune.decide.cost import load_price_table
from fewtune.serve.adapters import MAX_ADAPTERS, AdapterPolicy, AdapterSet
from fewtune.serve.app import create_app
from fewtune.serve.engine import Engine
from fewtune.serve.finetune.service import FineTuning, adapter_folder
from fewtune.serve.finetune.state import FineTuneStore
from fewtune.serve.limits import FineTuneLimits

KEY = "ft-test-key"
BASE = "tiny-base"
HEAD = "Classify the input into exactly one label.\nLabels: negative, positive\n"
HEAD += "Answer with the label only.\n---\n"
WORDS = {" positive": "the film is great fun", " negative": "a dull and tired story"}
LABELS = [" negative", " positive"]
ROWS = 12
EPOCHS, BATCH = 2, 4


def prompt(text: str) -> str:
    return f"{HEAD}Input: {text}\nOutput:"


def chat_lines(rows: int, offset: int = 0) -> list[dict[str, Any]]:
    lines = []
    for i in range(offset, offset + rows):
        answer = LABELS[(i + 1) % 2]
        user = {"role": "user", "content": prompt(f"{WORDS[answer]} {i}")}
        lines.append({"messages": [user, {"role": "assistant", "content": answer}]})
    return lines


def chat_file(rows: int = ROWS, offset: int = 0) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in chat_lines(rows, offset)).encode()


@dataclass
class Server:
    url: str
    service: FineTuning
    tokenizer: Any
    folder: Path

    def client(self, key: str = KEY) -> Any:
        return openai.OpenAI(api_key=key, base_url=f"{self.url}/v1", max_retries=0, timeout=60)

    def upload(self, content: bytes, name: str = "train.jsonl") -> str:
        return str(self.client().files.create(file=(name, content), purpose="fine-tune").id)

    def create(self, **body: Any) -> Any:
        hyper = {"n_epochs": EPOCHS, "batch_size": BATCH}
        method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
        return self.client().fine_tuning.jobs.create(model=BASE, method=method, seed=0, **body)

    def wait(self, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled")) -> Any:
        deadline = time.monotonic() + 120
        while True:
            job = self.client().fine_tuning.jobs.retrieve(job_id)
            if job.status in statuses:
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
            time.sleep(0.05)


@contextmanager
def running(
    folder: Path,
    base_factory: Callable[[Any], HFBackend] | None = None,
    limits: FineTuneLimits | None = None,
    max_adapters: int = MAX_ADAPTERS,
) -> Iterator[Server]:
    """A fewtune serve app over a tiny model, its fine-tuning state in ``folder``, on a free port."""
    tokenizer = tiny_tokenizer()
    policy = AdapterPolicy(max_adapters=max_adapters)
    model = tiny_model(tokenizer, sliding_window=512)
    engine = Engine(AdapterSet(model, tokenizer, BASE, policy=policy), batch_wait_ms=5)
    factory = base_factory or fresh_base
    # a tokenizer of its own for the training copy, as the server's factory loads one
    service = FineTuning(
        FineTuneStore(folder),
        engine,
        lambda: factory(tiny_tokenizer()),
        load_price_table(None),
        limits=limits,
    )
    # one key for both roles here: these tests are about the fine-tuning API, not who may call it
    with serving(create_app(engine, api_key=KEY, admin_key=KEY, finetune=service)) as url:
        yield Server(url, service, tokenizer, folder)


def fresh_base(tokenizer: Any) -> HFBackend:
    return HFBackend(tiny_model(tokenizer, sliding_window=512), tokenizer, name=BASE)


def token_log_probs(model: Any, ids: list[int]) -> list[float]:
    with torch.no_grad():
        table = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return table[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).tolist()


def reference_model(server: Server, job_id: str) -> Any:
    """The base with the job's adapter, loaded here from the files the job saved."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        folder = adapter_folder(server.service.store, job_id)
        return PeftModel.from_pretrained(tiny_model(server.tokenizer, sliding_window=512), str(folder)).eval()


class Gate:
    """A base factory that waits until it is let through: the trainer held on its first job (a job held in
    ``running``)."""

    def __init__(self) -> None:
        self.entered, self.open = threading.Event(), threading.Event()

    def __call__(self, tokenizer: Any) -> HFBackend:
        self.entered.set()
        assert self.open.wait(60)
        return fresh_base(tokenizer)
