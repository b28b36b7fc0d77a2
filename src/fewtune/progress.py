"""What a run shows and loads: progress bars for long steps, and the default model and embedder loaders
(shared by every task's run)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fewtune.backends.base import Backend, ProgressFn
from fewtune.config import RunConfig
from fewtune.embeddings import Embedder
from fewtune.errors import ConfigError
from fewtune.methods import any_fine_tuned
from fewtune.record import Answerers

# An endpoint's answers, kept in the run folder: a re-run sends nothing, an interrupted one resumes.
HTTP_CACHE_FILE = "http_cache.sqlite"


def load_backend(cfg: RunConfig, console: Console) -> Backend:
    """The model ``cfg.model`` names: loaded in-process, or an OpenAI-compatible endpoint (probed once,
    its answers cached in the run folder's ``http_cache.sqlite``)."""
    from fewtune.backends.endpoint import endpoint_spec, is_endpoint
    from fewtune.backends.hf import HFBackend
    from fewtune.backends.models import load_model, resolve_model

    if is_endpoint(cfg.model):
        from fewtune.backends.openai_compat import OpenAICompatBackend

        spec = endpoint_spec(cfg.model, cfg.api_key_env)
        cache = Path(cfg.out) / HTTP_CACHE_FILE if cfg.out else None
        with console.status(f"Probing {spec.model} at {spec.url}..."):
            return OpenAICompatBackend(spec, cache_path=cache)
    with console.status(f"Preparing model {cfg.model} (the first run converts it, about a minute)..."):
        folder = resolve_model(cfg.model)
    with console.status(f"Loading {folder}..."):
        model, tokenizer = load_model(folder)
    return HFBackend(model, tokenizer, name=cfg.model, source=str(folder))


def load_backends(
    cfg: RunConfig, console: Console, backend_factory: Callable[[RunConfig, Console], Backend]
) -> tuple[Backend, Backend]:
    """The model LoRA trains on (``--model``) and the one the prompting rows ask (``--prompt-model``, or
    the same). A run that trains LoRA needs a local ``--model``; that is checked before anything loads."""
    from fewtune.backends.endpoint import is_endpoint

    if is_endpoint(cfg.model) and any_fine_tuned(cfg.eval.methods):
        raise ConfigError(
            f"LoRA needs a local model, and --model {cfg.model} is an endpoint: give the endpoint as "
            "--prompt-model and keep a local --model, or leave lora out of --methods"
        )
    backend = backend_factory(cfg, console)
    if not cfg.prompt_model or cfg.prompt_model == cfg.model:
        return backend, backend
    return backend, backend_factory(replace(cfg, model=cfg.prompt_model), console)


def describe_prompt_model(results: dict[str, Any], cfg: RunConfig, backend: Backend, prompt: Backend) -> None:
    """``results["prompt_model"]``: the model the prompting rows ask, when it is not ``--model`` or is an
    endpoint (its probe's findings; an endpoint's own ``model`` is its served name, so the spec is kept)."""
    if prompt is not backend or prompt.capabilities.remote:
        results["prompt_model"] = {**describe_backend(prompt), "model": cfg.prompt_model or cfg.model}


def count_requests(results: dict[str, Any], prompt: Backend) -> None:
    """An endpoint's token usage and requests sent (0 when the cache answered all), once the rows are done."""
    if "prompt_model" in results:
        results["prompt_model"]["usage"] = prompt.usage_totals
        results["prompt_model"]["requests_sent"] = prompt.requests_sent


def answerers(cfg: RunConfig, prompt: Backend) -> Answerers:
    return Answerers(cfg.prompt_model or cfg.model, cfg.model, prompt.capabilities.remote)


def describe_backend(backend: Backend) -> dict[str, Any]:
    return dict(backend.describe())


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
