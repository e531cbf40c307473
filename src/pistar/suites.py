"""Suites: named sets of (environment, seeds, step limit) that an evaluation plays, built in or from YAML.

A user suite file:

    name: my-suite
    tasks:
      - env: babyai/GoToLocal
        seeds: 10            # ten seeds from `seed_start` (default 0), or an explicit list [3, 7, 11]
        max_steps: 64
      - env: textworld/coin_collector
        seeds: [0, 1, 2]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pistar.configs import first_error


@dataclass(frozen=True)
class Episode:
    env_id: str
    seed: int
    max_steps: int


@dataclass
class Suite:
    name: str
    tasks: list[TaskSpec] = field(default_factory=list)

    def episodes(self) -> list[Episode]:
        return [Episode(t.env, s, t.max_steps) for t in self.tasks for s in t.seed_list()]

    def with_seeds(self, n: int, start: int = 0) -> Suite:
        """The same tasks on seeds start … start+n-1: a quick look, or a bigger sample."""
        tasks = [t.model_copy(update={"seeds": n, "seed_start": start}) for t in self.tasks]
        return Suite(self.name, tasks)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tasks": [t.model_dump() for t in self.tasks]}


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    env: str
    seeds: int | list[int] = 10
    seed_start: int = 0
    max_steps: int = Field(64, ge=1)

    @field_validator("seeds")
    @classmethod
    def _positive(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("seeds must be at least 1")
        return v

    def seed_list(self) -> list[int]:
        if isinstance(self.seeds, list):
            return list(dict.fromkeys(self.seeds))
        return list(range(self.seed_start, self.seed_start + self.seeds))


class _SuiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    tasks: list[TaskSpec] = Field(min_length=1)


def _tasks(envs: list[str], seeds: int, max_steps: int) -> list[TaskSpec]:
    return [TaskSpec(env=e, seeds=seeds, max_steps=max_steps) for e in envs]


def _miniwob_tasks() -> list[str]:
    from pistar.envs.miniwob import MiniWoBEnv

    return [f"miniwob/{t}" for t in MiniWoBEnv.EXPERT_TASKS]


def builtin(name: str) -> Suite:
    """The suites of the field, each small enough to run on a laptop and big enough to compare agents."""
    if name == "babyai":  # BALROG's five BabyAI-Text task kinds
        kinds = ["goto", "pickup", "open", "putnext", "pick_up_seq_go_to"]
        return Suite(name, _tasks([f"babyai/MixedTrainLocal/{k}" for k in kinds], 10, 64))
    if name == "miniwob":
        return Suite(name, _tasks(_miniwob_tasks(), 5, 10))
    if name == "textworld":
        kinds = ["coin_collector", "treasure_hunter", "cooking", "simple"]
        return Suite(name, _tasks([f"textworld/{k}" for k in kinds], 5, 50))
    if name == "crafter":
        return Suite(name, _tasks(["crafter/default"], 5, 200))
    if name == "minihack":
        tasks = ["MazeWalk-9x9", "MazeWalk-15x15", "Corridor-R2", "Corridor-R3", "Quest-Easy"]
        return Suite(name, _tasks([f"minihack/{t}" for t in tasks], 5, 100))
    if name == "bfcl":
        cats = ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple"]
        return Suite(name, _tasks([f"bfcl/{c}" for c in cats], 10, 3))
    if name == "toolqa":
        kinds = ["arithmetic", "data", "units", "lookup"]
        return Suite(name, _tasks([f"toolqa/{k}" for k in kinds], 10, 8))
    raise KeyError(name)


BUILTIN = ("babyai", "miniwob", "textworld", "crafter", "minihack", "bfcl", "toolqa")


def load_suite(spec: str) -> Suite:
    """A built-in suite by name, or a YAML file. Errors are one line saying what is wrong and where."""
    if spec in BUILTIN:
        return builtin(spec)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"unknown suite {spec!r}: use one of {', '.join(BUILTIN)} or the path of a YAML suite file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        parsed = _SuiteFile.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{path}: {first_error(e, _SuiteFile)}") from None
    return Suite(parsed.name, parsed.tasks)
