"""The environment interface: gymnasium-style reset/step over pistar's language actions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from pistar.records import Action, Observation


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

    def expert_action(self) -> Action:
        """The built-in expert's next action, where the environment has one."""
        raise NotImplementedError(f"{self.id} has no expert policy")

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
