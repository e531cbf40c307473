"""Configs from a YAML file, inline `key=value` pairs, or both (`file.yaml,key=value`): for agents and trainers.

Errors are one line naming the key, so a typo in a long experiment config costs seconds, not a run.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

C = TypeVar("C", bound=BaseModel)


def load_config(spec: str, cls: type[C], what: str = "config") -> C:
    first, _, rest = spec.partition(",")
    is_file = first.endswith((".yaml", ".yml")) or Path(first).is_file()
    data: dict[str, Any] = {}
    try:
        if is_file:
            path = Path(first)
            if not path.exists():
                raise ValueError(f"{what} {first!r} does not exist")
            data = yaml.safe_load(path.read_text()) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{what} {first!r}: expected a mapping of keys to values")
            if "name" in cls.model_fields:
                data.setdefault("name", path.stem)
        overrides = rest if is_file else spec
        for part in filter(None, overrides.split(",")):
            key, eq, value = part.partition("=")
            if not eq:
                raise ValueError(f"{what} {spec!r}: expected key=value pairs or a YAML file")
            data[key.strip()] = yaml.safe_load(value)
        if "name" in cls.model_fields:
            data.setdefault("name", spec)
        return cls.model_validate(data)
    except yaml.YAMLError as e:
        raise ValueError(f"{what} {spec!r}: not valid YAML: {str(e).splitlines()[0]}") from None
    except ValidationError as e:
        raise ValueError(f"{what} {spec!r}: {first_error(e, cls)}") from None


def first_error(e: ValidationError, cls: type[BaseModel]) -> str:
    """`where: what` for the first error; an unknown key names the known keys it is closest to (a renamed key,
    a typo), since pydantic's own words for it ("Extra inputs are not permitted") do not say what to write."""
    err = e.errors()[0]
    where = ".".join(map(str, err["loc"])) or "top level"
    if err["type"] != "extra_forbidden":
        return f"{where}: {err['msg']}"
    close = difflib.get_close_matches(str(err["loc"][-1]), sorted(_keys(cls)), n=2)
    return f"{where}: unknown key" + (f", did you mean {' or '.join(map(repr, close))}?" if close else "")


def _keys(cls: type[BaseModel]) -> set[str]:
    """The field names of cls and of the models nested in its fields (a suite's tasks, say)."""
    keys, seen, todo = set(), set(), [cls]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        keys |= set(model.model_fields)
        for field in model.model_fields.values():
            todo += [t for t in _types(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
    return keys


def _types(annotation: Any) -> list[Any]:
    return [annotation, *(t for arg in typing.get_args(annotation) for t in _types(arg))]
