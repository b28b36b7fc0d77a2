"""``fewtune run``'s pipeline, the same for every task: plan → prepare the data → open the run's record →
execute the methods → record each row. The task (from :mod:`fewtune.tasks.registry`) supplies the job that
reads its data and runs its methods; the report is written afterwards from the run folder alone.
Nothing here prints: progress goes to the caller's :class:`~fewtune.run.events.RunEvents`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fewtune.backends.base import Backend
from fewtune.config import RunConfig
from fewtune.embeddings import Embedder
from fewtune.run.events import RunEvents
from fewtune.run.job import Job
from fewtune.run.loaders import count_requests, describe_backend, describe_prompt_model, load_backends
from fewtune.run.plan import resolve_plan
from fewtune.run.session import RunSession
from fewtune.tasks.registry import make_task

BackendFactory = Callable[[RunConfig, RunEvents], Backend]
EmbedderFactory = Callable[[RunConfig, RunEvents], Embedder]


def run_pipeline(
    cfg: RunConfig,
    events: RunEvents,
    backend_factory: BackendFactory,
    embedder_factory: EmbedderFactory,
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Run every method of ``cfg`` on the same test rows; return the run folder (its results.json, its
    predictions.jsonl). ``cfg`` itself is not changed: it is resolved into a frozen plan first."""
    plan = resolve_plan(cfg, overwrite=overwrite, resume=resume)
    events.info(f"Task: {plan.task}" + (f" ({plan.why})" if plan.why else ""))
    job = Job(plan, make_task(plan.cfg), events, embedder_factory)
    header = job.prepare()  # data read and checked before any model loads
    session = RunSession.open(plan.cfg, header, events, overwrite=overwrite, resume=resume)
    with session.running():
        # Models first, so that a bad --model fails before the data checks' work.
        backend, prompt_backend = load_backends(plan.cfg, events, backend_factory)
        session.results["hardware"].update(describe_backend(backend))
        describe_prompt_model(session.results, plan.cfg, backend, prompt_backend)
        job.execute(session, (backend, prompt_backend))
        count_requests(session.results, prompt_backend)
    events.summary(session.methods)
    events.info(f"Results: {session.store.results_path}")
    return session.folder
