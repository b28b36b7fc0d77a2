"""Label scoring by generate-and-parse (``--label-scoring generate``): parsing an answer into a label, the
backend wrapper, what evaluate records for it, and the settings that go with it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_jsonl
from rich.console import Console

from fewtune.backends.base import Backend, Generation
from fewtune.backends.fake import FakeBackend
from fewtune.backends.generated import NOT_ANSWERED, GenerateAndParse, parse_choice, unanswered
from fewtune.cli.runner import run
from fewtune.config import DataArgs, EvalArgs, RunConfig, build_config, load_config_file
from fewtune.data.load import Example
from fewtune.embeddings import FakeEmbedder
from fewtune.errors import ConfigError, ModelError
from fewtune.prompts.template import PromptTemplate
from fewtune.run.evaluate import evaluate
from fewtune.run.label_answers import NO_ANSWER, PromptedLabels
from fewtune.strategies.base import Predictor


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # Nothing here runs a model; keep torch (imported by the runner) from spinning threads on a busy machine.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LABELS = (" positive", " negative", " neutral")
NO_ANSWER_BUG = (
    "src bug: evaluate's output_tokens_mean looks up label_tokens[predicted], and NO_ANSWER is no label"
)


# -- parse_choice -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (" positive", 0),
        ("NEGATIVE", 1),
        ("  Neutral \n", 2),
        ('"negative."', 1),
        ("**positive**", 0),
        ("(neutral)", 2),
        ("positive!", 0),
        ("\n\n  negative\npositive", 1),  # the first non-blank line
        ("positive\nnegative", 0),
        ("positive review", 0),
        ("Negative, I think.", 1),
        ("neutral-ish", 2),  # a hyphen is not a word character
    ],
)
def test_parse_choice_reads_the_first_line_as_a_label(output: str, expected: int) -> None:
    assert parse_choice(output, LABELS) == expected


@pytest.mark.parametrize(
    "output",
    ["", "   \n ", "positively", "negatives", "I think positive", "pos", "the answer: neutral", "?"],
)
def test_parse_choice_is_none_when_no_label_is_named(output: str) -> None:
    assert parse_choice(output, LABELS) is None


def test_parse_choice_prefers_an_exact_name_then_the_longest_leading_name() -> None:
    choices = [" card", " card arrival", " card arrival delay"]
    assert parse_choice("card arrival", choices) == 1
    assert parse_choice("card arrival is late", choices) == 1
    assert parse_choice("card arrival delay, yes", choices) == 2
    assert parse_choice("card is late", choices) == 0
    assert parse_choice("cards", choices) is None
    # The exact name wins over a shorter one it starts with.
    assert parse_choice("not sure", [" not", " not sure"]) == 1


def test_parse_choice_matches_names_with_inner_punctuation() -> None:
    choices = [" card_arrival", " lost-card"]
    assert parse_choice("Card_Arrival.", choices) == 0
    assert parse_choice("lost-card", choices) == 1


@pytest.mark.parametrize(
    ("output", "choices", "expected"),
    [(" -1", [" -1", " 0", " 1"], 0), (" (a)", [" (a)", " (b)"], 0), (" etc.", [" etc.", " other"], 0)],
)
def test_parse_choice_reads_names_that_start_or_end_with_punctuation(
    output: str, choices: list[str], expected: int
) -> None:
    assert parse_choice(output, choices) == expected


# -- unanswered ----------------------------------------------------------------------------------------------


def test_unanswered_marks_rows_where_every_label_is_not_answered() -> None:
    scores = np.array(
        [
            [0.0, NOT_ANSWERED, NOT_ANSWERED],
            [NOT_ANSWERED, NOT_ANSWERED, NOT_ANSWERED],
            [-40.0, -55.0, -70.0],  # log-likelihoods: answered
        ]
    )
    assert unanswered(scores).tolist() == [False, True, False]
    assert NOT_ANSWERED == -1e9


# -- GenerateAndParse ---------------------------------------------------------------------------------------


class RecordingBackend(FakeBackend):
    """FakeBackend that records the keyword arguments of every generate_batch call."""

    def __init__(self) -> None:
        super().__init__()
        self.generated: list[dict[str, Any]] = []

    def generate_batch(self, prompts: Sequence[str], **kwargs: Any) -> list[Generation]:
        self.generated.append({"prompts": list(prompts), **kwargs})
        return super().generate_batch(prompts, **kwargs)


def prompt(text: str) -> str:
    return f"Classify.\n---\nInput: a demo\nOutput: negative\n---\nInput: {text}\nOutput:"


def test_generate_and_parse_scores_the_parsed_label_zero_and_the_others_not_answered() -> None:
    inner = RecordingBackend()
    backend = GenerateAndParse(inner)
    prompts = [prompt("positive, clearly"), prompt("Neutral."), prompt("unclear text")]
    seen: list[int] = []
    scores = backend.score_choices(prompts, LABELS, batch_size=2, progress=seen.append, prefix="Classify.\n")
    assert scores.shape == (3, 3)
    assert scores.tolist() == [
        [0.0, NOT_ANSWERED, NOT_ANSWERED],
        [NOT_ANSWERED, NOT_ANSWERED, 0.0],
        [NOT_ANSWERED, NOT_ANSWERED, NOT_ANSWERED],
    ]
    assert unanswered(scores).tolist() == [False, False, True]
    [call] = inner.generated
    assert call["prompts"] == prompts and call["stop"] == "\n" and call["prefix"] == "Classify.\n"
    assert call["batch_size"] == 2
    assert call["max_new_tokens"] == max(inner.count_tokens(c) for c in LABELS) + 2
    assert sum(seen) == 3  # progress goes through to the inner backend
    assert inner.calls == 0  # the inner backend's log-likelihood scoring is never used


def test_generate_and_parse_has_no_loglikelihood_and_passes_the_rest_through() -> None:
    inner = FakeBackend()
    backend = GenerateAndParse(inner)
    assert backend.capabilities.loglikelihood is False and inner.capabilities.loglikelihood is True
    assert backend.capabilities.prefix_cache is False
    assert "fake" in backend.name and backend.inner is inner
    assert backend.count_tokens("a b c") == inner.count_tokens("a b c")
    prompts = [prompt("good words"), prompt("bad")]
    assert backend.generate_batch(prompts, max_new_tokens=5) == inner.generate_batch(
        prompts, max_new_tokens=5
    )


# -- evaluate -----------------------------------------------------------------------------------------------


TEMPLATE = PromptTemplate(("good", "bad"))


def predictor(backend: Backend) -> Predictor:
    return Predictor("zero-shot", backend, TEMPLATE)


def test_a_loglik_row_says_so_and_has_no_unparsed_rate() -> None:
    test = [Example("good stuff", "good"), Example("bad stuff", "bad")]
    row, predictions = evaluate(PromptedLabels(predictor(FakeBackend())), test, latency_requests=0)
    assert row["label_scoring"] == "loglik" and "unparsed_rate" not in row
    assert row["accuracy"] == 1.0
    assert [p["predicted"] for p in predictions] == ["good", "bad"]


def test_a_generated_row_says_so_with_its_unparsed_rate() -> None:
    test = [Example("good stuff", "good"), Example("bad stuff", "bad"), Example("Good.", "bad")]
    row, predictions = evaluate(
        PromptedLabels(predictor(GenerateAndParse(FakeBackend()))), test, latency_requests=1
    )
    assert row["label_scoring"] == "generate" and row["unparsed_rate"] == 0.0
    assert row["accuracy"] == pytest.approx(2 / 3)
    assert [p["predicted"] for p in predictions] == ["good", "bad", "good"]
    assert [p["correct"] for p in predictions] == [True, True, False]
    assert row["latency_ms"]["requests"] == 1
    assert "latency_ms_no_prefix_cache" not in row


def test_rows_that_name_no_label_are_no_answer_and_wrong() -> None:
    test = [
        Example("good stuff", "good"),
        Example("maybe stuff", "good"),
        Example("bad stuff", "bad"),
        Example("unclear", "bad"),
    ]
    row, predictions = evaluate(
        PromptedLabels(predictor(GenerateAndParse(FakeBackend()))), test, latency_requests=0
    )
    assert NO_ANSWER == "(no answer)"
    assert row["label_scoring"] == "generate" and row["unparsed_rate"] == 0.5
    assert row["accuracy"] == 0.5
    assert [p["predicted"] for p in predictions] == ["good", NO_ANSWER, "bad", NO_ANSWER]
    assert [p["correct"] for p in predictions] == [True, False, True, False]
    assert all(np.isfinite(p["score"]) for p in predictions)


# -- settings -----------------------------------------------------------------------------------------------


def test_label_scoring_takes_loglik_or_generate() -> None:
    assert EvalArgs().label_scoring == "loglik"
    assert EvalArgs(label_scoring="generate").label_scoring == "generate"
    with pytest.raises(ConfigError, match="--label-scoring takes loglik or generate, got 'x'"):
        EvalArgs(label_scoring="x")


def test_the_old_prompt_task_key_is_refused_naming_instruction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"prompt\.task was renamed prompt\.instruction"):
        build_config({"prompt": {"task": "Classify the review."}}, {})
    path = tmp_path / "config.yaml"
    path.write_text("prompt:\n  task: Classify the review.\n  shots: [0]\n")
    with pytest.raises(ConfigError, match=r"renamed prompt\.instruction"):
        build_config(load_config_file(path), {})
    cfg = build_config({"prompt": {"instruction": "Classify the review."}}, {})
    assert cfg.prompt.instruction == "Classify the review."


def test_data_task_takes_the_registered_tasks(tmp_path: Path) -> None:
    from fewtune.run.plan import resolve_plan

    for task in ("classification", "extraction", "generation", "multi-label", None):
        assert DataArgs(task=task).task == task
    bogus = build_config({"data": {"task": "bogus"}, "out": str(tmp_path / "run")}, {})
    with pytest.raises(
        ConfigError, match="--task takes classification, extraction, generation, multi-label, got 'bogus'"
    ):
        resolve_plan(bogus)
    assert not (tmp_path / "run").exists()


# -- classification runs ------------------------------------------------------------------------------------


WORDS = ("good", "bad", "meh")


def config(tmp_path: Path, test_texts: Sequence[tuple[str, str]] | None = None, **sections: Any) -> RunConfig:
    """Rows whose first word is the label, so FakeBackend's generated answer (the input's first word) is
    right."""
    pool = [{"text": f"{w} thing number {i}", "label": w} for i in range(10) for w in WORDS]
    test = [{"text": f"{w} indeed {i}", "label": w} for i in range(3) for w in WORDS]
    test += [{"text": text, "label": label} for text, label in test_texts or ()]
    values: dict[str, dict[str, Any]] = {
        "run": {"out": str(tmp_path / "run")},
        "data": {
            "data": str(write_jsonl(tmp_path / "pool.jsonl", pool)),
            "test": str(write_jsonl(tmp_path / "test.jsonl", test)),
            "task": "classification",
        },
        "eval": {"methods": ["zero-shot", "few-shot"], "latency_requests": 1},
        "prompt": {"shots": [0, 3]},
    }
    for section, given in sections.items():
        values.setdefault(section, {}).update(given)
    return build_config(None, values)


def fake_backend(cfg: RunConfig, console: Console) -> FakeBackend:
    return FakeBackend()


def no_backend(cfg: RunConfig, console: Console) -> FakeBackend:
    raise AssertionError("the backend was loaded")


def no_embedder(cfg: RunConfig, console: Console) -> FakeEmbedder:
    # No run here needs embeddings; without them the data checks (seconds of cross-validation) are skipped.
    raise ModelError("no sentence embedder in these tests")


def results_of(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    results = json.loads((folder / "results.json").read_text())
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    return results, [json.loads(line) for line in lines]


def test_a_generated_classification_run_completes_and_says_how_labels_were_scored(tmp_path: Path) -> None:
    cfg = config(tmp_path, eval={"label_scoring": "generate"})
    results, predictions = results_of(run(cfg, Console(quiet=True), fake_backend, no_embedder))
    assert results["status"] == "complete"
    assert [m["name"] for m in results["methods"]] == ["zero-shot", "few-shot k=3 balanced"]
    for row in results["methods"]:
        assert row["label_scoring"] == "generate" and row["unparsed_rate"] == 0.0
        assert row["accuracy"] == 1.0
    assert len(predictions) == 2 * 9 and all(p["correct"] for p in predictions)


def test_a_generated_run_with_unanswered_rows_records_them(tmp_path: Path) -> None:
    cfg = config(tmp_path, [("unclear words", "good")], eval={"label_scoring": "generate"})
    results, predictions = results_of(run(cfg, Console(quiet=True), fake_backend, no_embedder))
    assert results["status"] == "complete"
    for row in results["methods"]:
        assert row["unparsed_rate"] == pytest.approx(1 / 10) and row["accuracy"] == pytest.approx(9 / 10)
    missed = [p for p in predictions if p["text"] == "unclear words"]
    assert len(missed) == 2 and all(p["predicted"] == NO_ANSWER and not p["correct"] for p in missed)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"eval": {"label_scoring": "generate"}, "prompt": {"calibrate": True}},
            "--calibrate needs label log-likelihoods; it does not apply to --label-scoring generate",
        ),
        ({"cost": {"metric": "chrf"}}, "--metric for classification takes"),
        ({"cost": {"metric": "field-f1"}}, "--metric for classification takes"),
        ({"data": {"schema": "schema.json"}}, "--schema applies to --task extraction, not classification"),
        ({"eval": {"constrained": True}}, "--constrained applies to --task extraction, not classification"),
    ],
)
def test_classification_refuses_settings_of_other_scorings_and_tasks_before_any_work(
    tmp_path: Path, sections: dict[str, Any], message: str
) -> None:
    cfg = config(tmp_path, **sections)
    with pytest.raises(ConfigError, match=message):
        run(cfg, Console(quiet=True), no_backend, no_embedder)
    assert not (tmp_path / "run" / "results.json").exists()


def test_calibration_with_loglik_scoring_is_still_allowed(tmp_path: Path) -> None:
    cfg = config(tmp_path, prompt={"calibrate": True}, eval={"methods": ["few-shot"]})
    results, _ = results_of(run(cfg, Console(quiet=True), fake_backend, no_embedder))
    assert any(row["calibrated"] for row in results["methods"])
