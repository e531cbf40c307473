"""Peak memory and time of one RL update pass over a whole episode, with and without activation checkpointing.

With the whole episode in the prompt (`history=24`) the RL update trains an episode as one row (`batch_logprobs`:
turn k+1 begins with turn k's prompt and reply), so a long episode is one long forward pass whose activations all
wait for the backward. `gradient_checkpointing=true` in a train config keeps only each layer's input and
recomputes the rest in the backward. The turns here are the BabyAI bot's calls in the longest of its episodes on
`--seeds` pickup seeds, rendered exactly as the agent sends them; the pass is the update's: forward over the row,
log-probs of every reply, backward into the LoRA. Each setting runs in a process of its own, so each peak
(`ru_maxrss`, minus its size after loading the model and a one-turn warm-up pass) is its own; the two settings
alternate `--repeats` times.

    .venv/bin/python bench/rl_memory.py [--model qwen2.5-coder-0.5b] [--seeds 4] [--repeats 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pistar.evaluate import AgentSpec, evaluate_shown
from pistar.suites import Suite, TaskSpec
from pistar.train.data import Filters, build


def longest_episode(seeds: int, work: Path) -> list[dict]:
    """The bot's calls (messages, reply) of its longest won episode, in step order."""
    from datasets import load_from_disk

    tasks = [TaskSpec(env="babyai/MixedTrainLocal/pickup", seeds=seeds, seed_start=1000, max_steps=24)]
    asyncio.run(evaluate_shown(Suite("rl_memory", tasks), AgentSpec(kind="teacher", history=24), work / "run", "bot"))
    build([work / "run"], work / "data", Filters(success=True), validation=0.0, pairs=False)
    rows = list(load_from_disk(str(work / "data" / "sft"))["train"])
    episodes: dict[str, list[dict]] = {}
    for row in rows:
        episodes.setdefault(row["episode"], []).append(row)
    calls = max(episodes.values(), key=len)
    return [{"messages": c["messages"], "completion": c["completion"]} for c in sorted(calls, key=lambda c: c["step"])]


def worker(model: str, calls_file: Path, checkpointing: bool) -> dict:
    """One update pass in this process; the peak it adds over the loaded model."""
    from pistar.train.model import TrainConfig, checkpoint_activations, load_policy, nested, tokenize_example
    from pistar.train.rl import batch_logprobs

    policy, tokenizer, _ = load_policy(TrainConfig(model=model))
    if checkpointing:
        checkpoint_activations(policy)
    policy.train()
    pairs = []
    for call in json.loads(calls_file.read_text()):
        ids, start = tokenize_example(tokenizer, call["messages"], call["completion"])
        pairs.append((ids[:start], ids[start:]))
    rows = nested([p + c for p, c in pairs])

    def update(pairs: list) -> None:
        out = batch_logprobs(policy, pairs)
        (-sum(logp.sum() for logp, _, _ in out) / sum(len(c) for _, c in pairs)).backward()

    update(pairs[:1])  # warm-up on the first turn alone: one-time allocations are not the episode's
    policy.zero_grad()
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    update(pairs)
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "turns": len(pairs),
        "rows": len(rows),
        "tokens": max(len(p) + len(c) for p, c in pairs),
        "extra_gb": (peak - loaded) / 2**20,
        "seconds": took,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--seeds", type=int, default=4, help="pickup seeds the bot plays; its longest episode is used")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--worker", choices=("plain", "checkpointed"), help=argparse.SUPPRESS)
    p.add_argument("--calls", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.calls, args.worker == "checkpointed")))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calls = longest_episode(args.seeds, work)
        (work / "calls.json").write_text(json.dumps(calls))
        results: dict[str, list[dict]] = {"plain": [], "checkpointed": []}
        for _ in range(args.repeats):
            for mode in results:
                cmd = [sys.executable, __file__, "--worker", mode, "--calls", str(work / "calls.json")]
                done = subprocess.run([*cmd, "--model", args.model], capture_output=True, text=True, check=True)
                results[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
                r = results[mode][-1]
                print(f"{mode}: {r['extra_gb']:.2f} GB over the loaded model, {r['seconds']:.1f} s", flush=True)
    first = results["plain"][0]
    print(f"one episode of {first['turns']} turns, {first['tokens']} tokens in {first['rows']} row(s), {args.model}")
    plain, ckpt = (min(r["extra_gb"] for r in results[m]) for m in results)
    t_plain, t_ckpt = (min(r["seconds"] for r in results[m]) for m in results)
    print(f"activation checkpointing: peak memory ×{ckpt / plain:.2f}, time ×{t_ckpt / t_plain:.2f}")


if __name__ == "__main__":
    main()
