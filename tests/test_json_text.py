"""Where a generated JSON object ends; cutting an output there never changes what extraction parses."""

from __future__ import annotations

import random

import pytest

from fewtune.tasks.extraction import ExtractionTask
from fewtune.tasks.json_text import first_object, object_end


@pytest.mark.parametrize(
    ("text", "end"),
    [
        ('{"a":"b"}', 9),
        (' {"a":"b"}\n---', 10),
        ('{"a":"b"} and then more', 9),
        ('{"a":"}"}', 9),  # a brace inside a string
        ('{"a":"\\"}"} x', 11),  # an escaped quote does not close the string
        ('{"a":"\\\\"} x', 10),  # an escaped backslash does not escape the quote after it
        ('{"a":{"b":[1,{"c":2}]}}, {"d":3}', 23),  # nested objects: the outer one's brace
        ('{"a":"b"', None),  # still open
        ('{"a":"b}', None),  # the brace is in an open string
        ('x {"a":1}', None),  # not an object first
        ('["a"]', None),
        ('{"a":\n1}', None),  # spans lines: the parse reads the first line only
        ("", None),
        ("   ", None),
    ],
)
def test_object_end_is_just_after_the_closing_brace(text: str, end: int | None) -> None:
    assert object_end(text) == end


def test_extraction_stops_at_the_end_of_its_object() -> None:
    assert ExtractionTask.output_end is not None
    assert ExtractionTask().output_end is not None
    assert ExtractionTask.output_end(' {"a":"b"} {"c":"d"}') == 10


ALPHABET = ["{", "}", '"', "\\", " ", "a", ":", ",", "1", "[", "]", "\n", '"a":', '"b"']


def test_cutting_an_output_at_its_object_end_never_changes_what_extraction_parses() -> None:
    task = ExtractionTask()
    rng = random.Random(0)
    cut = 0
    for _ in range(20000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 14)))
        text = rng.choice(["", " ", '{"k":"v"', "{"]) + text
        end = object_end(text)
        if end is None:
            continue
        cut += end < len(text)
        assert task.parse(text[:end]) == task.parse(text), text
        assert first_object(text[:end]) is not None or first_object(text) is None, text
    assert cut > 1000  # the draw did cut many outputs short
