"""Reading settings from YAML: a config file's values coerced to their fields' types, with one-line errors
naming the file, the line or the key."""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from fewtune.errors import ConfigError

__all__ = ["NoAliasLoader", "_coerce", "key_lines", "load_config_file", "read_yaml"]


class NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases (``*name``): a few hundred bytes of nested aliases expand to
    gigabytes (a "billion laughs"), and files others write (runbook entries, policies) need none."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed here", event.start_mark
            )
        return super().compose_node(parent, index)


def _coerce(section: str, cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A config file's values as their fields' types: YAML reads ``5e-4`` as text and ``shots: 5`` as one
    number, both of which the settings accept (as 0.0005 and [5]); a value that is none of its field's
    types is a one-line error naming the key."""
    hints = get_type_hints(cls)
    return {
        key: _as_type(f"{section}.{key}", hints[key], value) if key in hints else value
        for key, value in values.items()
    }


def _as_type(where: str, hint: Any, value: Any) -> Any:
    options = (
        [a for a in get_args(hint) if a is not type(None)]
        if get_origin(hint) in (Union, UnionType)
        else [hint]
    )
    if value is None:
        if type(None) in get_args(hint):
            return None
        raise ConfigError(f"config {where}: needs a value")
    kind = options[0]
    if get_origin(kind) is list:
        (item,) = get_args(kind) or (Any,)
        items = value if isinstance(value, list) else [value]
        return [_as_type(where, item, v) for v in items]
    if any(isinstance(value, o) for o in options if isinstance(o, type) and o not in (int, float)):
        return value
    if kind in (int, float) and not isinstance(value, bool):
        try:
            number = float(value) if kind is float else int(value)
        except (TypeError, ValueError):
            pass
        else:
            if kind is float or not isinstance(value, float) or value.is_integer():
                return number
        raise ConfigError(
            f"config {where}: expected {'a number' if kind is float else 'a whole number'}, got {value!r}"
        )
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"config {where}: expected true or false, got {value!r}")
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind in (str, bool) and not isinstance(value, kind):
        raise ConfigError(f"config {where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def read_yaml(path: Path, what: str, aliases: bool = True) -> Any:
    """A YAML file's value; a missing, unreadable or invalid file is a one-line error naming it (and the
    line). ``what`` names the file for people ("config file", "policy file"); ``aliases=False`` refuses
    YAML aliases (:class:`NoAliasLoader`)."""
    try:
        text = path.read_text(encoding="utf-8")
        if not aliases:
            return yaml.load(text, Loader=NoAliasLoader)
        return yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise ConfigError(f"{path}: not a YAML text file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None


def key_lines(path: Path) -> dict[str, int]:
    """The 1-based line of each top-level key of a YAML mapping file (empty when it is not one), for errors
    about a key's value."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=NoAliasLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(key.value): key.start_mark.line + 1 for key, _ in node.value}


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    values = read_yaml(path, "config file")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return values
