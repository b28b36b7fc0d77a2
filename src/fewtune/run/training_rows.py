"""The one loop every task's trained rows run through: for each ``--train-sizes`` n, a LoRA adapter (the
``lora`` row, and with ``--kshot-training plain`` or ``both`` the same adapter prompted with k demos), an
adapter per shot count trained with k demos in every prompt (``--kshot-training demos`` or ``both``), and
full fine-tuning. Rows are named by :func:`fewtune.methods.row_name` and their weights saved under
:func:`fewtune.methods.adapter_folder`; a row already finished (``--resume``) is not trained again.

What differs between tasks (which rows train, how a trained model becomes a predictor, how it is scored)
is the task's :class:`Tuning`."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

from fewtune.backends.base import Backend
from fewtune.config import RunConfig
from fewtune.errors import ConfigError
from fewtune.methods import Method, adapter_folder, any_fine_tuned, row_name
from fewtune.results.sections import Fitted, LocalTraining
from fewtune.run.session import RunSession
from fewtune.strategies.base import PLAIN_ADAPTER

PLAIN, DEMOS = "plain", "demos"
"""``--kshot-training`` recipes of a lora+few-shot row: the lora row's adapter, or one trained with demos."""


class Tuning(abc.ABC):
    """A task's side of the training loop."""

    template: Any
    """The prompt template a trained row is trained and asked with."""
    shots: Sequence[int]
    """Shot counts of the lora+few-shot rows."""

    @abc.abstractmethod
    def sample(self, n: int) -> list[Any]:
        """The ``n`` training examples (the same for every trained row and the reference)."""

    @abc.abstractmethod
    def selection(self, k: int) -> str:
        """The demo selection a lora+few-shot row with ``k`` demos names."""

    @abc.abstractmethod
    def training_demos(self, train: list[Any], k: int) -> Any:
        """The ``k`` demos each training example is shown with (never itself): a set per row, or a draw per
        batch (:func:`fewtune.prompts.demos.training_draw`)."""

    @abc.abstractmethod
    def trained(self, strategy: Any, train: list[Any], title: str, demos: Any = None) -> Any:
        """Train ``strategy`` and return the predictor of its row."""

    @abc.abstractmethod
    def prompted(self, tuned: Any, k: int, kshot_training: str) -> Any:
        """The trained predictor asked with ``k`` demos, as a lora+few-shot row."""

    @abc.abstractmethod
    def evaluate(self, predictor: Any) -> tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]:
        """The predictor's results row and per-row predictions on the test rows."""


def prompted_training(fitted: Fitted | None, kshot_training: str) -> LocalTraining:
    """What training a lora+few-shot row's adapter measured, with how it was trained (``kshot_training``:
    :data:`PLAIN` or :data:`DEMOS`)."""
    assert isinstance(fitted, LocalTraining), "a lora+few-shot row prompts a locally trained adapter"
    return fitted.prompted(kshot_training)


def train_rows(cfg: RunConfig, session: RunSession, backend: Backend, tuning: Tuning) -> None:
    """Every trained row of the plan, in order (see the module docstring)."""
    methods = cfg.eval.methods
    if not any_fine_tuned(methods):
        return
    if not backend.capabilities.trainable:
        raise ConfigError(
            f"LoRA needs a local Hugging Face model; backend '{backend.name}' cannot be trained"
        )
    recipe = cfg.lora.kshot_training
    kshot = Method.LORA_FEW_SHOT in methods
    plain_kshot = tuning.shots if kshot and recipe in (PLAIN, "both") else ()
    demo_kshot = tuning.shots if kshot and recipe in (DEMOS, "both") else ()

    def score(predictor: Any) -> None:
        if predictor.name not in session.done:
            session.record(*tuning.evaluate(predictor))

    def strategy(method: Method, n: int, k: int = 0) -> Any:
        from fewtune.training.lora import FullFineTune, Lora

        kind = FullFineTune if method is Method.FULL_FT else Lora
        folder = session.store.adapter_dir(adapter_folder(method, n, k))
        return kind(backend, tuning.template, cfg.lora, folder, seed=cfg.seed)

    for n in cfg.lora.train_sizes:
        train = tuning.sample(n)
        plain_rows = [row_name(Method.LORA, n)] if Method.LORA in methods else []
        plain_rows += [
            row_name(Method.LORA_FEW_SHOT, n, k, tuning.selection(k), PLAIN_ADAPTER) for k in plain_kshot
        ]
        if plain_rows and not set(plain_rows) <= session.done:  # one adapter, trained without demos
            adapter = tuning.trained(strategy(Method.LORA, n), train, f"Training lora n={n}")
            if Method.LORA in methods:
                score(adapter)
            for k in plain_kshot:
                score(tuning.prompted(adapter, k, PLAIN))
        for k in demo_kshot:  # an adapter per shot count, trained as it is prompted
            if row_name(Method.LORA_FEW_SHOT, n, k, tuning.selection(k)) in session.done:
                continue
            title = f"Training lora n={n} with {k} demos per prompt"
            shown = tuning.training_demos(train, k)
            score(tuning.prompted(tuning.trained(strategy(Method.LORA, n, k), train, title, shown), k, DEMOS))
        if Method.FULL_FT in methods and row_name(Method.FULL_FT, n) not in session.done:
            score(tuning.trained(strategy(Method.FULL_FT, n), train, f"Training full-ft n={n}"))
