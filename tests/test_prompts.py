from __future__ import annotations

from collections import Counter

from fewtune.data.load import Example
from fewtune.prompts.demos import select_demos
from fewtune.prompts.template import PromptTemplate

POOL = [Example(f"text {i}", "abc"[i % 3]) for i in range(30)]


def test_prompt_follows_the_guide_pattern() -> None:
    template = PromptTemplate(("negative", "positive"))
    demos = [Example("a fine film", "positive"), Example("a dull\nfilm", "negative")]
    assert template.render("so-so", demos) == (
        "Classify the input into exactly one label.\n"
        "Labels: negative, positive\n"
        "Answer with the label only.\n"
        "---\nInput: a fine film\nOutput: positive\n"
        "---\nInput: a dull film\nOutput: negative\n"
        "---\nInput: so-so\nOutput:"
    )
    assert template.render("so-so", demos).startswith(template.prefix(demos))
    assert template.continuation("positive") == " positive"


def test_balanced_demos_cover_labels_evenly_and_interleave() -> None:
    demos = select_demos(POOL, 7, "balanced", seed=1)
    counts = Counter(d.label for d in demos)
    assert sum(counts.values()) == 7 and max(counts.values()) - min(counts.values()) <= 1
    assert len({d.label for d in demos[:3]}) == 3  # one of each label before any repeats


def test_demos_are_seeded_and_come_from_the_pool() -> None:
    for selection in ("balanced", "random"):
        first = select_demos(POOL, 5, selection, seed=7)
        assert first == select_demos(POOL, 5, selection, seed=7)
        assert first != select_demos(POOL, 5, selection, seed=8)
        assert set(first) <= set(POOL)
    assert select_demos(POOL, 0) == []
