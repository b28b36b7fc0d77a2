"""The one model interface every strategy talks to (after lm-evaluation-harness's ``LM``)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import numpy as np

ProgressFn = Callable[[int], None]


class Backend(abc.ABC):
    """A language model that scores continuations and generates text.

    ``supports_loglikelihood`` is False for backends (chat APIs) that cannot return token log-probabilities;
    label scoring needs it.
    """

    name: str = "backend"
    supports_loglikelihood: bool = True

    @abc.abstractmethod
    def score_choices(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        batch_size: int = 16,
        progress: ProgressFn | None = None,
        prefix: str = "",
    ) -> np.ndarray:
        """Log-likelihood of each choice as the continuation of each prompt.

        Args:
            prompts: ``n`` contexts.
            choices: ``m`` continuations (e.g. ``" positive"``), the same for every prompt.
            batch_size: prompts per forward pass.
            progress: called with the number of prompts finished after each batch.
            prefix: text every prompt starts with (the demo block); a backend may compute it once and reuse
                it. Scores are the same with or without it.

        Returns:
            float array of shape ``[n, m]``: ``sum_t log p(choice_t | prompt, choice_<t)``, up to a constant
            per prompt (a backend may leave out the normalizer of the choices' first token, the same for
            every choice). Compare scores within a row; a row's log-softmax is the log-probability of
            each choice among the choices.
        """

    @abc.abstractmethod
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 10) -> list[str]:
        """Greedy continuation of each prompt, ``n`` strings (without the prompt)."""

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens the model would see for ``text`` as a prompt (including any BOS token)."""
