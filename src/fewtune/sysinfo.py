"""Peak memory of a phase: CUDA's allocator peak on a GPU, the process's resident high-water mark on CPU."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path
from typing import Any

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _rss_high_water() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Context manager; ``bytes`` is the phase's peak (process peak where the OS cannot reset it)."""

    def __init__(self, device: Any) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            # "5" resets the resident-set high-water mark (Linux >= 4.0).
            with contextlib.suppress(OSError):
                _CLEAR_REFS.write_text("5")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.bytes = int(torch.cuda.max_memory_allocated())
        else:
            self.bytes = _rss_high_water() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
