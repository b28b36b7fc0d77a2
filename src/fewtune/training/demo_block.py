"""Training with a demo block shared by a batch's rows: the block runs once per batch, not once per row.

An adapter trained to be prompted with k demos (``--kshot-training demos``) sees demos in every training
prompt. With ``--demo-draw batch`` the rows of a batch share one demo set
(:class:`~fewtune.prompts.demos.BatchDemos`), so the prompt of each row is the batch's block (header and
demos, :meth:`~fewtune.prompts.template.PromptPattern.prefix`) followed by the row's own query. The loop runs
the block once per batch with gradients and hands its keys and values to every row, as the prefix cache
does when scoring (:meth:`fewtune.training.loop.AnswerLogProbs.forward`); the loss and its gradients are
those of the same rows with the block written before each.

That holds only where the block's tokens and a row's are the tokens of the whole prompt, so each batch is
checked, and runs whole prompts (the same demos) where it is not:

- the tokenizer could merge the block's last token with the query's first. fewtune's prompts end the block
  with the ``---`` line's newline and start the query with ``Input:``, which the tiny test model's
  byte-level BPE keeps apart (``tests/test_demo_block.py``); a tokenizer that does not is caught here, and
  its batches are not split;
- a sliding-window layer (Gemma 3) keeps only its window's last tokens in the cache, so a batch whose block
  and longest row do not fit in the window runs whole, as scoring does (``HFBackend.fits_window``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fewtune.data.load import Example
from fewtune.prompts.demos import BatchDemos

Feature = tuple[list[int], list[int]]
"""A training row's (prompt tokens, answer tokens)."""


class BlockTemplate(Protocol):
    """What the block needs of the template (a :class:`~fewtune.training.loop.TrainingTemplate`): a prompt
    is ``prefix(demos) + query(text)``."""

    def render(self, text: str, demos: Sequence[Example] = ()) -> str: ...

    def prefix(self, demos: Sequence[Example]) -> str: ...

    def query(self, text: str) -> str: ...


class BlockTokens(Protocol):
    """What it needs of the backend (an ``HFBackend``)."""

    def encode_prompt(self, text: str) -> list[int]: ...

    def encode_continuation(self, text: str) -> list[int]: ...

    def fits_window(self, tokens: int) -> bool: ...


@dataclass(frozen=True)
class BatchPrompt:
    """One batch's tokens: the demo block its rows share, and each row's (prompt, answer) after it.

    ``block`` is empty when the batch runs whole prompts (each row's prompt then holds the block)."""

    block: list[int]
    features: list[Feature]
    block_tokens: int
    """The demo block's length in tokens, shared or not."""

    @property
    def tokens(self) -> int:
        """Tokens the batch's forward runs: the shared block once, and every row's prompt and answer."""
        return len(self.block) + sum(len(p) + len(a) for p, a in self.features)


@dataclass
class DemoBlocks:
    """Each batch's demo block and its rows' tokens, for training rows with the inputs ``texts``.

    ``queries[i]`` and ``answers[i]`` are row i's query and answer tokens (the loop's features): computed
    once, as the demos change every batch but the queries do not."""

    draws: BatchDemos
    template: BlockTemplate
    backend: BlockTokens
    texts: list[str]
    queries: list[list[int]]
    answers: list[list[int]]

    @classmethod
    def build(
        cls,
        draws: BatchDemos,
        template: BlockTemplate,
        backend: BlockTokens,
        texts: list[str],
        answers: list[str],
    ) -> DemoBlocks:
        """``answers``: each row's continuation text (what the loss is on)."""
        queries = [backend.encode_continuation(template.query(text)) for text in texts]
        return cls(
            draws, template, backend, texts, queries, [backend.encode_continuation(a) for a in answers]
        )

    @property
    def features(self) -> list[Feature]:
        """Each row's (query, answer) tokens: what the loop groups by length and counts answers of."""
        return list(zip(self.queries, self.answers, strict=True))

    def batch(self, step: int, rows: Sequence[int]) -> BatchPrompt:
        """Optimizer step ``step``'s tokens for the training rows ``rows``: a shared block, or whole prompts
        where splitting would change what the model sees (see the module docstring)."""
        demos = self.draws.draw(step, [self.texts[i] for i in rows])
        block = self.backend.encode_prompt(self.template.prefix(demos))
        whole = [self.backend.encode_prompt(self.template.render(self.texts[i], demos)) for i in rows]
        split = all(w == block + self.queries[i] for w, i in zip(whole, rows, strict=True))
        longest = max(len(self.queries[i]) + len(self.answers[i]) for i in rows)
        if split and self.backend.fits_window(len(block) + longest):
            return BatchPrompt(block, [(self.queries[i], self.answers[i]) for i in rows], len(block))
        return BatchPrompt([], [(w, self.answers[i]) for w, i in zip(whole, rows, strict=True)], len(block))
