"""A run's folder and its record, for every task: the one module that writes results.json.

:meth:`RunSession.open` applies the run folder's rules (an ``--overwrite`` clears the earlier run's files, a
``--resume`` keeps its finished methods once its settings and data files match, see
:mod:`~fewtune.results.resume`) and writes the record's header; :meth:`RunSession.record` appends each
finished method row, its predictions and what is derived from the rows (classification's learning curves),
rewriting results.json atomically;
:meth:`RunSession.running` records how the run ended (complete, interrupted, failed with its error). So an
interrupted or crashed run leaves its finished parts readable and resumable.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fewtune.config import RunConfig
from fewtune.results.record import Answerers, MethodRow
from fewtune.results.resume import resume_results
from fewtune.results.run_record import SCHEMA_VERSION, MethodResult, RunRecord
from fewtune.results.store import RunStore, clear_run
from fewtune.run.events import RunEvents
from fewtune.version import __version__

# Fields of an earlier run's record that a resumed run says again or that are no longer true.
STALE_ON_RESUME = ("warnings", "error", "finished_at")
Derive = Callable[[list[MethodRow]], Mapping[str, Any]]
"""Top-level fields recomputed from the method rows after each one (classification: ``curves``)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunSession:
    """The record of one run in its folder; every write of results.json goes through here."""

    def __init__(self, store: RunStore, run: RunRecord, events: RunEvents) -> None:
        self.store, self.run, self.events = store, run, events
        self.answerers: Answerers | None = None
        self.derive: Derive | None = None

    @classmethod
    def open(
        cls,
        cfg: RunConfig,
        header: Mapping[str, Any],
        events: RunEvents,
        *,
        overwrite: bool = False,
        resume: bool = False,
    ) -> RunSession:
        """Start (or, with ``resume``, continue) the run in ``cfg.out``. ``header`` holds the task block,
        the dataset's report with the data files' hashes, and what else the task records up front."""
        assert cfg.out, "the plan resolves the run folder"
        store = RunStore(cfg.out)
        if overwrite:
            clear_run(store.folder)
        dataset = header["dataset"]
        files = {k: dataset.get(k) for k in ("data_sha256", "test_sha256")}
        earlier = None
        if resume and store.results_path.is_file():
            earlier = resume_results(store, cfg.to_dict(), files)
        hardware = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
        if earlier is None:
            store.written("config.yaml")
            cfg.save(store.folder / "config.yaml")
            store.predictions_path.unlink(missing_ok=True)
            results: dict[str, Any] = {
                "schema_version": SCHEMA_VERSION,
                "fewtune_version": __version__,
                "task": header["task"],
                "status": "running",
                "started_at": _now(),
                "model": cfg.model,
                "seed": cfg.seed,
                **{k: v for k, v in header.items() if k != "task"},
                "hardware": hardware,
                "methods": [],
            }
        else:  # keep what the earlier run finished; the data checks run again
            results = {**earlier, **{k: v for k, v in header.items() if k != "task"}, "hardware": hardware}
            for stale in STALE_ON_RESUME:
                results.pop(stale, None)
            events.info(f"Resuming: {len(results['methods'])} finished methods are kept and skipped")
        session = cls(store, RunRecord.from_dict(results, store.results_path), events)
        session.write()
        return session

    @property
    def folder(self) -> Path:
        return self.store.folder

    @property
    def results(self) -> dict[str, Any]:
        """The record's other top-level fields (model, dataset, hardware, ...), for a job to fill in."""
        return self.run.header

    @property
    def methods(self) -> list[MethodRow]:
        """The finished rows, as results.json holds them (copies)."""
        return [m.to_dict() for m in self.run.methods]

    @property
    def done(self) -> set[str]:
        """Names of the finished rows (a resumed run starts with the earlier run's)."""
        return {m.name for m in self.run.methods}

    def write(self) -> None:
        self.store.write_results(self.run.to_dict())

    def record(self, row: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> None:
        """A finished method: its row (tagged with the model that answered it; ``row`` itself is left as
        it was), its predictions."""
        row = dict(row)
        if self.answerers is not None:
            self.answerers.tag(row)
        # The row comes from fewtune's own typed writers: it is checked when read back (resume, report).
        where = str(self.store.results_path)
        self.run.methods.append(MethodResult.from_dict(row, where, self.run.task_name, check=False))
        if self.derive is not None:
            self.results.update(self.derive(self.methods))
        self.store.append_predictions(dict(line) for line in predictions)
        self.write()
        self.events.finished(row)

    def warn(self, message: str) -> None:
        """A run-level warning, kept in results.json and shown."""
        self.results.setdefault("warnings", []).append(message)
        self.events.warn(message)

    def warn_data(self, message: str) -> None:
        """A warning about the data, kept in the dataset block and shown."""
        self.results["dataset"].setdefault("warnings", []).append(message)
        self.events.warn(message)

    @contextlib.contextmanager
    def running(self) -> Iterator[RunSession]:
        """Record how the run ends: complete, interrupted (Ctrl-C, SIGTERM) or failed with its error."""
        self.run.status = "running"
        try:
            yield self
            self.run.status = "complete"
        except KeyboardInterrupt:
            self.run.status = "interrupted"
            raise
        except BaseException as err:
            self.run.status = "failed"
            self.results["error"] = f"{type(err).__name__}: {err}"
            raise
        finally:
            self.results["finished_at"] = _now()
            self.write()
