"""What a run loads: the model(s) it asks and trains and the sentence embedder (shared by every task's run),
and what it records about them. Long steps are shown through the run's :class:`~.events.RunEvents`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fewtune.backends.base import Backend
from fewtune.config import RunConfig
from fewtune.embeddings import Embedder
from fewtune.errors import ConfigError
from fewtune.methods import any_fine_tuned
from fewtune.results.record import Answerers
from fewtune.run.events import RunEvents

# An endpoint's answers, kept in the run folder: a re-run sends nothing, an interrupted one resumes.
HTTP_CACHE_FILE = "http_cache.sqlite"


def load_backend(cfg: RunConfig, events: RunEvents) -> Backend:
    """The model ``cfg.model`` names: loaded in-process, or an OpenAI-compatible endpoint (probed once,
    its answers cached in the run folder's ``http_cache.sqlite``)."""
    from fewtune.backends.endpoint import endpoint_spec, is_endpoint
    from fewtune.backends.hf import HFBackend
    from fewtune.backends.models import load_model, resolve_model

    if is_endpoint(cfg.model):
        from fewtune.backends.openai_compat import OpenAICompatBackend

        spec = endpoint_spec(cfg.model, cfg.api_key_env)
        cache = Path(cfg.out) / HTTP_CACHE_FILE if cfg.out else None
        if cfg.out:
            from fewtune.results.store import record_written

            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            record_written(cfg.out, HTTP_CACHE_FILE)
        with events.status(f"Probing {spec.model} at {spec.url}..."):
            return OpenAICompatBackend(spec, cache_path=cache)
    with events.status(f"Preparing model {cfg.model} (the first run converts it, about a minute)..."):
        folder = resolve_model(cfg.model)
    with events.status(f"Loading {folder}..."):
        model, tokenizer = load_model(folder, precision=cfg.lora.precision)
    return HFBackend(model, tokenizer, name=cfg.model, source=str(folder))


def load_backends(
    cfg: RunConfig, events: RunEvents, backend_factory: Callable[[RunConfig, RunEvents], Backend]
) -> tuple[Backend, Backend]:
    """The model LoRA trains on (``--model``) and the one the prompting rows ask (``--prompt-model``, or
    the same). A run that trains LoRA needs a local ``--model``; that is checked before anything loads."""
    from fewtune.backends.endpoint import is_endpoint

    if is_endpoint(cfg.model) and any_fine_tuned(cfg.eval.methods):
        raise ConfigError(
            f"LoRA needs a local model, and --model {cfg.model} is an endpoint: give the endpoint as "
            "--prompt-model and keep a local --model, or leave lora out of --methods"
        )
    from fewtune.training.memory import check_hardware

    check_hardware(cfg)
    backend = backend_factory(cfg, events)
    if not cfg.prompt_model or cfg.prompt_model == cfg.model:
        return backend, backend
    return backend, backend_factory(replace(cfg, model=cfg.prompt_model), events)


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


def load_embedder(cfg: RunConfig, events: RunEvents) -> Embedder:
    from fewtune.embeddings import EMBEDDING_MODEL, SentenceEmbedder

    with events.status(f"Loading the sentence embedder {EMBEDDING_MODEL}..."):
        return SentenceEmbedder()
