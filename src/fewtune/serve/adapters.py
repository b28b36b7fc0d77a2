"""The base model and its LoRA adapters as one peft model, switched per batch and never merged.

peft injects each adapter's ``A``/``B`` matrices next to the base layers it targets; ``set_adapter`` picks
which one runs and ``disable_adapter()`` runs the bare base, so one copy of the base weights serves every
adapter. Loading or dropping an adapter changes only its own small modules.

Everything that touches the model runs on the engine's worker thread (torch is not re-entrant); only the
name table (:meth:`AdapterSet.names`, :meth:`AdapterSet.has`) is read from request threads, under a lock.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewtune.errors import ModelError

if TYPE_CHECKING:
    from fewtune.backends.hf import HFBackend

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""What peft's ``save_pretrained`` writes and vLLM / LoRAX load (``adapter_model.bin`` also loads)."""


def check_adapter_folder(path: str | Path) -> Path:
    """``path`` as a folder holding a peft adapter; a one-line :class:`ModelError` if it is not one."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such adapter folder")
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{folder}: not a peft adapter folder (no adapter_config.json)")
    if not any((folder / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ModelError(f"{folder}: not a peft adapter folder (no adapter_model.safetensors)")
    return folder


def find_adapters(run_dir: Path) -> dict[str, Path]:
    """Every adapter folder under ``run_dir/adapters``, named by its folder name (``lora-n200``)."""
    root = run_dir / "adapters"
    if not root.is_dir():
        return {}
    return {
        folder.name: folder
        for folder in sorted(root.iterdir())
        if folder.is_dir() and (folder / "adapter_config.json").is_file()
    }


class AdapterSet:
    """A base model and the adapters loaded on it, with one :class:`HFBackend` per adapter.

    Each adapter (and the base) keeps its own backend because a backend caches the KV of its last shared
    prefix, and that cache is only valid for the weights that computed it.
    """

    def __init__(self, model: Any, tokenizer: Any, base_name: str, source: str = "") -> None:
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.source = source
        self._model = model
        self._peft = False  # True once an adapter was loaded: _model is then a PeftModel
        self._paths: dict[str, str] = {}
        self._backends: dict[str | None, HFBackend] = {}
        self._lock = threading.Lock()

    # -- read from any thread -------------------------------------------------------------------------
    def names(self) -> dict[str, str]:
        """Loaded adapters: name -> the folder it came from."""
        with self._lock:
            return dict(self._paths)

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._paths

    # -- worker thread only ---------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        return self._model

    def load(self, name: str, path: str | Path) -> None:
        """Load the peft adapter at ``path`` as ``name`` (a :class:`ModelError` if it does not fit)."""
        if name == self.base_name:
            raise ModelError(f"{name}: the base model is served under this name; pick another adapter name")
        if self.has(name):
            raise ModelError(f"{name}: an adapter of this name is already loaded (unload it first)")
        folder = check_adapter_folder(path)
        from peft import PeftModel

        try:
            with warnings.catch_warnings():  # peft calls transformers APIs deprecated in v5; not ours
                warnings.simplefilter("ignore", FutureWarning)
                if self._peft:
                    self._model.load_adapter(str(folder), adapter_name=name)
                else:
                    self._model = PeftModel.from_pretrained(self._model, str(folder), adapter_name=name)
                    self._peft = True
                    self._backends.clear()  # they wrap the bare model object
        except Exception as err:  # peft and torch raise many types for a mismatched adapter
            self._discard(name)
            raise ModelError(
                f"{folder}: could not load adapter on {self.base_name} ({type(err).__name__}: {err})"
            ) from None
        self._model.eval()
        with self._lock:
            self._paths[name] = str(folder)

    def unload(self, name: str) -> None:
        """Drop adapter ``name``; the last one gone, the bare base model is unwrapped again."""
        if not self.has(name):
            raise ModelError(f"{name}: no adapter of this name is loaded")
        with self._lock:
            del self._paths[name]
        self._discard(name)

    def _discard(self, name: str) -> None:
        self._backends.pop(name, None)
        if not self._peft or name not in self._model.peft_config:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "adapter X was active which is now deleted"
            if len(self._model.peft_config) == 1:
                # peft cannot run (or disable) a PeftModel without adapters; unload() removes the LoRA
                # modules without merging them, giving back the bare base model.
                self._model = self._model.unload()
                self._peft = False
                self._backends.clear()
            else:
                self._model.delete_adapter(name)

    def _backend(self, adapter: str | None) -> HFBackend:
        from fewtune.backends.hf import HFBackend

        backend = self._backends.get(adapter)
        if backend is None:
            backend = HFBackend(
                self._model, self.tokenizer, name=adapter or self.base_name, source=self.source
            )
            self._backends[adapter] = backend
        return backend

    @contextmanager
    def use(self, adapter: str | None) -> Iterator[HFBackend]:
        """The backend that runs ``adapter`` (None: the bare base), with that adapter switched on."""
        if adapter is not None:
            if adapter not in self._paths:
                raise ModelError(f"{adapter}: no adapter of this name is loaded")
            self._model.set_adapter(adapter)
            yield self._backend(adapter)
        elif self._peft:
            with self._model.disable_adapter():
                yield self._backend(None)
        else:
            yield self._backend(None)
