"""Batched generation on the tiny model, and the evaluator on generated outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from task_helpers import (  # noqa: F401 (one_torch_thread is an autouse fixture)
    SEED,
    WHERE,
    assert_names_file_and_line,
    extraction_example,
    extraction_rows,
    generation_example,
    one_torch_thread,
)
from tiny import tiny_model, tiny_tokenizer

from fewtune.backends.fake import FakeBackend
from fewtune.backends.generation import Generation, continuation_inputs, generate_batch, stop_at
from fewtune.backends.hf import HFBackend
from fewtune.backends.kvcache import layer_states
from fewtune.prompts.template import OutputTemplate
from fewtune.run.evaluate import evaluate
from fewtune.run.output_answers import GeneratedOutputs, TextPredictor
from fewtune.tasks.base import TaskExample
from fewtune.tasks.extraction import (
    ExtractionTask,
)
from fewtune.tasks.generation import GenerationTask

# -- batched generation on the tiny model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def wide(tokenizer: Any) -> HFBackend:
    """A window longer than every prompt: rows of different lengths share a left-padded batch."""
    return HFBackend(tiny_model(tokenizer, seed=SEED, sliding_window=512), tokenizer)


@pytest.fixture(scope="module")
def windowed(tokenizer: Any) -> HFBackend:
    """Prompts longer than the sliding window (16 tokens)."""
    return HFBackend(tiny_model(tokenizer, seed=SEED, sliding_window=16), tokenizer)


TEMPLATE = OutputTemplate(
    "Extract the fields mentioned in the input as JSON.", "Answer with one line of JSON."
)
DEMOS = [TaskExample(text="the film is great fun", label='{"mood":"positive"}')]
INPUTS = [
    "x",
    "a dull and tired story",
    "the film",
    "great fun, a dull story, the film is tired and dull",
    "ok",
]


def test_batched_generation_with_a_cached_prefix_equals_one_row_at_a_time(wide: HFBackend) -> None:
    prompts = [TEMPLATE.render(text, DEMOS) for text in INPUTS]
    prefix = TEMPLATE.prefix(DEMOS) + "Input:"
    lengths = {len(wide.encode_prompt(p)) for p in prompts}
    assert len(lengths) >= 4  # rows of different lengths share batches: they are padded
    batched = generate_batch(wide, prompts, prefix=prefix, max_new_tokens=10, batch_size=4)
    alone = generate_batch(wide, prompts, prefix="", max_new_tokens=10, batch_size=1)
    assert [g.text for g in batched] == [g.text for g in alone]
    assert batched == alone
    assert all(g.prompt_tokens == len(wide.encode_prompt(p)) for g, p in zip(batched, prompts, strict=True))


def test_prompts_without_the_shared_prefix_are_generated_whole_and_in_place(wide: HFBackend) -> None:
    # Rows 1 and 3 have no demos, so they do not start with the cached prefix.
    prompts = [TEMPLATE.render(text, DEMOS if i % 2 == 0 else ()) for i, text in enumerate(INPUTS)]
    prefix = TEMPLATE.prefix(DEMOS) + "Input:"
    assert sum(p.startswith(prefix) for p in prompts) == 3
    batched = generate_batch(wide, prompts, prefix=prefix, max_new_tokens=8, batch_size=4)
    alone = generate_batch(wide, prompts, prefix="", max_new_tokens=8, batch_size=1)
    assert batched == alone


def fed_widths(backend: HFBackend, call: Callable[[], Any]) -> tuple[Any, list[tuple[int, int]]]:
    """``call()``'s result, and the shape of the input ids of every forward pass of the decoder it made."""
    shapes: list[tuple[int, int]] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        shapes.append(tuple(kwargs["input_ids"].shape))

    hook = backend.model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    try:
        return call(), shapes
    finally:
        hook.remove()


def test_rows_past_the_sliding_window_share_the_cached_prefix_and_equal_whole_prompts_alone(
    windowed: HFBackend,
) -> None:
    prompts = [TEMPLATE.render(text, DEMOS) for text in INPUTS]
    prefix = TEMPLATE.prefix(DEMOS) + "Input:"
    cut = len(windowed.encode_prompt(prefix))
    suffixes = [len(windowed.encode_prompt(p)) - cut for p in prompts]
    assert cut > 16  # the demo block alone outgrows the window (16 tokens)
    assert len(set(suffixes)) >= 4  # rows of different lengths share a batch
    seen: list[int] = []
    batched, fed = fed_widths(
        windowed,
        lambda: generate_batch(
            windowed, prompts, prefix=prefix, max_new_tokens=10, batch_size=4, progress=seen.append
        ),
    )
    alone = [generate_batch(windowed, [p], prefix="", max_new_tokens=10, batch_size=1)[0] for p in prompts]
    assert batched == alone
    assert seen == [4, 1]
    # Each batch's first pass reads its rows' own tokens (as wide as the longest), not the demo block again.
    firsts = [shape for shape in fed if shape[1] > 1 and shape != (1, cut)]  # not decoding, not the prefix
    longest = sorted(suffixes)
    assert firsts == [(4, longest[3]), (1, longest[4])]


def test_a_row_shorter_than_its_batch_by_more_than_the_prefix_is_fed_whole(windowed: HFBackend) -> None:
    inputs = ["x", " ".join([INPUTS[3]] * 6)]
    prompts = [TEMPLATE.render(text) for text in inputs]
    prefix = TEMPLATE.prefix(()) + "Input:"
    cut = len(windowed.encode_prompt(prefix))
    suffixes = [len(windowed.encode_prompt(p)) - cut for p in prompts]
    assert suffixes[1] - suffixes[0] > cut and suffixes[1] + cut > 16
    batched = generate_batch(windowed, prompts, prefix=prefix, max_new_tokens=10, batch_size=2)
    alone = [generate_batch(windowed, [p], prefix="", max_new_tokens=10, batch_size=1)[0] for p in prompts]
    assert batched == alone
    ids, mask, _ = continuation_inputs(
        windowed.encode_prompt(prefix),
        layer_states(windowed.prefix_cache(windowed.encode_prompt(prefix), keep_all=True)),
        [windowed.encode_prompt(p)[cut:] for p in prompts],
        windowed.pad_id,
        windowed.model.config,
    )
    # The short row is its whole prompt, left-padded: nothing of the cache is unmasked for it.
    assert mask[0].tolist() == [0] * (suffixes[1] - suffixes[0]) + [1] * (cut + suffixes[0])
    assert ids[0, -(cut + suffixes[0]) :].tolist() == windowed.encode_prompt(prompts[0])


def test_each_row_stops_once_its_output_is_complete(wide: HFBackend) -> None:
    prompts = [TEMPLATE.render(text, DEMOS) for text in INPUTS[:3]]
    prefix = TEMPLATE.prefix(DEMOS) + "Input:"
    free = generate_batch(wide, prompts, prefix=prefix, max_new_tokens=12, batch_size=3)
    assert all(not g.stopped and len(g.text) > 4 for g in free)

    def four_characters(text: str) -> int | None:
        return 4 if len(text) >= 4 else None

    done = generate_batch(
        wide, prompts, prefix=prefix, max_new_tokens=12, output_end=four_characters, batch_size=3
    )
    assert [g.text for g in done] == [g.text[:4] for g in free]
    assert all(g.stopped and g.output_tokens < 12 for g in done)  # generation stopped, not only the text
    alone = [
        generate_batch(wide, [p], max_new_tokens=12, output_end=four_characters, batch_size=1)[0]
        for p in prompts
    ]
    assert done == alone  # a row that stops leaves the others as they were


def test_rows_left_running_go_on_in_a_smaller_batch_and_equal_rows_alone(wide: HFBackend) -> None:
    prompts = [TEMPLATE.render(text, DEMOS) for text in INPUTS]
    prefix = TEMPLATE.prefix(DEMOS) + "Input:"
    free = [g.text for g in generate_batch(wide, prompts, prefix=prefix, max_new_tokens=12, batch_size=5)]
    # Rows 1, 3 and 4 are complete at their own points; rows 0 and 2 never are, and run to the cap.
    complete_rows, capped = [1, 3, 4], [0, 2]
    ends = [free[r][: 3 + 2 * i] for i, r in enumerate(complete_rows)]
    assert all(sum(text.startswith(end) for text in free) == 1 for end in ends)

    def complete(text: str) -> int | None:
        return next((len(end) for end in ends if text.startswith(end)), None)

    done, fed = fed_widths(
        wide,
        lambda: generate_batch(
            wide, prompts, prefix=prefix, max_new_tokens=12, output_end=complete, batch_size=5
        ),
    )
    alone = [
        generate_batch(wide, [p], prefix=prefix, max_new_tokens=12, output_end=complete, batch_size=1)[0]
        for p in prompts
    ]
    assert done == alone
    assert [done[r].text for r in complete_rows] == ends and all(done[r].stopped for r in complete_rows)
    assert [done[r].output_tokens for r in capped] == [12, 12] and not any(done[r].stopped for r in capped)
    assert (2, 1) in fed  # once three rows were done, the last two decoded on their own


def test_a_constrained_batch_is_never_cut(wide: HFBackend) -> None:
    # The grammar's logits processor holds each row's state: a smaller batch would need it anew, mid-object.
    constraint = wide.schema_constraint({"type": "object", "properties": {"mood": {"type": "string"}}})
    prompts = [TEMPLATE.render(text, DEMOS) for text in INPUTS]
    prefix = TEMPLATE.prefix(DEMOS) + "Input:"
    kwargs: dict[str, Any] = {"prefix": prefix, "max_new_tokens": 16, "constraint": constraint}
    free = [g.text for g in generate_batch(wide, prompts, batch_size=5, **kwargs)]
    ends = [free[r][:cut] for r, cut in ((1, 14), (2, 15), (3, 12))]  # three complete early, two never
    assert all(sum(text.startswith(end) for text in free) == 1 for end in ends)

    def complete(text: str) -> int | None:
        return next((len(end) for end in ends if text.startswith(end)), None)

    done, fed = fed_widths(
        wide, lambda: generate_batch(wide, prompts, output_end=complete, batch_size=5, **kwargs)
    )
    alone = [generate_batch(wide, [p], output_end=complete, batch_size=1, **kwargs)[0] for p in prompts]
    assert done == alone and [done[r].text for r in (1, 2, 3)] == ends
    assert {shape[0] for shape in fed if shape[1] == 1} == {5}


def test_generation_keeps_row_order_and_counts_progress(wide: HFBackend) -> None:
    prompts = [TEMPLATE.render(text) for text in INPUTS]
    seen: list[int] = []
    together = generate_batch(wide, prompts, max_new_tokens=6, batch_size=2, progress=seen.append)
    reversed_ = generate_batch(wide, prompts[::-1], max_new_tokens=6, batch_size=2)
    assert together == reversed_[::-1]
    assert sum(seen) == len(prompts)


def test_a_stop_string_cuts_the_output(wide: HFBackend) -> None:
    prompts = [TEMPLATE.render(text, DEMOS) for text in INPUTS[:2]]
    free = generate_batch(wide, prompts, max_new_tokens=12, batch_size=2)
    assert all(not g.stopped and g.output_tokens == 12 for g in free)  # ran to the cap
    text = free[0].text
    # A printable stop string first seen in the second half of the free output.
    at = next(
        i
        for i in range(len(text) // 2, len(text) - 1)
        if text[i : i + 2].isascii() and text[i : i + 2].isprintable() and text.index(text[i : i + 2]) == i
    )
    stop = text[at : at + 2]
    cut = generate_batch(wide, prompts[:1], max_new_tokens=12, stop=stop, batch_size=1)[0]
    assert cut.text == text[:at] and cut.text
    assert cut.stopped and cut.output_tokens < 12
    # The stop-string criteria are built once per tokenizer and string (building reads the whole vocabulary)
    # and hold no state: a second call with the same stop string stops in the same place.
    (criteria,) = stop_at(wide.tokenizer, stop)["stopping_criteria"]
    assert stop_at(wide.tokenizer, stop)["stopping_criteria"][0] is criteria
    assert stop_at(wide.tokenizer, None) == {}
    assert generate_batch(wide, prompts[:1], max_new_tokens=12, stop=stop, batch_size=1)[0] == cut


# -- evaluate (generated outputs) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CannedPredictor(TextPredictor):
    """Returns fixed outputs instead of generating (the scoring path without a model)."""

    outputs: tuple[str, ...] = ()

    def generate(self, texts: Sequence[str], batch_size: int = 16, progress: Any = None) -> list[Generation]:
        return [Generation(out, 10, len(out.split()), True) for out in self.outputs[: len(texts)]]


def test_evaluate_generated_scores_outputs_into_a_row_and_predictions() -> None:
    task = ExtractionTask()
    test = [extraction_example({"a": "x"}, "one"), extraction_example({"a": "y", "b": "z"}, "two")]
    task.fit(test)
    outputs = ('{"a":"x"}', 'garbage {"a":"y"}')
    predictor = CannedPredictor("zero-shot", FakeBackend(), TEMPLATE, 20, outputs=outputs)
    row, predictions = evaluate(GeneratedOutputs(predictor, task), test, latency_requests=0, seed=0)
    assert row["primary"]["name"] == "field-f1" and row["primary"]["label"] == "field F1"
    assert row["primary"]["value"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))
    low, high = row["primary"]["ci95"]
    assert low <= row["primary"]["value"] <= high
    assert row["metrics"]["parse_rate"]["value"] == 0.5
    assert row["metrics"]["exact_match"]["value"] == 0.5
    assert row["metrics"]["field_f1"]["value"] == pytest.approx(row["primary"]["value"])
    assert row["output_tokens_mean"] == pytest.approx((1 + 2) / 2)
    assert row["latency_ms"]["requests"] == 0
    assert set(row["per_field"]) == {"a", "b"}
    assert [p["output"] for p in predictions] == list(outputs)
    assert predictions[0]["parsed"] == {"a": "x"} and predictions[1]["parsed"] is None
    assert predictions[1]["scores"]["fn"] == 2.0
    assert predictions[0]["primary_stats"] == [1.0, 0.0, 0.0]
    assert predictions[0]["gold"] == '{"a":"x"}' and predictions[0]["text"] == "one"


def test_evaluate_generated_for_generation_records_references_of_multi_reference_rows() -> None:
    task = GenerationTask()
    test = [generation_example("the cat sat", "a cat sat"), generation_example("a dog ran")]
    predictor = CannedPredictor("few-shot", FakeBackend(), TEMPLATE, 20, outputs=("the cat sat", "a dog ran"))
    row, predictions = evaluate(GeneratedOutputs(predictor, task), test, latency_requests=0, seed=0)
    assert row["primary"]["name"] == "chrf" and row["primary"]["value"] == pytest.approx(1.0)
    assert "per_field" not in row
    assert predictions[0]["references"] == ["the cat sat", "a cat sat"]
    assert predictions[1]["references"] is None
    assert predictions[0]["primary_stats"] == [pytest.approx(1.0)]


def test_evaluate_generated_on_the_tiny_model_generates_times_and_scores(wide: HFBackend) -> None:
    task = ExtractionTask()
    test = [extraction_example({"mood": "dull"}, text) for text in INPUTS[:3]]
    task.fit(test)
    predictor = TextPredictor("few-shot", wide, TEMPLATE, 8, stop=task.stop, demos=tuple(DEMOS))
    row, predictions = evaluate(
        GeneratedOutputs(predictor, task), test, batch_size=2, latency_requests=1, seed=0
    )
    assert row["name"] == "few-shot k=1" and row["shots"] == 1 and row["max_new_tokens"] == 8
    assert row["latency_ms"]["requests"] == 1 and row["latency_ms"]["p50"] > 0
    assert 0 < row["output_tokens_mean"] <= 8
    assert 0 <= row["primary"]["value"] <= 1 and len(row["primary"]["ci95"]) == 2
    assert row["demos"] == [{"text": DEMOS[0].text, "output": DEMOS[0].label}]
    assert len(predictions) == 3
    expected = generate_batch(wide, predictor.prompts([ex.text for ex in test]), max_new_tokens=8, stop="\n")
    assert [p["output"] for p in predictions] == [g.text for g in expected]
    assert all({"output", "parsed", "scores", "primary_stats"} <= set(p) for p in predictions)
