"""``fewtune run``'s setting flags, made from the config dataclasses: each field's type, default and
docstring become its option, so a new setting is written once (in :mod:`fewtune.config`).

A flag is the field's name with dashes (``max_test`` -> ``--max-test``), except where the name alone would
be ambiguous across sections (:data:`FLAG_NAMES`). Lists are comma-separated on the command line.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from functools import cache
from typing import Annotated, Any

import typer

from fewtune.config import _SECTIONS, TRAINING_SECTION, RunConfig
from fewtune.errors import ConfigError

# (section, field) -> flag, where the field's own name would clash or mislead.
FLAG_NAMES = {
    (TRAINING_SECTION, "r"): "lora-r",
    (TRAINING_SECTION, "alpha"): "lora-alpha",
    (TRAINING_SECTION, "dropout"): "lora-dropout",
    ("eval", "batch_size"): "eval-batch-size",
    (TRAINING_SECTION, "target_modules"): "lora-target-modules",
    ("hosted", "endpoint"): "hosted-endpoint",
    ("hosted", "n_epochs"): "hosted-epochs",
    ("hosted", "batch_size"): "hosted-batch-size",
    ("hosted", "learning_rate_multiplier"): "hosted-lr-multiplier",
    ("hosted", "suffix"): "hosted-suffix",
    ("hosted", "poll_seconds"): "hosted-poll-seconds",
    ("hosted", "max_wait_hours"): "hosted-max-wait-hours",
}
# Fields with no flag: set them in a --config file.
NO_FLAG: set[tuple[str, str]] = set()
# Extra spellings: --target-field names the same field as --label-field.
ALIASES = {("data", "label_field"): ("--target-field",)}


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal after its annotation), on one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def ints(value: str | None, option: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"{option} takes comma-separated whole numbers, e.g. 0,4,8; got {value!r}"
        ) from None


def names(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def label_names(value: str | None) -> dict[str, str] | str | None:
    """``"DESC=description,NUM=number"`` -> ``{"DESC": "description", "NUM": "number"}``; ``auto`` as is."""
    if value is None or value.strip() == "auto":
        return None if value is None else "auto"
    parsed = {}
    for pair in (p for p in value.split(",") if p.strip()):
        code, sep, name = pair.partition("=")
        if not sep or not code.strip() or not name.strip():
            raise ConfigError(
                f"--label-names takes CODE=name pairs, e.g. DESC=description,NUM=number (or auto); "
                f"got {pair.strip()!r}"
            )
        parsed[code.strip()] = name.strip()
    return parsed


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _shown_default(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    if value is None:
        return ""
    return str(value)


def _kind(annotation: Any) -> tuple[type, Callable[[Any, str], Any]]:
    """The command-line type of a field and how its text becomes the config value."""
    hint = annotation
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union) and len(args) == 1:
        hint, origin = args[0], typing.get_origin(args[0])
    if origin is list:
        item = typing.get_args(hint)[0]
        return str, (lambda v, flag: ints(v, flag)) if item is int else (lambda v, flag: names(v))
    if origin in (types.UnionType, typing.Union):  # label names: a mapping or "auto"
        return str, lambda v, flag: label_names(v)
    if hint in (int, float, bool, str):
        return hint, lambda v, flag: v
    raise TypeError(f"no command-line form for {annotation!r}")


def setting_options() -> list[tuple[str, str, str, inspect.Parameter, Callable[[Any, str], Any]]]:
    """(section, field, flag, typer parameter, converter) for every settable field."""
    hints = {name: typing.get_type_hints(cls) for name, cls in _SECTIONS.items()}
    hints["run"] = typing.get_type_hints(RunConfig)
    classes: dict[str, type] = {"run": RunConfig, **_SECTIONS}
    options = []
    for section, cls in classes.items():
        docs = field_docs(cls)
        for f in fields(cls):
            if (section == "run" and f.name in _SECTIONS) or (section, f.name) in NO_FLAG:
                continue
            flag = "--" + FLAG_NAMES.get((section, f.name), f.name.replace("_", "-"))
            kind, convert = _kind(hints[section][f.name])
            default = _shown_default(_default(f))
            # Rich reads [..] as markup: the backslash keeps the default visible.
            help_text = docs.get(f.name, "").replace("``", "`") + (
                f" \\[default: {default}]" if default else ""
            )
            spellings = (
                (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag, *ALIASES.get((section, f.name), ()))
            )
            parameter = inspect.Parameter(
                f"{section}__{f.name}",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    kind | None, typer.Option(*spellings, help=help_text, show_default=False)
                ],
            )
            options.append((section, f.name, flag, parameter, convert))
    return options


def overrides(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Parsed flag values (None = not given) -> ``build_config``'s overrides, by section."""
    result: dict[str, dict[str, Any]] = {}
    for section, name, flag, parameter, convert in setting_options():
        value = values.get(parameter.name)
        result.setdefault(section, {})[name] = None if value is None else convert(value, flag)
    return result


def typed_options(cls: type) -> list[inspect.Parameter]:
    """Typer parameters for a flat settings dataclass (``fewtune serve``'s): a flag per field, named after
    it, with the field's own type (a list is a repeatable option, a bool a plain switch), default and
    docstring."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    parameters = []
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        parameters.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=_default(f),
                annotation=Annotated[hints[f.name], typer.Option(flag, help=docs.get(f.name, ""))],
            )
        )
    return parameters
