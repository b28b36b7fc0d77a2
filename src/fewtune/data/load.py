"""Read labelled examples from JSONL, CSV or chat-format JSONL, with one-line errors naming file and line.

Formats:
- JSONL: one object per line with an input field (default ``text``) and a label field (default ``label``).
- Chat JSONL: one object per line with ``messages``: a list of ``{"role", "content"}``. The last assistant
  message is the label; the last user message before it is the input (system messages are ignored).
- CSV: a header row naming the input and label columns.
Blank lines are skipped. JSONL records end at a line feed only, as JSON Lines says (a carriage return before
it is dropped). Labels that are numbers (``0``/``1``) are read as their text.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewtune.errors import DataError


@dataclass(frozen=True)
class Example:
    """One labelled example; ``line`` is its 1-based line in ``path`` (for error messages)."""

    text: str
    label: str
    path: str = ""
    line: int = 0


def decode_text(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            path, line, f"not valid UTF-8 (byte 0x{raw[err.start]:02x}); save the file as UTF-8"
        ) from None


# A lone UTF-16 surrogate (a "\\ud83d" escape without its pair) decodes from JSON but cannot be written as
# UTF-8; it is read as U+FFFD, the replacement character, so the row is kept and the run never fails later.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# The CSV module's default limit is 131,072 characters a field; a long support reply or document may be more.
CSV_FIELD_LIMIT = 64 * 1024 * 1024


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


def read_json_line(line: str, path: Path, line_no: int) -> Any:
    """One JSON Lines record; a one-line :class:`DataError` naming file and line for anything that is not
    one (malformed, nested too deeply to read, a number too long to convert)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(path, line_no, f"malformed JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise DataError(path, line_no, "JSON nested too deeply to read") from None
    except ValueError as err:  # e.g. an integer of more than 4,300 digits
        raise DataError(path, line_no, f"unreadable JSON value ({err})") from None
    return _without_surrogates(record) if "\\u" in line else record


def as_text(value: Any, field: str, path: Path, line: int) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise DataError(path, line, f"field '{field}' must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise DataError(path, line, f"field '{field}' is empty")
    return text


def _from_chat(record: dict[str, Any], path: Path, line: int) -> tuple[str, str]:
    messages = record["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(path, line, "'messages' must be a list of {role, content} objects")
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last_assistant is None:
        raise DataError(path, line, "chat example has no assistant message to use as the label")
    user = [m for m in messages[:last_assistant] if m.get("role") == "user"]
    if not user:
        raise DataError(path, line, "chat example has no user message before the last assistant message")
    text = as_text(user[-1].get("content"), "messages[].content (user)", path, line)
    label = as_text(messages[last_assistant].get("content"), "messages[].content (assistant)", path, line)
    return text, label


def _read_jsonl(path: Path, content: str, input_field: str, label_field: str) -> list[Example]:
    examples = []
    # Not str.splitlines(): it also breaks at U+0085, U+2028 and U+2029, which JSON strings may hold
    # unescaped, and at \x0b, \x0c, \x1c-\x1e, which would shift the line numbers in error messages.
    for line_no, raw_line in enumerate(content.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if not line.strip():
            continue
        record = read_json_line(line, path, line_no)
        if not isinstance(record, dict):
            raise DataError(path, line_no, f"expected a JSON object, got {type(record).__name__}")
        if "messages" in record and input_field not in record:
            text, label = _from_chat(record, path, line_no)
        else:
            for field in (input_field, label_field):
                if field not in record:
                    fields = ", ".join(sorted(record)) or "none"
                    raise DataError(
                        path,
                        line_no,
                        f"missing field '{field}' (fields here: {fields}; set --input-field/--label-field)",
                    )
            text = as_text(record[input_field], input_field, path, line_no)
            label = as_text(record[label_field], label_field, path, line_no)
        examples.append(Example(text=text, label=label, path=str(path), line=line_no))
    return examples


def _read_csv(path: Path, content: str, input_field: str, label_field: str) -> list[Example]:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        return _csv_rows(path, reader, input_field, label_field)
    except csv.Error as err:
        raise DataError(path, reader.line_num or None, f"unreadable CSV ({err})") from None


def _csv_rows(path: Path, reader: csv.DictReader[str], input_field: str, label_field: str) -> list[Example]:
    header = reader.fieldnames or []
    twice = sorted({name for name in header if list(header).count(name) > 1})
    if twice:
        raise DataError(path, 1, f"the header names column '{twice[0]}' twice; which one to read is unclear")
    for field in (input_field, label_field):
        if field not in header:
            raise DataError(
                path, 1, f"missing column '{field}' in the header ({', '.join(header) or 'empty'})"
            )
    examples = []
    start = 2
    for row in reader:
        line_no = start  # the row's first physical line
        start = reader.line_num + 1
        if None in row:
            raise DataError(path, line_no, f"row has more cells than the header's {len(header)}")
        if all(not (v or "").strip() for v in row.values()):
            continue
        values = {k: row.get(k) for k in (input_field, label_field)}
        for field, value in values.items():
            if value is None:
                raise DataError(path, line_no, f"row has no cell for column '{field}'")
        text = as_text(values[input_field], input_field, path, line_no)
        label = as_text(values[label_field], label_field, path, line_no)
        examples.append(Example(text=text, label=label, path=str(path), line=line_no))
    return examples


def load_examples(path: str | Path, input_field: str = "text", label_field: str = "label") -> list[Example]:
    """Read every example in ``path``; raise :class:`DataError` (file and line) on the first bad one."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, "is a folder; pass a .jsonl or .csv file")
    content = decode_text(path, path.read_bytes())
    if not content.strip():
        raise DataError(path, None, "file is empty; expected labelled examples")
    if path.suffix.lower() == ".csv":
        examples = _read_csv(path, content, input_field, label_field)
    else:
        examples = _read_jsonl(path, content, input_field, label_field)
    if not examples:
        raise DataError(path, None, "no examples found (only blank rows)")
    return examples
