"""``fewtune`` with the main process's adapter save failing as on a full disk: the script
tests/test_distributed.py launches under ``accelerate launch`` (every process runs it; only rank 0 fails)."""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from fewtune.cli.commands import main
from fewtune.training import lora


def full_disk(*_: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


if __name__ == "__main__":
    if os.environ.get("RANK", "0") == "0":
        lora.Lora._save = full_disk  # type: ignore[method-assign]
    sys.argv = ["fewtune", *sys.argv[1:]]
    main()
