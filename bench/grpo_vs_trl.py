"""Time per GRPO step: pistar's own trainer (rollouts through the agent loop) against TRL's GRPOTrainer.

Both train the same model with the same LoRA on the same single-turn tasks (BFCL `simple` by default, one answer
per episode) with the same step: `tasks` prompts × `group` completions of at most `max_tokens` tokens, sampled at
the same temperature, rewarded by pistar's own grader for the environment, then ONE optimizer step over all of
them (token-mean clipped loss, KL to the adapter-free model with the same coefficient, constant lr, grad clip 1).
TRL gets exactly the chat messages pistar's agent sends (rendered by `LLMAgent.messages`), in the same order.

The trainers live in one process and take turns step by step (TRL's own training loop runs in a thread that a
callback pauses after every optimizer step), so load from other jobs hits both alike and the ratio is what to
read. Each trainer first takes `--warmup` untimed steps. Phases:
- generation: pistar's `rollout_s` (episodes through `run_episode`, one completion at a time, grading included);
  TRL's `_generate` (the whole batch in one `generate` call; its reward is computed afterwards, in "update").
- update: pistar's `update_s` (reference log-probs, forward/backward per turn, optimizer step); TRL: the rest of
  the optimizer step (rewards, reference log-probs, loss, backward, optimizer step, its per-step logging).
- total: the wall time of the whole step; for pistar this includes saving its per-iteration checkpoint ("other").
pistar with constrained decoding (TRL has none) is timed as an extra line.

Worth knowing when reading TRL's update time: without Triton (any CPU), TRL 1.16's fused LM head scores every
position of prompt + completion (`compact = _use_triton(...)` in trl/trainer/utils.py), in the reference pass, the
policy pass and again in the backward; on a GPU it scores only completion positions. pistar also runs the LM head
over the whole sequence but takes log-softmax only over the completion.

The default model is a tiny random Qwen2 (2 layers, hidden 16) with the real Qwen tokenizer: a step takes seconds,
and nearly all of its compute is the LM head over the 151k-token vocabulary, which magnifies anything a trainer does
per vocabulary entry (see above). `--model qwen2.5-coder-0.5b` times the real 0.5B model instead (about a minute with
`--group 2 --tasks 1 --max-tokens 16 --warmup 0 --steps 1 --no-constrained`, minutes per step at the defaults).

    .venv/bin/python bench/grpo_vs_trl.py [--steps 4] [--warmup 1] [--env bfcl/simple] [--model PATH|NAME]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from pistar.actions import ActionError  # noqa: E402
from pistar.agent import LLMAgent  # noqa: E402
from pistar.envs import make_env  # noqa: E402
from pistar.train.model import TrainConfig, load_tokenizer, tiny_qwen2  # noqa: E402
from pistar.train.rl import RLTrainer  # noqa: E402

SMALL = "qwen2.5-coder-0.5b"


def render(env_id: str, seed: int) -> list[dict[str, Any]]:
    """The messages pistar's agent sends for the first (here: only) step of this task."""
    env = make_env(env_id)
    try:
        obs = env.reset(seed)
        agent = LLMAgent(None, env.tools(), history=0, answer=env.accepts_answers)
        return agent.messages(obs, env, [], agent.space(obs))
    finally:
        env.close()


def grade(env_id: str, seed: int, text: str) -> float:
    """pistar's reward for a one-step episode: parse the reply as the agent loop does, let the env grade it."""
    env = make_env(env_id)
    try:
        obs = env.reset(seed)
        agent = LLMAgent(None, env.tools(), history=0, answer=env.accepts_answers)
        action = agent.space(obs).parse(text)
        if isinstance(action, ActionError) or action.kind == "tool":
            return 0.0
        if action.kind == "answer" and not env.accepts_answers:
            return 0.0
        return float(env.step(action).reward)
    finally:
        env.close()


def pistar_reward(completions: list[Any], env_id: list[str], seed: list[int], **_: Any) -> list[float]:
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [grade(e, s, t) for e, s, t in zip(env_id, seed, texts, strict=True)]


class TRLSide:
    """TRL's GRPOTrainer running its own loop in a thread, paused after every optimizer step."""

    def __init__(self, model_path: Path, tok: Any, config: TrainConfig, rows: list[dict[str, Any]], out: Path):
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, TrainerCallback
        from transformers.trainer_callback import PrinterCallback
        from trl import GRPOConfig, GRPOTrainer

        side = self
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.step_s: list[float] = []
        self.gen_s: list[float] = []
        self.logs: list[dict[str, float]] = []
        self.error: BaseException | None = None
        self._t0 = 0.0

        class Timed(GRPOTrainer):
            def _generate(self, prompts: list) -> Any:
                t = time.perf_counter()
                try:
                    return super()._generate(prompts)
                finally:
                    side.gen_s.append(time.perf_counter() - t)

        class Gate(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                side.go.acquire()
                side._t0 = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                side.step_s.append(time.perf_counter() - side._t0)
                side.done.release()
                side.go.acquire()
                side._t0 = time.perf_counter()

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
                side.logs.append(dict(logs or {}))

        n = config.group_size * config.tasks_per_iter
        args = GRPOConfig(
            output_dir=str(out),
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            save_strategy="no",
            logging_steps=1,
            seed=config.seed,
            max_steps=len(rows) // config.tasks_per_iter,
            per_device_train_batch_size=n,  # one optimizer step over every completion, as pistar's minibatch
            gradient_accumulation_steps=1,
            num_generations=config.group_size,
            max_completion_length=config.max_tokens,
            temperature=config.temperature,
            top_p=1.0,
            top_k=0,
            learning_rate=config.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.01,  # torch AdamW's default, which pistar uses
            max_grad_norm=1.0,
            beta=config.kl_coef,
            epsilon=config.clip,
            loss_type="dapo",  # token mean over the whole batch, like pistar
            scale_rewards="group" if config.scale_rewards else "none",
            num_iterations=config.ppo_epochs,
            shuffle_dataset=False,  # the same tasks in the same order as pistar's iterations
            bf16=False,  # TRL defaults to bf16 autocast; pistar trains in float32 (and bf16 matmuls are slow on CPU)
            gradient_checkpointing=False,  # TRL defaults to True; pistar keeps the activations
        )
        peft_config = None
        if config.lora:
            from peft import LoraConfig

            peft_config = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=config.lora_targets,
                task_type="CAUSAL_LM",
            )
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, config.dtype))
        self.trainer = Timed(
            model=model,
            reward_funcs=pistar_reward,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[Gate()],
        )
        self.trainer.remove_callback(PrinterCallback)  # it would print every log dict
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.trainer.train()
        except BaseException as e:  # reported by the main thread, which is waiting for this step
            self.error = e
            self.done.release()

    def step(self) -> dict[str, float]:
        self.go.release()
        self.done.acquire()
        if self.error is not None:
            raise RuntimeError(f"TRL failed: {type(self.error).__name__}: {self.error}") from self.error
        return {"gen": self.gen_s[-1], "total": self.step_s[-1]}

    def finish(self) -> None:
        self.go.release()
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"TRL failed: {type(self.error).__name__}: {self.error}") from self.error

    def tokens(self) -> list[tuple[float, float]]:
        """(prompt, completion) tokens of each step, from TRL's own logs (cumulative tokens, mean completion length)."""
        n = self.trainer.args.per_device_train_batch_size
        out, seen = [], 0.0
        for log in self.logs:
            if "completions/mean_length" in log:
                completion = log["completions/mean_length"] * n
                out.append((log["num_tokens"] - seen - completion, completion))
                seen = log["num_tokens"]
        return out


def count_prompt_tokens(trainer: RLTrainer) -> None:
    """Note the prompt tokens of each iteration's turns (the step record counts only completion tokens), so the
    table shows that both trainers saw the same input."""
    build = trainer.build_turns

    def counted(groups: list[list[Any]]) -> Any:
        turns, info = build(groups)
        trainer.prompt_tokens = sum(len(t.prompt_ids) for t in turns)  # type: ignore[attr-defined]
        return turns, info

    trainer.build_turns = counted  # type: ignore[method-assign]


def pistar_step(trainer: RLTrainer) -> dict[str, float]:
    t = time.perf_counter()
    record = trainer.step()
    total = time.perf_counter() - t
    return {
        "gen": record["rollout_s"],
        "update": record["update_s"],
        "total": total,
        "tokens": record["tokens"],
        "prompt_tokens": trainer.prompt_tokens,  # type: ignore[attr-defined]
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="", help="a model directory or catalog name (default: a tiny random Qwen2)")
    p.add_argument("--env", default="bfcl/simple", help="a single-turn environment (bfcl/..., toolqa/...)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per trainer")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per trainer first")
    p.add_argument("--group", type=int, default=4, help="completions per prompt (group_size, num_generations)")
    p.add_argument("--tasks", type=int, default=2, help="prompts per step (tasks_per_iter)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--no-lora", action="store_true", help="full fine-tuning on both sides")
    p.add_argument("--no-constrained", action="store_true", help="skip the extra constrained-decoding line")
    a = p.parse_args()

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    n_steps = a.warmup + a.steps
    with tempfile.TemporaryDirectory(prefix="grpo-vs-trl-") as tmp:
        root = Path(tmp)
        model = Path(a.model) if a.model and Path(a.model).exists() else None
        if a.model and model is None:
            from pistar.models.hf import resolve_target

            model = resolve_target(a.model)
        model = model or tiny_qwen2(root / "tiny", SMALL)
        suite = root / "suite.json"
        task = {"env": a.env, "seeds": a.tasks * n_steps, "seed_start": 0, "max_steps": 1}
        suite.write_text(json.dumps({"name": "grpo-vs-trl", "tasks": [task]}))
        base = TrainConfig(
            model=str(model),
            suite=str(suite),
            lora=not a.no_lora,
            group_size=a.group,
            tasks_per_iter=a.tasks,
            max_tokens=a.max_tokens,
            history=0,
            minibatch=a.group * a.tasks,  # one optimizer step per iteration, as TRL's
            iterations=n_steps,
            constrained=False,
            skip_equal_groups=False,  # TRL's trainer updates on every group: the same work on both sides
        )
        sides: dict[str, Any] = {}
        sides["pistar"] = RLTrainer(base.model_copy(update={"out": str(root / "pistar")}), "grpo")
        if not a.no_constrained:
            cfg = base.model_copy(update={"out": str(root / "pistar_c"), "constrained": True})
            sides["pistar constrained"] = RLTrainer(cfg, "grpo")
        for side in sides.values():
            count_prompt_tokens(side)
        episodes = [e for i in range(n_steps) for e in sides["pistar"].tasks(i)]
        rows = [{"prompt": render(e.env_id, e.seed), "env_id": e.env_id, "seed": e.seed} for e in episodes]
        tok = load_tokenizer(str(model))
        sides["TRL"] = TRLSide(model, tok, base, rows, root / "trl")

        def one(name: str) -> dict[str, float]:
            side = sides[name]
            return side.step() if isinstance(side, TRLSide) else pistar_step(side)

        order = ["pistar", "TRL"] + (["pistar constrained"] if not a.no_constrained else [])
        times: dict[str, list[dict[str, float]]] = {k: [] for k in order}
        t_start = time.perf_counter()
        for i in range(n_steps):
            for name in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
                r = one(name)
                if i >= a.warmup:
                    times[name].append(r)
            print(f"  step {i + 1}/{n_steps} " + ("(warm-up)" if i < a.warmup else "") + " done", flush=True)
        sides["TRL"].finish()
        for r, (prompt, completion) in zip(times["TRL"], sides["TRL"].tokens()[a.warmup :], strict=False):
            r["prompt_tokens"], r["tokens"] = prompt, completion
        wall = time.perf_counter() - t_start

    what = "tiny random Qwen2 (2 layers, hidden 16, real Qwen tokenizer)" if not a.model else a.model
    lora = "full fine-tune" if a.no_lora else f"LoRA r={base.lora_r} alpha={base.lora_alpha} {base.lora_targets}"
    print()
    print(f"GRPO time per step, pistar vs TRL {_version('trl')} GRPOTrainer; torch threads {torch.get_num_threads()}")
    print(f"  model: {what}; {lora}; float32, CPU")
    print(
        f"  env {a.env}: {a.tasks} prompts x {a.group} completions = {a.tasks * a.group} per step, one optimizer step;"
        f" max_tokens {a.max_tokens}, temperature {base.temperature}, lr {base.lr}, KL coef/beta {base.kl_coef}"
    )
    print("  reward: pistar's own grader for the env on both sides (the bench is about time per step, not learning)")
    print(f"  {a.warmup} warm-up + {a.steps} timed steps each, interleaved; medians in seconds; run took {wall:.0f} s")
    print()
    print(
        f"  {'trainer':<20}{'generation':>12}{'update':>10}{'other':>9}{'total':>9}"
        f"{'tokens/step (prompt+completion)':>34}"
    )
    med: dict[str, dict[str, float]] = {}
    for name in order:
        rs = times[name]
        m = {k: statistics.median(r[k] for r in rs) for k in ("gen", "total")}
        if name == "TRL":
            m["update"] = statistics.median(r["total"] - r["gen"] for r in rs)
            other = "-"
        else:
            m["update"] = statistics.median(r["update"] for r in rs)
            other = f"{statistics.median(r['total'] - r['gen'] - r['update'] for r in rs):.2f}"
        toks = [(r["prompt_tokens"], r["tokens"]) for r in rs if "tokens" in r]
        tok_s = f"{sum(p for p, _ in toks) / len(toks):.0f}+{sum(c for _, c in toks) / len(toks):.0f}" if toks else "?"
        med[name] = m
        print(f"  {name:<20}{m['gen']:>12.2f}{m['update']:>10.2f}{other:>9}{m['total']:>9.2f}{tok_s:>34}")
    print()
    for name in order:
        print(f"  {name} per-step totals (s): " + ", ".join(f"{r['total']:.2f}" for r in times[name]))
    print()
    for name in order:
        if name == "TRL":
            continue
        ours, trl = med[name], med["TRL"]
        label = "pistar/TRL" if name == "pistar" else f"{name}/TRL"
        print(
            f"  {label} time per step: {ours['total'] / trl['total']:.2f}x"
            f"  (generation {ours['gen'] / trl['gen']:.2f}x, update {ours['update'] / trl['update']:.2f}x)"
        )


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
