"""Evaluation throughput with the embedded model: episodes per minute at concurrency 1 and 4, how busy the model
server is kept, and how close the harness comes to the raw backend on the very same prompts.

1. `pistar eval` of BabyAI GoToLocal at concurrency 1, then 4, through `evaluate()` (env, loop, store, files).
   Every model request is recorded (the exact prompt, schema and sampling seed) with its start and end time;
   the server's busy fraction is the share of wall time with at least one request in flight.
2. The recorded requests of the concurrency-4 run are replayed straight into the same backend, 4 at a time,
   with no environment, loop or store: the raw throughput on the same prompts.
Printed: episodes/min at 1 and 4, their ratio, busy fractions, and harness requests/s ÷ raw requests/s.
Run it alone: llama.cpp slows down many times over when another process shares the 2 cores.

    .venv/bin/python bench/eval_throughput.py [--model embedded:qwen2.5-coder-0.5b] [--episodes 8] [--steps 6]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from pistar.evaluate import AgentSpec, evaluate, stop_on_sigterm
from pistar.models import load_model
from pistar.models.base import Completion, Model
from pistar.suites import Suite, TaskSpec


class Recorded(Model):
    """The real model, with every request and its time span written down."""

    def __init__(self, inner: Model) -> None:
        self.inner, self.uri, self.vision, self.sha256 = inner, inner.uri, inner.vision, inner.sha256
        self.requests: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
        self.spans: list[tuple[float, float]] = []

    async def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> Completion:
        start = time.perf_counter()
        try:
            return await self.inner.complete(messages, **kwargs)
        finally:
            self.spans.append((start, time.perf_counter()))
            self.requests.append((messages, kwargs))


def busy_fraction(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Share of [start, end] covered by at least one request."""
    covered, reach = 0.0, start
    for a, b in sorted(spans):
        a, b = max(a, reach), min(b, end)
        if b > a:
            covered += b - a
            reach = b
    return covered / (end - start)


async def eval_at(model: Model, concurrency: int, episodes: int, steps: int) -> tuple[float, Recorded, int]:
    recorded = Recorded(model)
    suite = Suite("bench", [TaskSpec(env="babyai/GoToLocal", seeds=episodes, max_steps=steps)])
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        rows = await evaluate(suite, AgentSpec(model=model.uri), Path(out), concurrency=concurrency, model=recorded)
        wall = time.perf_counter() - t0
    recorded.busy = busy_fraction(recorded.spans, t0, t0 + wall)  # type: ignore[attr-defined]
    return wall, recorded, len(rows)


async def replay(model: Model, requests: list[tuple[list[dict[str, Any]], dict[str, Any]]], concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> None:
        async with gate:
            await model.complete(messages, **kwargs)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(m, k) for m, k in requests))
    return time.perf_counter() - t0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:qwen2.5-coder-0.5b?parallel=4")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    model = load_model(args.model)
    await model.complete([{"role": "user", "content": "hi"}], max_tokens=4)  # warm up
    wall1, rec1, n1 = await eval_at(model, 1, args.episodes, args.steps)
    wall4, rec4, n4 = await eval_at(model, 4, args.episodes, args.steps)
    raw4 = await replay(model, rec4.requests, 4)
    await model.aclose()
    model.close()

    epm1, epm4 = 60 * n1 / wall1, 60 * n4 / wall4
    rps4, raw_rps = len(rec4.requests) / wall4, len(rec4.requests) / raw4
    print(f"model {args.model}: BabyAI GoToLocal, {args.episodes} episodes of at most {args.steps} steps")
    print(f"concurrency 1: {epm1:6.2f} episodes/min  ({len(rec1.requests)} model calls, server busy {rec1.busy:.0%})")
    print(f"concurrency 4: {epm4:6.2f} episodes/min  ({len(rec4.requests)} model calls, server busy {rec4.busy:.0%})")
    print(f"speed-up of concurrency 4 over 1: {epm4 / epm1:.2f}x")
    print(f"raw backend, same {len(rec4.requests)} requests 4 at a time: {raw_rps:.3f} requests/s")
    print(f"harness at concurrency 4: {rps4:.3f} requests/s = {rps4 / raw_rps:.2f} of the raw backend's throughput")


if __name__ == "__main__":
    stop_on_sigterm()  # a killed bench closes its browsers and model server; finished episodes are kept
    asyncio.run(main())
