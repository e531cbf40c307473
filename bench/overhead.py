"""The agent loop's own cost per step, excluding model and environment time.

A model that answers instantly (a fixed valid action) drives the real BabyAI environment through `run_episode`;
the loop's cost is the episode's wall time minus the time inside the environment and inside the model. It is
printed in ms per step and as a ratio to one raw environment step and to one model call of the embedded default
(~1 s on 2 CPU threads), so it can be judged on a noisy machine.

    .venv/bin/python bench/overhead.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from pistar.agent import Budget, LLMAgent, run_episode
from pistar.envs.babyai import BabyAIEnv
from pistar.models.base import Completion, Model
from pistar.tools.calculator import calculator


class InstantModel(Model):
    uri = "instant"

    def __init__(self) -> None:
        self.time = 0.0

    async def complete(self, messages: list[dict[str, Any]], **_: Any) -> Completion:
        t = time.perf_counter()
        text = '{"thought": "keep turning to look around the room", "action": "turn left"}'
        c = Completion(text=text, prompt_tokens=600, completion_tokens=20, finish_reason="stop")
        self.time += time.perf_counter() - t
        return c


async def measure(agent: LLMAgent, steps: int, render: bool) -> tuple[float, float]:
    """(loop ms/step, env ms/step) over episodes of `steps` steps."""
    env = BabyAIEnv("GoToLocal", render=render, max_steps=steps + 1)
    t0 = time.perf_counter()
    traj = await run_episode(env, agent, 0, Budget(max_steps=steps))
    total = time.perf_counter() - t0
    model_time = agent.model.time
    env_time = sum(s.env_s for s in traj.steps)
    n = traj.num_steps
    return (total - env_time - model_time) / n * 1e3, env_time / n * 1e3


def raw_env_ms(steps: int) -> float:
    env = BabyAIEnv("GoToLocal", render=False, max_steps=steps + 1).core
    env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(0)
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    raw = raw_env_ms(args.steps)
    rows = [
        ("llm agent, text only", LLMAgent(InstantModel(), history=4), False),
        ("llm agent, text only, + tools in schema", LLMAgent(InstantModel(), [calculator], history=4), False),
        ("llm agent, with frames", LLMAgent(InstantModel(), history=4), True),
    ]
    print(f"raw minigrid step: {raw:.3f} ms")
    head = ("configuration", "loop ms/step", "env ms/step", "loop/raw step", "loop/1s call")
    print(f"{head[0]:42s} {head[1]:>12s} {head[2]:>12s} {head[3]:>14s} {head[4]:>13s}")
    for name, agent, render in rows:
        loop_ms, env_ms = asyncio.run(measure(agent, args.steps, render))
        print(f"{name:42s} {loop_ms:12.3f} {env_ms:12.3f} {loop_ms / raw:14.1f} {loop_ms / 1000:13.2%}")


if __name__ == "__main__":
    main()
