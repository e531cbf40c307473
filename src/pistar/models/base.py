"""One interface for every model backend: async `complete(messages, schema=...)` returning exact tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass
class Completion:
    text: str
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    logprobs: list[float] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""  # "stop", "length", "error"
    latency_s: float = 0.0


def text_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten content parts to plain text for a model that cannot see: images become a short marker."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            pieces = [p.get("text", "") if p.get("type") == "text" else "[image]" for p in content]
            m = {**m, "content": "\n".join(pieces)}
        out.append(m)
    return out


class ModelError(RuntimeError):
    """The backend failed (server down, timeout after retries, out of context); the message says what to do."""


class ContextOverflow(ModelError):
    """The prompt no longer fits the model's context. Unlike a backend failure this is the agent's own doing (its
    history or its replies grew too long), so the loop ends the episode and scores it instead of excluding it."""


class Model(ABC):
    """A chat model. `schema` (a JSON schema) asks the backend to constrain decoding where it can."""

    uri: str = ""
    vision: bool = False  # whether images in messages are sent to the model
    sha256: str | None = None  # of the weights, when they are a local file

    @abstractmethod
    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Completion: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass

    def close(self) -> None:  # noqa: B027 - optional hook: stop an in-process server, free memory
        pass

    def info(self) -> dict[str, Any]:
        return {"uri": self.uri, "vision": self.vision, "sha256": self.sha256}
