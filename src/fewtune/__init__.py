"""fewtune: measure few-shot prompting against LoRA fine-tuning on your own labelled data.

As a library (docs/python-api.md)::

    import fewtune
    record = fewtune.run(settings)           # a RunConfig, a dict shaped like a config file, or a YAML path
    folder = fewtune.open_run(record.folder)  # .record, .predictions, .settings, .analysis, .recommendation

``import fewtune`` stays cheap: the pipeline, the models and the report load on the first call.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fewtune.run as _run_package
from fewtune.version import __version__

if TYPE_CHECKING:
    from fewtune.api import Settings
    from fewtune.results.run_folder import RunFolder
    from fewtune.results.run_record import RunRecord

__all__ = ["__version__", "open_run", "run"]


class _CallableRunPackage(types.ModuleType):
    """``fewtune.run`` is both the ``run/`` subpackage (``fewtune.run.pipeline``, ...) and the library's
    ``run`` function. A plain function bound to ``fewtune.run`` here would be overwritten by the subpackage
    the first time ``fewtune.run`` is imported, or would hide the subpackage if bound after, so the
    subpackage itself is made callable: whichever is imported first, ``fewtune.run(settings)`` and
    ``fewtune.run.pipeline`` both work."""

    def __call__(self, settings: Settings, **options: Any) -> RunRecord:
        """Run every method of ``settings`` and write the report; the run's record. Options and details:
        :func:`fewtune.api.run` (``backend_factory``, ``embedder_factory``, ``events``, ``overwrite``,
        ``resume``)."""
        from fewtune.api import run as run_settings

        return run_settings(settings, **options)


# A module's class may be replaced by a ModuleType subclass (Python >= 3.5); its attributes stay as they are.
_run_package.__class__ = _CallableRunPackage
if TYPE_CHECKING:  # what calling it does, for a type checker (which cannot see the class above)
    from fewtune.api import run as run
else:
    run = _run_package


def open_run(folder: str | Path) -> RunFolder:
    """An earlier run's folder, read through one typed reader: ``.record``, ``.predictions``, ``.settings``,
    ``.analysis`` and ``.recommendation`` (:class:`fewtune.results.run_folder.RunFolder`). A folder without a
    readable results.json is a one-line :class:`~fewtune.errors.FewtuneError` naming it."""
    from fewtune.api import open_run as open_folder

    return open_folder(folder)
