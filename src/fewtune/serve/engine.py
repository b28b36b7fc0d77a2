"""The serving engine: a queue of requests and one worker thread that owns the model and batches them.

torch is not re-entrant, so one thread runs the model. Request threads put :class:`Job` s on a queue and wait
on their futures. The worker takes the first job waiting, then whatever else arrives within
``batch_wait_ms`` (up to ``max_batch`` prompts), and groups them by what one
:func:`~fewtune.backends.generation.generate_batch` call can share: the adapter, ``max_tokens``, the stop
string and the JSON schema. Each group runs as one batched, greedy generation whose ``prefix`` is the text
its prompts share (:func:`~fewtune.serve.tokens.shared_prefix`), so a method's demo block is computed once
and its KV cache reused, also across batches. Greedy decoding of a batch gives the same tokens as one
request at a time (generate_batch pads so that every row keeps its own positions), so batching changes
latency, never answers.

Scoring requests (``max_tokens`` 0 with ``echo``) are taken up to :data:`SCORED_PROMPTS` prompts a batch,
and a group's prompts run as one token trie per ``logprobs`` value after the KV cache of the prefix they
share (:mod:`~fewtune.serve.prompt_scores`; the last :data:`PREFIXES_KEPT` prefixes per adapter are kept),
each test input once however many labels are scored, with the same scores as a full pass.

Adapter loads and unloads go through the same queue, so they happen between batches, in arrival order.

The queue is bounded: :meth:`Engine.submit` refuses a job (:class:`~fewtune.serve.jobs.QueueFull`) while
``max_queue`` jobs are waiting or running. A job whose client has gone or whose deadline has passed is
dropped from the queue, or stopped at its next decoding step (:mod:`fewtune.serve.jobs`).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewtune.backends.base import Generation
from fewtune.errors import FewtuneError
from fewtune.serve.adapters import AdapterSet
from fewtune.serve.jobs import (
    Abandoned,
    BadRequest,
    Control,
    Job,
    Output,
    QueueFull,
    UnknownModel,
    stop_when_abandoned,
)
from fewtune.serve.prompt_scores import PrefixState, prefix_state, score_tokens
from fewtune.serve.tokens import TokenScores, generate_scored, join, legacy_logprobs, shared_prefix

if TYPE_CHECKING:
    from fewtune.backends.hf import HFBackend

MAX_TOP_LOGPROBS = 20
"""Most alternatives per token a request may ask for (vLLM's default limit; OpenAI's is 5)."""
PREFIXES_KEPT = 4
"""Shared prefixes (demo blocks) whose KV cache and scores each adapter keeps for scoring requests."""
SCORED_PROMPTS = 256
"""Most prompts to score (``max_tokens`` 0) taken into one batch, beside ``max_batch`` prompts to generate
(``--max-batch``'s help states this number). A scoring batch runs as one token trie
(:mod:`fewtune.serve.prompt_scores`): its cost is its distinct tokens, and the output layer's matrix product
is about twice as fast per position at a few hundred positions as at one request's twenty, so scoring gains
from batches far larger than generation's."""
SCHEMA_CACHE_SIZE = 32
"""Compiled JSON-schema grammars kept (compiling one against a 262k vocabulary takes about 2 s)."""


_STOP = object()
_NOTHING = TokenScores([], [], [])


def _reason(generation: Generation) -> str:
    return "stop" if generation.stopped else "length"


class Engine:
    """Serves one base model and its adapters; :meth:`start` runs the worker, :meth:`close` ends it."""

    def __init__(
        self, adapters: AdapterSet, *, max_batch: int = 16, batch_wait_ms: float = 5.0, max_queue: int = 256
    ) -> None:
        self.adapters = adapters
        self.on_batch: Callable[[int], None] | None = None
        """Called with the number of prompts of each group run together (the metrics' batch sizes)."""
        self.max_batch = max_batch
        self.max_queue = max_queue
        """Most jobs waiting or running at once; :meth:`submit` refuses more."""
        self._held = 0
        self._held_lock = threading.Lock()
        self.batch_wait_s = batch_wait_ms / 1000
        tokenizer = adapters.tokenizer
        bos = tokenizer.bos_token_id
        # Chat templates write BOS themselves; a tokenizer that adds it too would double it.
        self._adds_bos = bos is not None and list(tokenizer("").input_ids[:1]) == [bos]
        config = adapters.model.config
        self.context_length: int | None = getattr(config, "max_position_embeddings", None)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._schemas: dict[str, Callable[[], Any]] = {}
        # Per backend (one per adapter, dropped with it): prefix runs for scoring, most recent last.
        self._prefixes: weakref.WeakKeyDictionary[HFBackend, OrderedDict[tuple[Any, ...], PrefixState]] = (
            weakref.WeakKeyDictionary()
        )
        self._thread: threading.Thread | None = None
        self.abandoned_runs = 0
        """Groups stopped before their end because every job in them was abandoned."""

    # -- names ------------------------------------------------------------------------------------------
    @property
    def base_name(self) -> str:
        return self.adapters.base_name

    def resolve(self, model: str) -> str | None:
        """The adapter a request's ``model`` names (None: the base); :class:`UnknownModel` otherwise."""
        if model == self.base_name:
            return None
        if self.adapters.has(model):
            return model
        names = ", ".join([self.base_name, *self.adapters.names()])
        raise UnknownModel(f"The model `{model}` does not exist. Served models: {names}")

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt for chat ``messages``: the tokenizer's chat template (ending where the assistant's turn
        starts) when it has one, else the message contents joined by newlines."""
        tokenizer = self.adapters.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = str(
                tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            )
            bos = tokenizer.bos_token
            if self._adds_bos and bos and text.startswith(bos):
                text = text[len(bos) :]
            return text
        return "\n".join(str(m.get("content") or "") for m in messages)

    # -- requests ---------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Future[list[Output]]:
        if job.logprobs is not None and not 0 <= job.logprobs <= MAX_TOP_LOGPROBS:
            raise BadRequest(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {job.logprobs}")
        if job.max_tokens < 0:
            raise BadRequest(f"max_tokens must be 0 or more, got {job.max_tokens}")
        with self._held_lock:
            if self._held >= self.max_queue:
                raise QueueFull(f"the server is busy: {self.max_queue} requests are already queued")
            self._held += 1
        job.future.add_done_callback(self._release)
        self._queue.put(job)
        return job.future

    @property
    def held(self) -> int:
        """Jobs waiting or running now."""
        return self._held

    def _release(self, _future: Future[Any]) -> None:
        with self._held_lock:
            self._held -= 1

    def load_adapter(self, name: str, path: str | Path) -> Future[None]:
        """Load an adapter between batches (the future raises the :class:`ModelError` saying why it did
        not load)."""
        return self._control(lambda: self.adapters.load(name, path))

    def unload_adapter(self, name: str) -> Future[None]:
        return self._control(lambda: self.adapters.unload(name))

    def _control(self, action: Callable[[], None]) -> Future[None]:
        control = Control(action)
        self._queue.put(control)
        return control.future

    # -- worker -----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="fewtune-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _work(self) -> None:
        while True:
            items = self._take()
            jobs: list[Job] = []
            for item in items:
                if isinstance(item, Job):
                    jobs.append(item)
                    continue
                self._run_jobs(jobs)
                jobs = []
                if item is _STOP:
                    return
                self._run_control(item)
            self._run_jobs(jobs)

    def _take(self) -> list[Any]:
        """The first waiting item and what follows within the batching window (a control item or the stop
        signal closes the batch, so it runs after the jobs that came before it): up to ``max_batch`` prompts
        to generate and :data:`SCORED_PROMPTS` to score."""
        items = [self._queue.get()]
        counts = {True: 0, False: 0}  # prompts to score (max_tokens 0), prompts to generate
        limits = {True: SCORED_PROMPTS, False: self.max_batch}
        deadline = time.monotonic() + self.batch_wait_s
        item = items[0]
        while isinstance(item, Job):
            scored = item.max_tokens == 0
            counts[scored] += len(item.prompts)
            if counts[scored] >= limits[scored]:
                break
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            items.append(item)
        return items

    def _run_control(self, control: Control) -> None:
        try:
            control.action()
        except FewtuneError as err:
            control.future.set_exception(err)
        except Exception as err:
            traceback.print_exc(file=sys.stderr)
            control.future.set_exception(err)
        else:
            control.future.set_result(None)

    def _run_jobs(self, jobs: list[Job]) -> None:
        groups: dict[tuple[Any, ...], list[Job]] = {}
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled while it waited: dropped, nothing run
            reason = job.abandoned()
            if reason is not None:
                job.future.set_exception(reason)
            else:
                groups.setdefault(job.key(), []).append(job)
        for group in groups.values():
            try:
                self._run_group(group)
            except Exception as err:  # one group's failure must not stop the worker or the others
                if isinstance(err, Abandoned):
                    self.abandoned_runs += 1
                elif not isinstance(err, FewtuneError):
                    traceback.print_exc(file=sys.stderr)
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(job.abandoned() or err)

    def _run_group(self, group: list[Job]) -> None:
        """Generate (or score) every prompt of ``group``: one adapter, one set of decoding settings."""
        first = group[0]
        if first.adapter is not None and not self.adapters.has(first.adapter):
            raise UnknownModel(f"The model `{first.adapter}` does not exist (it was unloaded)")
        with self.adapters.use(first.adapter) as backend:
            runnable: list[tuple[Job, list[list[int]]]] = []
            for job in group:
                ids = [backend.encode_prompt(p) for p in job.prompts]
                longest = max((len(i) for i in ids), default=0)
                if self.context_length and longest + job.max_tokens > self.context_length:
                    job.future.set_exception(
                        BadRequest(
                            f"This model's maximum context length is {self.context_length} tokens; the "
                            f"prompt has {longest} and max_tokens asks for {job.max_tokens} more"
                        )
                    )
                else:
                    runnable.append((job, ids))
            if not runnable:
                return
            prompts = [p for job, _ in runnable for p in job.prompts]
            if self.on_batch is not None:
                self.on_batch(len(prompts))
            decoder = backend.model.get_decoder()  # one forward pass per decoding step
            if first.logprobs is not None and first.max_tokens > 0:  # one job at a time
                for job, ids in runnable:
                    try:
                        with stop_when_abandoned(decoder, [job]):
                            job.future.set_result(self._scored_generations(backend, job, ids))
                    except Abandoned as reason:
                        self.abandoned_runs += 1
                        job.future.set_exception(reason)
                return
            with stop_when_abandoned(decoder, [job for job, _ in runnable]):
                if first.max_tokens == 0:
                    self._scored_prompts(backend, runnable, shared_prefix(prompts))
                else:
                    self._generate(backend, first, runnable, prompts)

    def _generate(
        self, backend: Any, first: Job, runnable: list[tuple[Job, list[list[int]]]], prompts: list[str]
    ) -> None:
        """One batched generation for every prompt of the group, its shared prefix's KV cache reused."""
        from fewtune.backends.generation import generate_batch

        constraint = self._constraint(backend, first.schema) if first.schema is not None else None
        generations = generate_batch(
            backend,
            prompts,
            prefix=shared_prefix(prompts),
            max_new_tokens=first.max_tokens,
            stop=first.stop,
            batch_size=self.max_batch,
            constraint=constraint,
        )
        at = 0
        for job, ids in runnable:
            mine, at = generations[at : at + len(ids)], at + len(ids)
            job.future.set_result(
                [Output(g.text, g.prompt_tokens, g.output_tokens, _reason(g)) for g in mine]
            )

    def _scored_prompts(
        self, backend: HFBackend, runnable: list[tuple[Job, list[list[int]]]], prefix: str
    ) -> None:
        """``max_tokens`` 0: the prompts' log-probabilities (with ``echo``), every job of the group in one
        batched pass per ``logprobs`` value, continuing from the KV cache of the prefix they share."""
        tokenizer = self.adapters.tokenizer
        wanted: dict[int, list[tuple[Job, list[list[int]]]]] = {}
        for job, ids in runnable:
            if job.logprobs is None or not job.echo:
                empty = None if job.logprobs is None else legacy_logprobs(tokenizer, _NOTHING)
                job.future.set_result([Output("", len(i), 0, "length", empty) for i in ids])
            else:
                wanted.setdefault(job.logprobs, []).append((job, ids))
        for top, jobs in wanted.items():
            sequences = [i for _, ids in jobs for i in ids]
            state = self._prefix(backend, prefix, top)
            scores = score_tokens(backend, sequences, top=top, batch_size=self.max_batch, prefix=state)
            at = 0
            for job, ids in jobs:
                mine, at = scores[at : at + len(ids)], at + len(ids)
                job.future.set_result(
                    [
                        Output("", len(i), 0, "length", legacy_logprobs(tokenizer, s))
                        for i, s in zip(ids, mine, strict=True)
                    ]
                )

    def _prefix(self, backend: HFBackend, prefix: str, top: int) -> PrefixState | None:
        """The run of ``prefix`` under ``backend`` (computed once, the last few kept per backend)."""
        if not prefix or not backend.prefix_caching:
            return None
        ids = tuple(backend.encode_prompt(prefix))
        if len(ids) < 2:
            return None
        kept = self._prefixes.setdefault(backend, OrderedDict())
        key = (ids, top)
        if key in kept:
            kept.move_to_end(key)
        else:
            kept[key] = prefix_state(backend, ids, top)
            while len(kept) > PREFIXES_KEPT:
                kept.popitem(last=False)
        return kept[key]

    def _scored_generations(self, backend: Any, job: Job, ids: list[list[int]]) -> list[Output]:
        """Generations with the log-probabilities of their tokens: one prompt at a time through
        ``generate``, which hands back the exact tokens and their logits (rare: scoring asks for
        ``max_tokens`` 0 or 1)."""
        assert job.logprobs is not None
        tokenizer = self.adapters.tokenizer
        prompts = score_tokens(backend, ids, top=job.logprobs, batch_size=self.max_batch) if job.echo else []
        outputs = []
        for n, prompt_ids in enumerate(ids):
            generation, completion = generate_scored(
                backend, prompt_ids, max_new_tokens=job.max_tokens, stop=job.stop, top=job.logprobs
            )
            scores = join(prompts[n], completion) if job.echo else completion
            logprobs = legacy_logprobs(tokenizer, scores)
            outputs.append(
                Output(
                    generation.text, len(prompt_ids), generation.output_tokens, _reason(generation), logprobs
                )
            )
        return outputs

    def _constraint(self, backend: Any, schema: dict[str, Any]) -> Callable[[], Any]:
        """The compiled grammar for ``schema`` (cached: compiling is the slow part)."""
        from fewtune.backends.generation import json_schema_constraint

        key = json.dumps(schema, sort_keys=True)
        if key not in self._schemas:
            try:
                factory = json_schema_constraint(backend, schema)
            except Exception as err:  # xgrammar raises RuntimeError / ValueError for schemas it rejects
                raise BadRequest(
                    f"response_format: invalid JSON schema ({type(err).__name__}: {err})"
                ) from None
            if len(self._schemas) >= SCHEMA_CACHE_SIZE:
                self._schemas.pop(next(iter(self._schemas)))
            self._schemas[key] = factory
        return self._schemas[key]
