"""What a run shows and loads: progress bars for long steps, and the default model and embedder loaders
(shared by every task's run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fewtune.backends.base import Backend, ProgressFn
from fewtune.config import RunConfig
from fewtune.embeddings import Embedder


def load_backend(cfg: RunConfig, console: Console) -> Backend:
    from fewtune.backends.hf import HFBackend
    from fewtune.backends.models import load_model, resolve_model

    with console.status(f"Preparing model {cfg.model} (the first run converts it, about a minute)..."):
        folder = resolve_model(cfg.model)
    with console.status(f"Loading {folder}..."):
        model, tokenizer = load_model(folder)
    return HFBackend(model, tokenizer, name=cfg.model, source=str(folder))


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[extra]}"),
        console=console,
    )


def with_progress(console: Console, title: str, total: int, work: Callable[[ProgressFn], Any]) -> Any:
    with progress_bar(console) as progress:
        task = progress.add_task(title, total=total, extra="")
        return work(lambda n: progress.advance(task, n))


def train_progress(console: Console, title: str) -> Callable[[Callable[..., Any]], Any]:
    """``train_progress(console, title)(fit)`` runs ``fit(on_step)`` under a progress bar of its steps."""

    def go(fit: Callable[..., Any]) -> Any:
        with progress_bar(console) as progress:
            task = progress.add_task(title, total=None, extra="")

            def on_step(step: int, total: int, loss: float) -> None:
                progress.update(task, completed=step, total=total, extra=f"loss {loss:.3f}")

            return fit(on_step)

    return go


def load_embedder(cfg: RunConfig, console: Console) -> Embedder:
    from fewtune.embeddings import EMBEDDING_MODEL, SentenceEmbedder

    with console.status(f"Loading the sentence embedder {EMBEDDING_MODEL}..."):
        return SentenceEmbedder()
