"""A run's measured methods, rebuilt from its folder so that the server can answer as each one did.

Classification rows become :class:`~fewtune.serve.arms.MethodPrompt` (labels scored by log-likelihood),
the other tasks' rows :class:`~fewtune.serve.arms.OutputMethod` (generated with the row's template, demos,
new-token cap and schema, then parsed by the task). Left out: the no-LLM reference (its classifier is not
saved with the run), rows whose demos were chosen per input (they need the demo pool and the embedder),
and rows whose adapter is not loaded on this server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewtune.data.load import Example
from fewtune.methods import Method as MethodKind
from fewtune.prompts.template import DEFAULT_TASK, OutputTemplate, PromptTemplate
from fewtune.results.rows import Row, Run
from fewtune.serve.arms import MethodPrompt, OutputMethod
from fewtune.tasks.base import Task

Method = MethodPrompt | OutputMethod


def _config(run_dir: Path) -> dict[str, Any]:
    import yaml

    try:
        values = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return values if isinstance(values, dict) else {}


def _adapter_of(row: Row, adapters: dict[str, Path]) -> tuple[bool, str | None]:
    """(servable, adapter name): by path, else by folder name (a copied or moved run folder keeps its
    adapters/ names); a trained row whose adapter is not loaded is not servable."""
    if not row.adapter_path:
        return True, None
    saved = Path(row.adapter_path)
    by_path = {str(path.resolve()): name for name, path in adapters.items()}
    name = by_path.get(str(saved.resolve())) or (saved.name if saved.name in adapters else None)
    return name is not None, name


def methods_of_run(run_dir: Path, adapters: dict[str, Path]) -> dict[str, Method]:
    """Every servable method of the run in ``run_dir``, by name; ``adapters`` maps the server's adapter
    names to their folders."""
    from fewtune.results.run_folder import read_run
    from fewtune.tasks.registry import task_of_record

    results, _ = read_run(run_dir)
    instruction = (_config(run_dir).get("prompt") or {}).get("instruction")
    found = task_of_record(results.get("task") or {})
    task = found if isinstance(found, Task) else None  # None: classification, scored over its labels
    labels = tuple(results.get("labels") or ())
    label_template = PromptTemplate(
        labels, instruction or DEFAULT_TASK, dict(results.get("label_names") or {})
    )
    methods: dict[str, Method] = {}
    for row in Run(results).rows:
        if row.method == MethodKind.REFERENCE or row.demo_selection == "nearest":
            continue
        servable, adapter = _adapter_of(row, adapters)
        if not servable:
            continue
        trained = bool(row.train_examples)
        if task is None:
            bias = row.label_bias
            methods[row.name] = MethodPrompt(
                name=row.name,
                template=label_template,
                demos=tuple(Example(d["text"], d["label"]) for d in row.demos),
                label_bias=tuple(float(bias[label]) for label in labels) if bias else None,
                adapter=adapter,
                trained=trained,
            )
            continue
        text = instruction or task.default_instruction
        # An adapter's prompts carry the instruction line only (it learned the format from its targets).
        template = OutputTemplate(text, "" if trained else task.output_format())
        schema = getattr(task, "schema", None) if row.constrained else None
        methods[row.name] = OutputMethod(
            name=row.name,
            template=template,
            demos=tuple(Example(d["text"], d["output"]) for d in row.demos),
            adapter=adapter,
            trained=trained,
            task=task,
            max_tokens=int(row.max_new_tokens or 256),
            schema=schema,
        )
    return methods
