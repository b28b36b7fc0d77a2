"""The HTTP client library the ``openai`` client brings: ``httpx2`` (its newer releases) or ``httpx``."""

from __future__ import annotations

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older openai releases depend on httpx
    import httpx  # type: ignore[no-redef]

__all__ = ["httpx"]
