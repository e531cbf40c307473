"""Configs from a YAML file, inline `key=value` pairs, or both (`file.yaml,key=value`): for agents and trainers.

Errors are one line naming the key, so a typo in a long experiment config costs seconds, not a run.
"""

from __future__ import annotations

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
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"])) or "config"
        raise ValueError(f"{what} {spec!r}: {where}: {err['msg']}") from None
