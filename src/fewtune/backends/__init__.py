"""Model backends behind one narrow interface (see :class:`fewtune.backends.base.Backend`).

Heavy modules (torch, transformers) are imported lazily, so ``fewtune --help`` stays fast.
"""

from fewtune.backends.base import Backend

__all__ = ["Backend"]
