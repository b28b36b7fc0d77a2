"""hosted-ft rows of a classification run: fine-tune through a fine-tuning API, then score the model there.

For each ``--train-sizes`` n, the rows the LoRA adapter gets (``stratified_sample(pool, n, seed)``) are
uploaded as chat JSONL: the user message is the prompt the LoRA row is trained on, the assistant message
the answer it learns (the label's continuation). Up to :data:`VALIDATION_ROWS` other pool rows go as the
``validation_file`` (never a test row), so the provider trains on all n rows and ``fewtune serve`` holds
none of them back for its comparison. The job (``--hosted-epochs`` / ``--hosted-batch-size`` /
``--hosted-lr-multiplier`` where given, else the provider's choice) is recorded in
``RUN/adapters/hosted-ft-n<N>/job.json`` before it is followed, so a run killed while it trains follows the
same job after ``--resume`` instead of paying for another. Its events drive the progress bar; once it
succeeds its result files are saved beside ``job.json`` and its ``fine_tuned_model`` is scored on the
run's test rows through the endpoint, like every other row (label log-likelihoods where the endpoint
gives prompt log-probabilities, else generate-and-parse), priced per token (``pricing: hosted-api``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from fewtune.config import RunConfig
from fewtune.data.load import Example
from fewtune.data.split import PreparedData, stratified_sample
from fewtune.hosted.api import (
    FINISHED,
    UNFINISHED,
    HostedAPI,
    Hyperparameters,
    Job,
    JobFailed,
    JobTimedOut,
    clean_text,
    job_error,
)
from fewtune.methods import Method, adapter_folder
from fewtune.prompts.template import PromptTemplate
from fewtune.results.record import MethodRow
from fewtune.results.sections import HostedComparison, HostedJob
from fewtune.results.store import write_json_atomic
from fewtune.run.events import RunEvents, TrainStep
from fewtune.run.plan import check_hosted
from fewtune.run.session import RunSession

VALIDATION_ROWS = 100
"""Pool rows (not the training rows) sent as the job's validation file."""
JOB_FILE = "job.json"
CACHE_FILE = "http_cache.sqlite"
COMPARISON = "fewtune.fine_tuning.comparison"
"""The ``object`` of ``fewtune serve``'s result file (the held-out comparison against few-shot prompting)."""
FileName = Literal["training", "validation"]
FILE_KEYS: dict[FileName, Literal["training_file", "validation_file"]] = {
    "training": "training_file",
    "validation": "validation_file",
}


class JobState(TypedDict, total=False):
    """``job.json``: the job a hosted-ft row follows, and what it was made from."""

    endpoint: str
    model: str
    sha256: dict[str, str]
    """The uploaded files' hashes, by name (training, validation)."""
    training_file: str
    validation_file: str
    """The provider's ids of the uploaded files."""
    job: str
    created_at: int


_JOB_STATE = TypeAdapter(JobState)


def chat_jsonl(examples: Sequence[Example], template: PromptTemplate) -> bytes:
    """The training rows as OpenAI's chat fine-tuning format: the LoRA row's prompt, then its answer."""
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": template.render(ex.text)},
                    {"role": "assistant", "content": template.continuation(ex.label)},
                ]
            },
            ensure_ascii=False,
        )
        for ex in examples
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _read_state(path: Path) -> JobState:
    """What ``job.json`` recorded; nothing when it is missing or not a job's record."""
    try:
        return _JOB_STATE.validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return {}


def _job_id(
    api: HostedAPI, folder: Path, files: dict[FileName, bytes], cfg: RunConfig, events: RunEvents, title: str
) -> str:
    """The job to follow: the one ``job.json`` records for the same endpoint, model and rows (unless it
    failed or was cancelled), else a new one, recorded before it is followed."""
    path = folder / JOB_FILE
    digest: dict[str, str] = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
    wanted = JobState(endpoint=api.spec.url, model=api.spec.model, sha256=digest)
    state = _read_state(path)
    if (state.get("endpoint"), state.get("model"), state.get("sha256")) != (
        wanted["endpoint"],
        wanted["model"],
        wanted["sha256"],
    ):
        state = wanted
    if state.get("job"):
        job = api.job(state["job"])
        if job.status not in ("failed", "cancelled"):
            events.info(f"{title}: following job {job.id} ({job.status}), recorded in {path}")
            return str(job.id)
        events.warn(f"{title}: the earlier job {job.id} {job_error(job)}; starting a new job")
        state.pop("job")
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        key = FILE_KEYS[name]
        if not state.get(key) or not api.has_file(state[key]):
            state[key] = api.upload(f"fewtune-{folder.name}-{name}.jsonl", content)
            write_json_atomic(path, state)
    hosted = cfg.hosted
    hyperparameters = Hyperparameters()  # what is not given, the provider chooses
    if hosted.n_epochs is not None:
        hyperparameters["n_epochs"] = hosted.n_epochs
    if hosted.batch_size is not None:
        hyperparameters["batch_size"] = hosted.batch_size
    if hosted.learning_rate_multiplier is not None:
        hyperparameters["learning_rate_multiplier"] = hosted.learning_rate_multiplier
    job = api.create_job(
        state["training_file"], state.get("validation_file"), hyperparameters, hosted.suffix, cfg.seed
    )
    state["job"], state["created_at"] = str(job.id), job.created_at
    write_json_atomic(path, state)
    events.info(f"{title}: created job {job.id} at {api.spec.url} (recorded in {path})")
    return str(job.id)


def follow(
    api: HostedAPI, job_id: str, events: RunEvents, name: str, poll_seconds: float, max_wait_hours: float
) -> Job:
    """Poll the job and its events until it ends (a progress bar from its metrics events); the job.
    ``name`` is the row's (``hosted-ft n=200``). A state that is neither finished nor under way (e.g.
    ``paused``), or a job still under way after ``max_wait_hours``, stops the run in one line; the job is
    left as it is at the provider."""
    deadline = time.monotonic() + max_wait_hours * 3600

    def watch(on_step: TrainStep) -> Job:
        seen: set[str] = set()
        status = None
        while True:
            job = api.job(job_id)
            for event in api.new_events(job_id, seen):
                metrics = event.metrics()
                if metrics is not None:
                    on_step(metrics.step, metrics.total_steps, metrics.train_loss or 0.0)
                else:
                    events.info(f"  {job_id}: {clean_text(event.message)}")
            if job.status != status:
                status = job.status
                events.info(f"  {job_id}: {clean_text(status)}")
            if status in FINISHED:
                return job
            where = f"{name}: job {job_id} at {api.spec.url}"
            if status not in UNFINISHED:
                raise JobFailed(
                    f"{where} is {clean_text(status)!r}, a state fewtune does not follow (known: "
                    f"{', '.join(UNFINISHED + FINISHED)}); settle it at the provider, then "
                    "`fewtune run --resume`"
                )
            if time.monotonic() + poll_seconds > deadline:
                raise JobTimedOut(
                    f"{where} is still {status} after {max_wait_hours:g} h (--hosted-max-wait-hours); "
                    "it keeps running there, and `fewtune run --resume` follows it again"
                )
            time.sleep(poll_seconds)

    try:
        return events.training(f"Fine-tuning {name} at {api.spec.url}", watch)
    except KeyboardInterrupt:
        events.warn(
            f"{name}: job {job_id} keeps running at {api.spec.url}; `fewtune run --resume` with the same "
            "settings follows it"
        )
        raise


def _result_files(
    api: HostedAPI, job: Job, folder: Path, events: RunEvents
) -> tuple[tuple[str, ...], HostedComparison | None]:
    """Save the job's result files beside job.json; their names, and what a ``fewtune serve`` comparison
    in them says."""
    saved: list[str] = []
    comparison: HostedComparison | None = None
    for file_id in job.result_files or []:
        content = api.content(file_id)
        # no folder of the provider's choosing, and nothing a terminal would act on
        name = Path(clean_text(api.file_name(file_id)).replace("\\", "/")).name or file_id
        target = folder / f"result-{name}"
        target.write_bytes(content)
        saved.append(target.name)
        try:
            document = json.loads(content)
        except ValueError:
            continue  # a provider's CSV of step metrics
        if isinstance(document, dict) and document.get("object") == COMPARISON:
            comparison = HostedComparison(
                verdict=document.get("verdict"),
                metric=document.get("metric"),
                rows=(document.get("comparison") or {}).get("rows"),
                few_shot=(document.get("few_shot") or {}).get("score"),
                fine_tuned=(document.get("fine_tuned") or {}).get("score"),
                file=target.name,
            )
            events.info(f"  held-out comparison by the endpoint: {clean_text(comparison['verdict'])}")
    return tuple(saved), comparison


def hosted_rows(
    session: RunSession, cfg: RunConfig, data: PreparedData, template: PromptTemplate, events: RunEvents
) -> None:
    """A hosted-ft row per training size (module docstring); each finished row is recorded at once."""
    from fewtune.backends.endpoint import endpoint_spec

    check_hosted(cfg)
    assert cfg.hosted.endpoint is not None
    spec = endpoint_spec(cfg.hosted.endpoint, cfg.api_key_env)
    sizes = [n for n in cfg.lora.train_sizes if f"{Method.HOSTED_FT} n={n}" not in session.done]
    if not sizes:
        return
    api = HostedAPI(spec)
    try:
        for n in sizes:
            title = f"{Method.HOSTED_FT} n={n}"
            train, rest = stratified_sample(data.pool, n, cfg.seed)
            validation = stratified_sample(rest, VALIDATION_ROWS, cfg.seed)[0] if rest else []
            files: dict[FileName, bytes] = {"training": chat_jsonl(train, template)}
            if validation:
                files["validation"] = chat_jsonl(validation, template)
            folder = session.store.adapter_dir(adapter_folder(Method.HOSTED_FT, n))
            job_id = _job_id(api, folder, files, cfg, events, title)
            job = follow(api, job_id, events, title, cfg.hosted.poll_seconds, cfg.hosted.max_wait_hours)
            if job.status != "succeeded" or not job.fine_tuned_model:
                raise JobFailed(f"{title}: fine-tuning job {job.id} at {spec.url} {job_error(job)}")
            saved, comparison = _result_files(api, job, folder, events)
            hosted = HostedJob(
                fine_tuned_model=job.fine_tuned_model,
                fine_tuning_job=job.id,
                hosted_endpoint=spec.url,
                trained_tokens=job.trained_tokens,
                # The job's wall time at the provider, queueing included: all a provider reports.
                train_seconds=float(job.finished_at - job.created_at) if job.finished_at else None,
                hosted_hyperparameters=job.hyperparameters or {},
                validation_examples=len(validation),
                hosted_result_files=saved,
                hosted_comparison=comparison,
            )
            tuned = replace(spec, model=job.fine_tuned_model)
            score_hosted(session, cfg, data, template, events, tuned, n, hosted)
    finally:
        api.close()


def score_hosted(
    session: RunSession,
    cfg: RunConfig,
    data: PreparedData,
    template: PromptTemplate,
    events: RunEvents,
    spec: Any,
    n: int,
    hosted: HostedJob,
) -> None:
    """Score the fine-tuned model at ``spec`` on the test rows through the endpoint and record its row."""
    from fewtune.backends.generated import GenerateAndParse
    from fewtune.backends.openai_compat import OpenAICompatBackend
    from fewtune.run.evaluate import evaluate
    from fewtune.run.label_answers import PromptedLabels
    from fewtune.strategies.base import Predictor

    folder = session.store.adapter_dir(adapter_folder(Method.HOSTED_FT, n))
    with events.status(f"Probing {spec.model} at {spec.url}..."):
        backend = OpenAICompatBackend(spec, cache_path=folder / CACHE_FILE)
    try:
        generate = cfg.eval.label_scoring == "generate" or not backend.capabilities.loglikelihood
        if generate and cfg.eval.label_scoring != "generate":
            session.warn(f"{spec.model} gives no prompt log-probabilities: labels are generated and parsed")
        scorer: Any = GenerateAndParse(backend) if generate else backend
        predictor = Predictor(
            method=Method.HOSTED_FT.value, backend=scorer, template=template, train_examples=n, fitted=hosted
        )
        scored, predictions = events.progress(
            f"Scoring {predictor.name}",
            len(data.test),
            lambda progress: evaluate(
                PromptedLabels(predictor),
                data.test,
                batch_size=cfg.eval.batch_size,
                latency_requests=cfg.eval.latency_requests,
                seed=cfg.seed,
                progress=progress,
            ),
        )
        row: MethodRow = {
            **scored,
            "model": spec.model,
            "pricing": "hosted-api",
            "hosted_usage": backend.usage_totals,
        }
        session.record(row, predictions)
    finally:
        backend.close()
