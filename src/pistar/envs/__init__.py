"""Environment adapters. `make_env("babyai/GoToLocal")` builds one from its id."""

from __future__ import annotations

from pistar.envs.base import Env, StepResult


def make_env(env_id: str, **kwargs: object) -> Env:
    """Build an environment from an id of the form `family/task`."""
    family, _, task = env_id.partition("/")
    if family == "babyai":
        from pistar.envs.babyai import BabyAIEnv

        return BabyAIEnv(task or "GoToLocal", **kwargs)
    if family == "textworld":
        from pistar.envs.textworld import TextWorldEnv

        return TextWorldEnv(task or "coin_collector", **kwargs)
    if family == "crafter":
        if task not in ("", "default"):
            raise ValueError(f"unknown Crafter task {task!r}: Crafter has one world, crafter/default")
        from pistar.envs.crafter import CrafterEnv

        return CrafterEnv(**kwargs)
    if family == "minihack":
        from pistar.envs.minihack import MiniHackEnv

        return MiniHackEnv(task or "MazeWalk-9x9", **kwargs)
    if family == "miniwob":
        from pistar.envs.miniwob import MiniWoBEnv

        return MiniWoBEnv(task or "click-button", **kwargs)
    if family == "toolqa":
        from pistar.envs.toolqa import ToolQAEnv

        return ToolQAEnv(task or "mixed", **kwargs)
    if family == "bfcl":
        from pistar.envs.bfcl import BFCLEnv

        return BFCLEnv(task or "simple", **kwargs)
    raise ValueError(
        f"unknown environment {env_id!r}: expected babyai/<Level> (e.g. babyai/GoToLocal), "
        "textworld/<coin_collector|treasure_hunter|cooking|simple>, crafter/default, minihack/<Task> "
        "(e.g. minihack/MazeWalk-9x9), miniwob/<task> (e.g. miniwob/click-button), bfcl/<category> "
        "or toolqa/<arithmetic|data|units|lookup|mixed>"
    )


__all__ = ["Env", "StepResult", "make_env"]
