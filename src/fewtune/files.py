"""Small helpers on files that every layer may use."""

from __future__ import annotations

from pathlib import Path


def file_sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
