"""The results record's types: what a method row of results.json holds, for every task.

A row is built in one place for every method of every task (:func:`fewtune.run.evaluate.evaluate`, with
the answer kind's own fields from :mod:`fewtune.run.label_answers` or :mod:`fewtune.run.output_answers`),
stored as JSON, and read by cost, curves, the verdict and the report through these types, so a misspelt or
missing field is a type error (mypy) rather than a ``KeyError`` in a report.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from typing_extensions import TypedDict  # pydantic validates these on Python < 3.12 only from here

from fewtune.methods import Method


class Latency(TypedDict):
    """Single-request latency in milliseconds, one request at a time (a method's ``latency_ms``)."""

    p50: float | None
    """Median; null when the row was not timed."""
    p95: float | None
    """95th percentile; null when the row was not timed."""
    mean: float | None
    """Mean; null when the row was not timed."""
    requests: int
    """Requests timed (after the warm-up; open outputs stop timing after 60 s once 5 are timed)."""


class MetricValue(TypedDict):
    """One metric of a generated-output row, with its interval."""

    value: float
    """The metric over the test rows."""
    ci95: list[float]
    """95% bootstrap interval ``[low, high]``."""


class Primary(TypedDict, total=False):
    """The score the verdict is decided on (classification: added by the report)."""

    name: str
    """The metric's name (accuracy, macro-f1, field_f1, chrf, ...)."""
    metric: str
    """The same name (classification rows)."""
    label: str
    """How the report writes the metric's name."""
    value: float
    """The row's score on it (0-1)."""
    ci95: list[float | None]
    """95% bootstrap interval ``[low, high]``."""


class Costs(TypedDict):
    """A method's costs at the run's price table and volume (added by the report)."""

    setup: float
    """Dollars before the first request: prompt engineering; fine-tuning's hours, labels and training."""
    per_request: float
    """Dollars per request: self-hosted from measured throughput, hosted-api from tokens."""
    total_at_horizon: float
    """setup + per_request x volume per day x horizon days."""
    setup_breakdown: dict[str, float]
    """The setup's parts, in dollars, by name."""
    per_request_basis: str
    """How per_request was computed, with its figures."""


class MethodRow(TypedDict, total=False):
    """One method's results row (results.json ``methods[]``).

    Classification rows carry the label fields (accuracy, per_class, ...); extraction and generation rows
    carry ``primary`` and ``metrics`` instead, and no labels, curves or data checks."""

    # identity
    method: str
    """zero-shot, few-shot, lora, lora+few-shot or reference."""
    name: str
    """The row's name, unique in the run (e.g. "few-shot k=8 balanced"); later draws add " seed=<seed>"."""
    shots: int
    """Demos in each prompt (0: zero-shot)."""
    train_examples: int | None
    """Training examples of a LoRA adapter or the reference; null for prompting rows."""
    demo_selection: str | None
    """balanced, random or nearest; null without demos."""
    demo_seed: int | None
    """Seed of the demo set this row's own metrics come from (the first draw)."""
    calibrated: bool
    """A contextually calibrated row (--calibrate)."""
    constrained: bool
    """Extraction: decoded under the output's JSON Schema (--constrained, xgrammar)."""
    model: str
    """The model that answered: --prompt-model for prompting rows of a two-model run, else --model; absent
    on reference rows (they name their embedding_model)."""
    pricing: str
    """hosted-api for rows answered by an endpoint (priced per token); absent: the price table's pricing."""
    # quality
    primary: Primary
    """The score the verdict is decided on (extraction and generation rows; classification: added by the
    report)."""
    metrics: dict[str, MetricValue]
    """Extraction: field_f1, field_precision, field_recall, parse_rate, schema_valid_rate, exact_match;
    generation: chrf, rouge_l, semantic_similarity, length_ratio, slot_coverage."""
    accuracy: float
    """Share of test rows answered correctly (0-1)."""
    accuracy_ci95: list[float]
    """95% bootstrap interval of accuracy ``[low, high]``."""
    macro_f1: float
    """Mean of the per-label F1 scores."""
    per_class: dict[str, dict[str, float]]
    """``{label: {precision, recall, f1, support}}``."""
    per_field: dict[str, dict[str, float]]
    """Extraction: ``{field: {precision, recall, f1, support}}``."""
    per_label: dict[str, dict[str, float]]
    """Multi-label: ``{label: {precision, recall, f1, support}}`` (support: test rows holding the label)."""
    degenerate_reason: str
    """The task's own check, made when the row was scored: why its outputs are not doing the task
    (multi-label: the same label set on nearly every row, or few known labels); absent when they are."""
    accuracy_draws: list[float]
    """Prompting rows: accuracy of every demo draw (--demo-seeds)."""
    accuracy_mean: float
    """Prompting rows: mean accuracy over the demo draws."""
    accuracy_std: float | None
    """Prompting rows: sample std of accuracy over the demo draws; null for one draw."""
    demo_seeds: list[int | None]
    """Prompting rows: the seed of every demo draw."""
    label_scoring: str
    """loglik (each label's log-likelihood) or generate (the answer is generated and parsed as a label)."""
    unparsed_rate: float
    """generate: share of answers that named no label (they count as wrong)."""
    stopped_rate: float
    """Extraction and generation: share of outputs that ended on their own (not at the token cap)."""
    degenerate: str | None
    """Added by the report: why the row is degenerate (predictions on one label, or macro-F1 no better than
    always answering the majority label), or null."""
    cohen_kappa: float | None
    """Added by the report: agreement with the gold labels beyond chance."""
    # speed and size
    latency_ms: Latency
    """Single-request latency with the demo block's KV cache reused, as vLLM/SGLang serve it."""
    latency_ms_no_prefix_cache: Latency
    """The same without the prefix cache (a server that recomputes the demos every time)."""
    prompt_tokens_mean: float | None
    """Prompt tokens per request, mean; null for a method without a prompt (the reference)."""
    prompt_tokens_max: int
    """The longest prompt in tokens."""
    output_tokens_mean: float | None
    """Output tokens per request, mean; null for a method without a prompt (the reference)."""
    output_tokens_per_second: float | None
    """Extraction and generation: output tokens generated per second."""
    throughput_rows_per_second: float | None
    """Test rows scored per second, batched."""
    scoring_seconds: float | None
    """Wall time of scoring the test rows."""
    max_new_tokens: int
    """Extraction and generation: the cap on new tokens (1.25x the longest pool target)."""
    # training
    train_seconds: float | None
    """Training wall time (hosted-ft: the job's, created to finished, queueing included); null for prompting
    rows. After a --resume it adds both parts' time."""
    train_tokens_per_second: float
    """Training tokens per second."""
    train_flops_per_token: float
    """Training FLOPs per token."""
    train_mfu: float
    """Model FLOPs utilisation, against this machine's measured matmul peak."""
    train_steps: int
    """Optimizer steps."""
    resumed_at_step: int
    """The checkpoint's step that an interrupted training continued from (0: trained in one go)."""
    class_balance: str
    """LoRA rows: none, loss or sampling (--class-balance)."""
    adapter_path: str
    """What training saved: the peft adapter's folder (adapters/lora-n<N>), or full-ft's whole model
    (adapters/full-n<N>)."""
    adapter_bytes: int
    """Size of what must be stored and served besides the base model: the adapter's files, or for full-ft
    the whole model copy."""
    peak_memory_bytes: int | None
    """Peak memory while training."""
    trained_parameters: int
    """Weights training changed: the LoRA matrices, or every weight (full-ft)."""
    train_processes: int
    """Processes that trained it together (accelerate launch --num_processes; 1 = on its own)."""
    precision: str
    """What a local model's matrix products ran in when it scored (float32, bfloat16; --precision), every
    row of a local model. Absent for endpoints and the reference."""
    train_precision: str
    """Trained rows whose training ran in another dtype than their scoring (--precision auto on a CPU with
    bf16 units: bfloat16); absent otherwise."""
    kshot_training: str
    """lora+few-shot rows: demos (its adapter was trained with k demos in every prompt) or plain (the lora
    row's adapter, trained without demos; the row's name ends in plain-adapter)."""
    demo_draw: str
    """Rows whose adapter was trained with demos (kshot_training demos): batch (the rows of a training batch
    shared one balanced or random draw, its demo block run once per batch) or row (a draw per row; nearest
    demos always); absent otherwise (--demo-draw)."""
    demo_block_steps: int
    """demo_draw batch: optimizer steps whose rows shared one run of the demo block; the other steps ran each
    row's whole prompt with the same demos (a tokenizer merge at the block's end, or a block and rows longer
    than a sliding-window layer's window)."""
    quantization: str
    """QLoRA rows: the base model's 4-bit quantization (nf4), absent otherwise."""
    # hosted-ft rows
    fine_tuned_model: str
    """hosted-ft: the fine-tuning job's model (``ft:BASE:ORG:SUFFIX:ID``), scored through the endpoint."""
    fine_tuning_job: str
    """hosted-ft: the job's id (also in adapters/hosted-ft-n<N>/job.json, which --resume follows)."""
    hosted_endpoint: str
    """hosted-ft: the fine-tuning API's base URL."""
    trained_tokens: int | None
    """hosted-ft: the tokens the job trained on as the provider counts them (its bill's unit)."""
    hosted_hyperparameters: dict[str, Any]
    """hosted-ft: the job's n_epochs, batch_size and learning_rate_multiplier as the provider chose them."""
    validation_examples: int
    """hosted-ft: pool rows (never test rows) sent as the job's validation file."""
    hosted_result_files: list[str]
    """hosted-ft: the job's result files, saved in adapters/hosted-ft-n<N>/."""
    hosted_comparison: dict[str, Any]
    """hosted-ft on fewtune serve: its result file's held-out comparison against few-shot prompting on the
    validation rows ``{verdict, metric, rows, few_shot, fine_tuned, file}``."""
    hosted_usage: dict[str, int]
    """hosted-ft: the prompt and completion tokens the endpoint reported for this row's requests."""
    # prompt
    demos: list[dict[str, str]]
    """The demos shown (first draw): ``[{text, label}]``; extraction and generation ``[{text, output}]``."""
    label_bias: dict[str, float]
    """Calibrated rows: ``{label: log p}`` of the content-free inputs, divided out of every row."""
    label_names: dict[str, str]
    """``{code: name}`` the model saw (--label-names); results keep the codes."""
    # reference rows
    embedding_model: str
    """Reference rows: the sentence-embedding model (LLM-only fields are null)."""
    classifier: str
    """Reference rows: the classifier on the embeddings."""
    # added by the report
    costs: Costs
    """Setup, per-request and total costs at the run's price table."""


class RunResults(TypedDict, total=False):
    """results.json's top-level keys (``fewtune run`` writes them; stable: later additions never rename
    these).

    The report never changes results.json: what it adds (costs, break-even, the recommendation, each row's
    primary, degenerate and cohen_kappa) is written to analysis.json beside it when the run completes (and
    by every ``fewtune report``), in the same shape (method rows keyed by name)."""

    # the run
    schema_version: int
    """2: the task block and per-row primary."""
    fewtune_version: str
    """The fewtune that wrote the file."""
    task: dict[str, Any]
    """``{name ("classification" | "extraction" | "generation"), label_scoring (classification) |
    primary_metric, schema, schema_source, normalisation (extraction), metrics_are_proxies (generation)}``."""
    status: str
    """running, complete, interrupted (Ctrl-C or SIGTERM) or failed; results.json is rewritten after every
    finished method, so an interrupted or crashed run keeps its finished parts, and ``fewtune run --resume``
    with the same settings finishes it."""
    started_at: str
    """UTC start time (ISO 8601, seconds)."""
    finished_at: str
    """UTC end time, also written when the run failed or was interrupted."""
    resumed_at: list[str]
    """UTC time of each --resume."""
    error: str
    """failed runs: the error's type and message."""
    model: str
    """--model as given."""
    seed: int
    """--seed: splits, demos, training-row samples, LoRA init and the bootstrap."""
    prompt_model: dict[str, Any]
    """When the prompting rows ran on another model or an endpoint: ``{model (as given), backend, base_url,
    api_key_env (the variable's name, never the key), scoring_mode ("loglik" | "generate"), reason,
    token_counts ("server" | "estimate: ..."), cache, usage {prompt_tokens, completion_tokens} (the answers
    this invocation used, cached ones included; a --resume counts only the rows it ran), requests_sent (of
    this invocation: 0 when the cache answered everything)}``."""
    floor: dict[str, Any]
    """Open outputs: ``{output, primary}``, the better of two outputs that need no model (the pool's most
    common output for every row, the input copied); its per-row statistics are predictions.jsonl's
    ``floor`` lines. The verdict calls a method not significantly better than it not good enough."""
    # the data
    dataset: dict[str, Any]
    """``{pool_size, test_size, label_counts {pool, test}, duplicates_removed, conflicting_labels,
    leaks_removed, test_source, warnings, data_sha256, test_sha256 (null: split of the pool), checks}``.
    ``checks`` (absent when the checks were skipped): label_issues [first 20 of label_issues.jsonl],
    label_issue_counts {pool, test} (all flagged), rows_checked {pool, test} (rows whose labels were judged),
    near_duplicate_conflicts [first 20: {a: {text, label, line}, b: {...}, cosine}], near_duplicate_leaks
    [first 20: {pool: {...}, test: {...}, cosine}], near_duplicate_counts {conflicts, leaks (pairs),
    leaked_test_rows}, small_classes {label: pool examples, under 50}, thin_classes {label: pool examples,
    50-199}, warnings [..] (also in dataset.warnings), settings {embedding_model, classifier,
    near_duplicate_cosine, min_examples_per_class, good_examples_per_class, label_check_folds,
    classifier_agreement {pool, test}, pool_sample (when sampled), test_rows_not_judged, label_check_skipped
    (the reason)}."""
    labels: list[str]
    """Classification: the label codes."""
    label_names: dict[str, str]
    """``{code: name}`` with --label-names."""
    hardware: dict[str, Any]
    """``{platform, cpu_count}`` and the local model's backend, model_parameters, device, model_path."""
    # the results
    methods: list[MethodRow]
    """One row per method, in the order they finished."""
    curves: dict[str, Any]
    """Classification: ``{shots [{strategy, k, mean, std, draws, name}], train_examples [{n, accuracy,
    ci95, name}], reference [{n, accuracy, ci95, name}], crossover {method, prompt, prompt_accuracy,
    prompt_draws, reached, n, between [low, high], statement} | null}``."""
    warnings: list[str]
    """Run warnings, e.g. long prompts on CPU."""
    # added by the report (analysis.json)
    break_even_requests: int | None
    """Requests after which the best fine-tuned method's total cost falls below the best prompt's; null:
    never, or no pair to compare."""
    break_even: dict[str, Any]
    """``{prompting, fine_tuned (the method names compared), requests, days_at_volume, reason}``."""
    cost_assumptions: dict[str, Any]
    """``{preset, file, volume_per_day, volume_given, horizon_days, requests_at_horizon, gap, metric,
    value_per_correct, prices {key: {value, source}}}``."""
    recommendation: dict[str, Any]
    """``{choice ("prompt" | "fine-tune" | "retrieval" | "reference" | "not-good-enough" | "undecidable" |
    "measure-prompting-first"), method (to ship; the best so far for not-good-enough), headline ("Provisional:
    ..." when not settled), settled (false: provisional; null: no verdict between options), unsettled (the
    open pair when provisional: {shipped, other, lead_points (other minus shipped), lead_ci95, rows,
    rows_to_settle, margin_points}) | null,
    reasons [..], caveats [..], next_steps [..], metric, metric_reason, comparison (best prompt vs best
    fine-tuned) {prompt, fine_tuned, prompt_accuracy, fine_tuned_accuracy, rows, p_value, lead_ci95,
    discordant_share, rows_needed, rows_needed_points, lead_points, significant, baseline, candidate,
    baseline_score, candidate_score (primary metric), metric, test} | null, comparisons [every paired test
    the verdict used, same fields], degenerate {method name: why}, break_even {requests, reason}}``."""


@dataclass(frozen=True)
class Answerers:
    """Which model answers a row: ``prompt_model`` the prompting rows, ``tuned_model`` the rest."""

    prompt_model: str
    tuned_model: str
    remote_prompting: bool = False
    """The prompting rows' model is an endpoint: they are priced per token (``pricing: hosted-api``)."""

    def tag(self, row: MutableMapping[str, Any]) -> None:
        """Write ``model`` (and ``pricing``) into ``row``, unless it has them already; a reference row
        (sentence embeddings + a classifier) names its own embedding model instead."""
        method = Method.of(row)
        if method is Method.REFERENCE:
            return
        prompting = method.prompting  # the prompt model answers; the fine-tuned rows run on --model
        row.setdefault("model", self.prompt_model if prompting else self.tuned_model)
        if prompting and self.remote_prompting:
            row.setdefault("pricing", "hosted-api")


NOT_TIMED = Latency(p50=None, p95=None, mean=None, requests=0)


def latency_of(row: MethodRow, cached: bool = True) -> Latency:
    """A row's single-request latency (with the prefix cache, or without), or an untimed one."""
    value = row.get("latency_ms") if cached else row.get("latency_ms_no_prefix_cache")
    return value or NOT_TIMED


def method_rows(results: dict[str, Any]) -> list[MethodRow]:
    """results.json's method rows, typed."""
    rows: list[MethodRow] = results.get("methods") or []
    return rows
