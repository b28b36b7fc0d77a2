"""The KV cache's keyword in and out of a transformers forward pass, and caches built from tensors.

transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name still works but warns on every
call, and goes in 5.40). fewtune supports the whole 5.x range, so it asks the installed version which name
``prepare_inputs_for_generation`` takes, the hook every generating model routes its cache through.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def cache_key() -> str:
    """``cache`` where the installed transformers takes it, else ``past_key_values``."""
    from transformers import GenerationMixin

    taken = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in taken else "past_key_values"


def with_cache(cache: Any) -> dict[str, Any]:
    """Keyword arguments that hand ``cache`` to a forward pass or ``generate``."""
    return {cache_key(): cache}


def cache_of(output: Any) -> Any:
    """The KV cache a forward pass returned."""
    return getattr(output, cache_key())


def unbounded_cache() -> Any:
    """An empty cache whose every layer keeps every slot: a sliding-window layer's own cache keeps only its
    last ``window - 1``, and generation after a cached prefix may need a few earlier ones
    (:func:`fewtune.backends.generation.continuation_inputs`)."""
    from transformers import DynamicCache

    return DynamicCache()


def layer_states(cache: Any) -> list[tuple[Any, Any]]:
    """Each layer's keys and values, ``[batch, kv_heads, slots, head_dim]``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def filled_cache(states: list[tuple[Any, Any]], config: Any) -> Any:
    """The cache a model builds for itself (``config``'s layer types: a sliding-window layer keeps its last
    ``window - 1`` slots), holding ``states`` (:func:`layer_states`)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=states, config=config)
