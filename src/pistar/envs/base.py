"""The environment interface: gymnasium-style reset/step over pistar's language actions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from pistar.records import Action, Observation


def steps(n: int, word: str) -> str:
    """'1 step left', '3 steps north': how every text view says a distance."""
    return f"{n} step{'' if n == 1 else 's'} {word}"


def compass(dx: int, dy: int) -> list[str]:
    """A map offset (y grows southwards) as phrases, north/south first: ['2 steps north', '1 step east']."""
    parts = []
    if dy:
        parts.append(steps(abs(dy), "north" if dy < 0 else "south"))
    if dx:
        parts.append(steps(abs(dx), "west" if dx < 0 else "east"))
    return parts


@dataclass
class StepResult:
    observation: Observation
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Env(ABC):
    """An adapter around a real environment package.

    Actions arrive as `Action(kind="act", name=...)` where `name` is one of the observation's
    `extras["valid_actions"]`; the adapter turns it into the package's own action.
    """

    id: str = ""
    accepts_answers: bool = False  # True where the episode is played by answering (function calling, QA)

    @abstractmethod
    def reset(self, seed: int) -> Observation: ...

    @abstractmethod
    def step(self, action: Action) -> StepResult: ...

    @abstractmethod
    def describe_actions(self) -> str:
        """The action space in words, for the system prompt."""

    @property
    @abstractmethod
    def success(self) -> bool:
        """Whether the episode so far counts as solved, judged by the environment itself."""

    @property
    def progress(self) -> float:
        """How far the episode got, in [0, 1] (BALROG's progress): score over max score where the game keeps one."""
        return float(self.success)

    def tools(self) -> list[Any]:
        """Tools this environment's tasks are meant to be solved with (a QA corpus's search); every agent gets them."""
        return []

    def expert_action(self) -> Action:
        """The built-in expert's next action, where the environment has one."""
        raise NotImplementedError(f"{self.id} has no expert policy")

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
