"""The KV cache's keyword in and out of a transformers forward pass.

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
