"""Real servers on loopback for tests: uvicorn in a thread, on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run the ASGI ``app`` with uvicorn on 127.0.0.1 until the block ends; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def make_adapter(tokenizer: Any, folder: Path, seed: int) -> Path:
    """A random (non-zero) LoRA adapter for the tiny model, saved in peft's layout: it changes outputs."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from tiny import tiny_model

    model = tiny_model(tokenizer, sliding_window=512)  # seeds the base weights itself
    torch.manual_seed(seed)  # so the adapter's seed comes after it, or every seed gives the same adapter
    config = LoraConfig(
        r=8,
        lora_alpha=32,
        target_modules=["q_proj", "v_proj", "o_proj"],
        init_lora_weights=False,  # random A and B: the adapter changes the outputs
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        get_peft_model(model, config).save_pretrained(str(folder))
    return folder
