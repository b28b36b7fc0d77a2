"""Training files in the chat format of OpenAI's fine-tuning API, read into prompts and answers.

One JSON object a line, ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}``
ending with the assistant's message. That last message is the answer the model learns; the messages before
it are the prompt, rendered as ``/v1/chat/completions`` renders a request's messages (the tokenizer's chat
template, or, for a model without one such as the built-in Gemma 3 270M base, the contents joined by
newlines), so the fine-tuned model is trained on exactly the text it is later asked with. Only the last
assistant message is trained on; earlier assistant turns are context.

A bad line is a one-line :class:`~fewtune.errors.DataError` naming the file and the line (text that is not
valid Unicode, numbers that are not finite and deep nesting included: :mod:`fewtune.serve.inputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fewtune.data.load import Example
from fewtune.errors import DataError
from fewtune.serve.inputs import parse_json

ROLES = ("system", "user", "assistant")
Render = Callable[[Sequence[Mapping[str, Any]]], str]
"""Messages -> the prompt text (the engine's ``render_chat``)."""


@dataclass(frozen=True)
class ChatRow:
    """One training example: the messages before the answer, and the answer."""

    line: int
    """1-based line in its file."""
    messages: tuple[dict[str, str], ...]
    answer: str


def _message(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not an object with role and content")
    role, content = value.get("role"), value.get("content")
    if role not in ROLES:
        shown = "no role" if role is None else f"role {role!r}"
        raise ValueError(f"{where} has {shown}; this server takes {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise ValueError(f"{where} ({role}) needs its content as text")
    return {"role": str(role), "content": content}


def _row(text: str, line: int) -> ChatRow:
    value = parse_json(text, None)
    if not isinstance(value, dict) or not isinstance(value.get("messages"), list):
        raise ValueError('expected an object with a "messages" list')
    messages = [_message(m, f"message {i + 1}") for i, m in enumerate(value["messages"])]
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ValueError("the messages must end with the assistant's answer, after at least one message")
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise ValueError("no user message before the assistant's answer")
    if not messages[-1]["content"].strip():
        raise ValueError("the assistant's answer is empty")
    return ChatRow(line, tuple(messages[:-1]), messages[-1]["content"])


def read_chat_rows(content: bytes, filename: str) -> list[ChatRow]:
    """Every example of a chat JSONL training file (blank lines skipped), or a :class:`DataError` for the
    first bad line."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bad_line = content[: err.start].count(b"\n") + 1
        raise DataError(filename, bad_line, "not UTF-8 text") from None
    rows = []
    # "\n" only: str.splitlines() would also cut at U+2028, which JSON allows inside a string.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(_row(line.rstrip("\r"), number))
        except ValueError as err:
            raise DataError(filename, number, str(err)) from None
    if not rows:
        raise DataError(filename, None, "no training examples (one JSON object with messages per line)")
    return rows


@dataclass(frozen=True)
class RenderedTemplate:
    """What :class:`~fewtune.training.lora.Lora` trains on, for rows already rendered: an example's
    ``text`` is its prompt and its ``label`` the answer (the continuation the loss is on)."""

    def render(self, text: str, demos: Sequence[Example] = ()) -> str:
        return text

    def prefix(self, demos: Sequence[Example]) -> str:
        return ""  # no demos: the prompt is the row's own text (``query``)

    def query(self, text: str) -> str:
        return text

    def continuation(self, label: str) -> str:
        return label


def as_examples(rows: Sequence[ChatRow], render: Render) -> list[Example]:
    """Rows as training examples: the rendered prompt as ``text``, the answer as ``label``."""
    return [Example(render(row.messages), row.answer, line=row.line) for row in rows]


def few_shot_prompt(demos: Sequence[ChatRow], row: ChatRow, render: Render, chat_template: bool) -> str:
    """The base model's prompt for ``row`` with ``demos`` before it: earlier turns of one conversation
    when the model has a chat template, else each demo's training text (prompt and answer) on its own
    lines, then the row's prompt."""
    if chat_template:  # the row's system message first (templates take one, at the start), then turns
        turns = [m for m in row.messages if m["role"] == "system"]
        for demo in demos:
            turns += [m for m in demo.messages if m["role"] != "system"]
            turns.append({"role": "assistant", "content": demo.answer})
        return render([*turns, *(m for m in row.messages if m["role"] != "system")])
    shown = "".join(f"{render(demo.messages)}{demo.answer}\n" for demo in demos)
    return shown + render(row.messages)
