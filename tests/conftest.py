"""Shared fixtures. The model fixtures load the real embedded weights that the README's set-up command pulls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from pistar.models import weights
from pistar.models.base import Completion, Model

SMALL = "qwen2.5-coder-0.5b"


def require(name: str) -> None:
    if not weights.is_pulled(name):
        pytest.fail(f"model {name} is not on disk: run `pistar models pull {name}` (the set-up command does)")


@pytest.fixture(scope="session")
def small_model() -> Iterator[Any]:
    """The real 0.5B Qwen in llama.cpp, with 4 parallel slots, shared by every test that needs a model."""
    from pistar.models.embedded import EmbeddedModel

    require(SMALL)
    model = EmbeddedModel(SMALL, ctx=16384, parallel=4)
    yield model
    model.close()


class ScriptedModel(Model):
    """Replies with fixed texts in turn: a scripted policy for driving the loop with exact, even broken, output."""

    uri = "scripted"

    def __init__(self, replies: Sequence[str]):
        self.replies = list(replies)
        self.seen: list[list[dict[str, Any]]] = []

    async def complete(self, messages: list[dict[str, Any]], **_: Any) -> Completion:
        self.seen.append(messages)
        text = self.replies[min(len(self.seen) - 1, len(self.replies) - 1)]
        await asyncio.sleep(0)
        return Completion(text=text, prompt_tokens=10, completion_tokens=5, finish_reason="stop")
