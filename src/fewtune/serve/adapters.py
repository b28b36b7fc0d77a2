"""The base model and its LoRA adapters as one peft model, switched per batch and never merged.

peft injects each adapter's ``A``/``B`` matrices next to the base layers it targets; ``set_adapter`` picks
which one runs and ``disable_adapter()`` runs the bare base, so one copy of the base weights serves every
adapter. Loading or dropping an adapter changes only its own small modules.

Everything that touches the model runs on the engine's worker thread (torch is not re-entrant); only the
name table (:meth:`AdapterSet.names`, :meth:`AdapterSet.has`) is read from request threads, under a lock.

What may be loaded (:class:`AdapterPolicy`): LoRA adapters in safetensors only (``adapter_model.bin`` is a
pickle, which can run code when read), of rank at most ``max_rank``, at most ``max_adapters`` at once; and,
through ``/v1/load_lora_adapter``, only from inside the server's adapter roots. A caller is told the same
sentence (:data:`NOT_LOADABLE`) whether a path is missing, outside the roots or not an adapter, so that the
endpoint cannot be used to learn what is on the server's disk.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewtune.errors import ModelError

if TYPE_CHECKING:
    from fewtune.backends.hf import HFBackend

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""What peft's ``save_pretrained`` writes and vLLM / LoRAX load; the only adapter files served."""
MAX_RANK = 64
MAX_ADAPTERS = 32
NOT_LOADABLE = (
    "lora_path: no loadable adapter there (this server loads LoRA adapters, as adapter_config.json and "
    "adapter_model.safetensors, only from inside its adapter folders)"
)
"""The one answer to a path that is missing, outside the roots or not a readable adapter."""


class TooLarge(ModelError):
    """An adapter over the server's rank limit, or one adapter too many."""


class DoesNotFit(ModelError):
    """An adapter peft could not load on the base model; ``public`` says so without the server's paths."""

    def __init__(self, message: str, public: str) -> None:
        super().__init__(message)
        self.public = public


def adapter_rank(config_file: Path) -> int:
    """The highest LoRA rank in a peft ``adapter_config.json`` (``r`` and any ``rank_pattern`` value)."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
        if str(config.get("peft_type", "LORA")).upper() != "LORA":
            raise ValueError("not LoRA")
        return max(int(r) for r in ranks)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise ModelError(f"{config_file}: not a readable LoRA adapter config") from None


def check_adapter_folder(path: str | Path, max_rank: int = MAX_RANK) -> Path:
    """``path`` as a folder holding a LoRA adapter in safetensors of rank at most ``max_rank``; a one-line
    :class:`ModelError` (:class:`TooLarge` for the rank) if it is not one."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such adapter folder")
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{folder}: not a peft adapter folder (no adapter_config.json)")
    if not (folder / "adapter_model.safetensors").is_file():
        why = "no adapter_model.safetensors"
        if (folder / "adapter_model.bin").exists():
            why += "; adapter_model.bin is not loaded: a pickle can run code when read"
        raise ModelError(f"{folder}: not a peft adapter folder ({why})")
    rank = adapter_rank(folder / "adapter_config.json")
    if rank > max_rank:
        raise TooLarge(f"LoRA rank {rank} is over this server's limit of {max_rank} (--max-lora-rank)")
    return folder


@dataclass(frozen=True)
class AdapterPolicy:
    """What may be loaded: the roots ``/v1/load_lora_adapter`` reads from (resolved), the highest LoRA
    rank and the most adapters loaded at once."""

    roots: tuple[Path, ...] = ()
    max_rank: int = MAX_RANK
    max_adapters: int = MAX_ADAPTERS

    @classmethod
    def of(cls, roots: Sequence[Path], **limits: int) -> AdapterPolicy:
        return cls(tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in roots)), **limits)

    def locate(self, given: str) -> Path:
        """The adapter folder a request's ``lora_path`` names: relative to a root, or absolute inside
        one (symbolic links followed, and the folder and its files must stay inside that root); a
        :class:`ModelError` saying :data:`NOT_LOADABLE` for anything else, or a :class:`TooLarge`."""
        try:
            path = Path(given)
            candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
            for candidate in candidates:
                folder = candidate.resolve()
                root = next((r for r in self.roots if folder.is_relative_to(r)), None)
                if root is None or not folder.is_dir():
                    continue
                if all((folder / name).resolve().is_relative_to(root) for name in ADAPTER_FILES):
                    try:
                        return check_adapter_folder(folder, self.max_rank)
                    except TooLarge:
                        raise
                    except ModelError:
                        continue
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, a link loop
            pass
        raise ModelError(NOT_LOADABLE)


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

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        base_name: str,
        source: str = "",
        policy: AdapterPolicy | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.source = source
        self.policy = policy or AdapterPolicy()
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
        if len(self.names()) >= self.policy.max_adapters:
            raise TooLarge(f"this server holds at most {self.policy.max_adapters} adapters; unload one first")
        folder = check_adapter_folder(path, self.policy.max_rank)
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
            raise DoesNotFit(
                f"{folder}: could not load adapter on {self.base_name} ({type(err).__name__}: {err})",
                f"lora_path: the adapter does not load on {self.base_name} ({type(err).__name__})",
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
