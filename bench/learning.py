"""What training buys on BabyAI: the same small model before training, after SFT on expert trajectories, after GRPO.

Stages (each a directory under --out; rerunning skips what is done, so an interrupted bench resumes):
  teacher   the BabyAI bot plays the training seeds, recording the prompts an LLM agent would see (--agent teacher);
            with --teacher-noise a share of its steps are random moves it then recovers from (DART)
  data      `pistar data build` of those runs (successes only), split by seed
  base      the untrained model on the held-out test seeds
  sft       LoRA SFT on the teacher data, then evaluated on the test seeds
  dagger    the SFT policy plays the training seeds; `data build --correct` replays its failed episodes and has
            the bot label every state they reached where the bot would have acted otherwise (DAgger); SFT
            continues on those corrections plus the teacher data and the policy's own successes, then evaluated
            on the test seeds. Behaviour cloning alone never sees the states its own mistakes lead to (standing
            in front of the object, bumping into it); this is where they come from.
  dpo       DPO from the SFT adapter on the same relabelled states as preference pairs (the bot's action chosen,
            the policy's rejected), anchored to the SFT policy: where SFT needs a whole new target, DPO only has to
            push one action below another at the states where the policy went wrong.
  grpo      online GRPO from the SFT adapter (--grpo-from dagger or dpo: from theirs) on the training seeds, then
            evaluated on the test seeds
Prints a table (success per kind and stage) and writes learning.png (bars per stage, GRPO's reward curve).

    .venv/bin/python bench/learning.py --out runs/learning
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pistar.evaluate import AgentSpec, evaluate_shown, stop_on_sigterm  # noqa: E402
from pistar.metrics import aggregate  # noqa: E402
from pistar.suites import Suite, TaskSpec  # noqa: E402
from pistar.train.data import Filters, build  # noqa: E402
from pistar.train.model import TrainConfig  # noqa: E402

KINDS = ("goto", "pickup")
SLOTS = "parallel=4&ctx=16384"  # 4 llama.cpp slots of 4096 tokens: a whole 24-step episode fits (--history 24)
STAGES = ("base", "sft", "dagger", "dpo", "grpo")


def stage_order(label: str) -> tuple[int, str, bool]:
    """Stages in training order (dpo before its variant dpo+nll), each followed by its +reflector row."""
    stage = label.partition("+")[0]
    policy = label.removesuffix("+reflector")
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), policy, policy != label)


def suite(seeds: int, start: int, max_steps: int) -> Suite:
    tasks = [
        TaskSpec(env=f"babyai/MixedTrainLocal/{k}", seeds=seeds, seed_start=start, max_steps=max_steps) for k in KINDS
    ]
    return Suite("learning", tasks)


def by_kind(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for kind in KINDS:
        mine = [r for r in rows if r["env_id"].endswith("/" + kind)]
        out[kind] = aggregate(mine)
    out["all"] = aggregate(rows)
    return out


def policy(model_uri: str, args: argparse.Namespace, reflector: bool = False) -> AgentSpec:
    """The trained (or base) model as an agent, the same on training seeds (DAgger) and on test seeds. With the
    action reflector (training-free), an action already taken from the same observation is not offered again."""
    team = f"action_reflector=true,history={args.history}" if reflector else None
    return AgentSpec(model=model_uri, history=args.history, temperature=args.temperature, max_tokens=48, team=team)


async def evaluate_stage(name: str, model_uri: str, args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    """The stage's policy on the test seeds; with --reflector, also the same policy with the action reflector."""
    results = {}
    for label, reflector in [(name, False)] + ([(f"{name}+reflector", True)] if args.reflector else []):
        spec = policy(model_uri, args, reflector)
        t0 = time.perf_counter()
        out = args.out / f"eval_{label.replace('+', '_')}"
        rows = await evaluate_shown(suite(args.test_seeds, 0, args.max_steps), spec, out, label, concurrency=4)
        results[label] = by_kind(rows)
        print(
            f"{label}: "
            + ", ".join(f"{k} {v['successes']}/{v['scored']}" for k, v in results[label].items())
            + f" ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return results


def embedded_uri(model: str, adapter_dir: Path) -> str:
    """The trained adapter at llama.cpp speed when it was exported to GGUF, else through transformers."""
    meta = json.loads((adapter_dir / "pistar.json").read_text())
    if meta.get("gguf"):
        return f"embedded:{model}?lora={meta['gguf']}&{SLOTS}"
    return f"hf:{adapter_dir}"


def sft(
    args: argparse.Namespace, model: str, data: Path, out: Path, examples: int, lr: float, epochs: float = 1.0
) -> None:
    from pistar.train.sft import train_sft

    # With the whole episode in the prompt an episode is one sequence of ~5 replies (sft.chains): one per step keeps
    # the replies per optimizer step near those of 4 single calls, and the number of steps up. A shorter window
    # slides, so its calls mostly stay single sequences.
    whole = args.history >= args.max_steps
    config = TrainConfig(
        model=model, data=str(data), out=str(out), epochs=epochs, max_examples=examples or None, balance=args.balance,
        lr=lr, grad_accum=1 if whole else 4, max_length=4096, logging_steps=10,
    )  # fmt: skip
    t0 = time.perf_counter()
    metrics = train_sft(config)
    took = time.perf_counter() - t0
    n, seqs, loss = metrics["examples"], metrics["sequences"], metrics.get("eval_loss")
    print(f"{out.name}: {n} examples in {seqs} sequences, eval loss {loss}, {took:.0f} s", flush=True)


def corrections(args: argparse.Namespace, sft_dir: Path) -> Path:
    """The SFT policy plays training seeds; the bot relabels every state of its failed episodes where it would have
    acted otherwise: SFT examples for DAgger and preference pairs for DPO (built once, shared by both stages)."""
    data = args.out / "data_dagger"
    if not (data / "summary.json").exists():
        played = args.out / "dagger_runs"
        spec = policy(embedded_uri(args.model, sft_dir), args)
        asyncio.run(
            evaluate_shown(
                suite(args.dagger_seeds, 1000, args.max_steps), spec, played, "dagger rollouts", concurrency=4
            )
        )
        summary = build(
            [args.out / "teacher", played],
            data,
            Filters(success=True),
            validation=0.1,
            pairs=False,
            correct=True,
            history=args.history,
        )
        print("dagger data:", summary["sft"], summary.get("sft_split"), "pairs:", summary.get("dpo_split"), flush=True)
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/learning"))
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--train-seeds", type=int, default=60)
    p.add_argument("--test-seeds", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=24)
    p.add_argument("--history", type=int, default=0, help="past turns in the prompt (24: the whole episode)")
    p.add_argument("--teacher-noise", type=float, default=0.0, help="share of the bot's steps made random (DART)")
    p.add_argument("--temperature", type=float, default=0.3)
    p.add_argument("--sft-epochs", type=float, default=1.0)
    p.add_argument("--sft-examples", type=int, default=300, help="0: all of them")
    p.add_argument("--balance", action="store_true", help="SFT subsets drawn evenly over the actions")
    p.add_argument("--dagger-seeds", type=int, default=20, help="training seeds per kind the SFT policy plays")
    p.add_argument("--dagger-examples", type=int, default=240)
    p.add_argument("--dpo-pairs", type=int, default=None, help="at most this many pairs (default: all)")
    p.add_argument("--dpo-epochs", type=float, default=1.0)
    p.add_argument("--dpo-nll", type=float, default=0.0, help="weight of an NLL term on the chosen reply (RPO)")
    p.add_argument("--grpo-iterations", type=int, default=8)
    p.add_argument("--grpo-lr", type=float, default=5e-5)
    p.add_argument("--grpo-from", choices=("sft", "dagger", "dpo"), default="sft", help="the adapter GRPO continues")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--reflector", action="store_true", help="also evaluate each stage with the action reflector")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    results: dict[str, dict] = {}

    train = suite(args.train_seeds, 1000, args.max_steps)
    teacher = AgentSpec(kind="teacher", history=args.history, noise=args.teacher_noise)
    asyncio.run(evaluate_shown(train, teacher, args.out / "teacher", "teacher", concurrency=4))
    data = args.out / "data"
    if not (data / "summary.json").exists():
        summary = build([args.out / "teacher"], data, Filters(success=True), validation=0.1, pairs=False)
        print("data:", summary.get("sft_split"), flush=True)

    if "base" in stages:
        results |= asyncio.run(evaluate_stage("base", f"embedded:{args.model}?{SLOTS}", args))

    sft_dir = args.out / "sft"
    if "sft" in stages:
        if not (sft_dir / "pistar.json").exists():
            sft(args, args.model, data, sft_dir, args.sft_examples, 2e-4, epochs=args.sft_epochs)
        results |= asyncio.run(evaluate_stage("sft", embedded_uri(args.model, sft_dir), args))

    dagger_dir = args.out / "dagger"
    if "dagger" in stages:
        if not (dagger_dir / "pistar.json").exists():
            sft(args, str(sft_dir), corrections(args, sft_dir), dagger_dir, args.dagger_examples, 1e-4)
        results |= asyncio.run(evaluate_stage("dagger", embedded_uri(args.model, dagger_dir), args))

    dpo = "dpo+nll" if args.dpo_nll else "dpo"  # each variant is a stage of its own, trained and evaluated apart
    dpo_dir = args.out / dpo.replace("+", "_")
    if "dpo" in stages:
        if not (dpo_dir / "pistar.json").exists():
            from pistar.train.dpo import train_dpo

            config = TrainConfig(
                model=str(sft_dir), data=str(corrections(args, sft_dir)), out=str(dpo_dir), epochs=args.dpo_epochs,
                max_examples=args.dpo_pairs, lr=1e-4, beta=0.1, dpo_nll=args.dpo_nll, grad_accum=4, max_length=4096,
                logging_steps=5,
            )  # fmt: skip
            t0 = time.perf_counter()
            metrics = train_dpo(config)
            took = time.perf_counter() - t0
            print(f"{dpo}: {metrics['pairs']} pairs, eval loss {metrics.get('eval_loss')}, {took:.0f} s", flush=True)
        results |= asyncio.run(evaluate_stage(dpo, embedded_uri(args.model, dpo_dir), args))

    start = {"sft": sft_dir, "dagger": dagger_dir, "dpo": dpo_dir}[args.grpo_from]
    grpo = "grpo" if args.grpo_from == "sft" else f"{args.grpo_from}+grpo"
    grpo_dir = args.out / grpo.replace("+", "_")
    curve: list[dict] = []
    if "grpo" in stages:
        log = grpo_dir / "log.jsonl"
        done = len(log.read_text().splitlines()) if log.exists() else 0
        if done < args.grpo_iterations:  # the trainer resumes from its checkpoint: a larger count trains on
            from pistar.train.rl import RLTrainer, train_rl

            (args.out / "train_suite.yaml").write_text(json.dumps(train.to_dict()))
            config = TrainConfig(
                model=str(start),
                out=str(grpo_dir),
                suite=str(args.out / "train_suite.yaml"),
                iterations=args.grpo_iterations,
                tasks_per_iter=2,
                group_size=4,
                temperature=1.0,
                lr=args.grpo_lr,
                history=args.history,
                max_tokens=48,
                kl_coef=0.04,
                minibatch=16,
                rollout_model="embedded",  # llama.cpp with the adapter as GGUF: rollouts at eval speed
            )
            trainer = RLTrainer(config, "grpo")
            trainer.on_progress = lambda what: print("grpo", what, flush=True)  # episode k/n, update: hours on CPU
            train_rl(config, "grpo", on_iteration=lambda r: print("grpo", json.dumps(r), flush=True), trainer=trainer)
        curve = [json.loads(line) for line in log.read_text().splitlines()]
        results |= asyncio.run(evaluate_stage(grpo, embedded_uri(args.model, grpo_dir), args))

    # Rerunning some stages keeps the others' rows: every stage is evaluated in its own directory anyway.
    saved = args.out / "results.json"
    before = json.loads(saved.read_text()) if saved.exists() else {}
    merged = before.get("results", {}) | results
    results = {k: merged[k] for k in sorted(merged, key=stage_order)}
    curve = curve or before.get("grpo", [])
    print("\n| stage | " + " | ".join(KINDS) + " | all |\n|---|" + "---|" * (len(KINDS) + 1))
    for stage, r in results.items():
        cells = [f"{r[k]['successes']}/{r[k]['scored']} ({r[k]['success_rate']:.0%})" for k in (*KINDS, "all")]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    saved.write_text(json.dumps({"results": results, "grpo": curve}, indent=2, default=str))
    plot(results, curve, args.out / "learning.png")
    print(f"picture: {args.out / 'learning.png'}")


def plot(results: dict[str, dict], curve: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    stages = list(results)
    width = 0.8 / len(KINDS)
    for i, kind in enumerate(KINDS):
        rates = [100 * results[s][kind]["success_rate"] for s in stages]
        axes[0].bar([x + i * width for x in range(len(stages))], rates, width, label=kind)
    axes[0].set_xticks(
        [x + width * (len(KINDS) - 1) / 2 for x in range(len(stages))], stages, rotation=30, ha="right", fontsize=8
    )
    axes[0].axhline(80, color="#999", lw=0.8, ls="--")
    axes[0].set_ylim(0, 100)
    axes[0].set_ylabel("test success %")
    axes[0].legend()
    if curve:
        axes[1].plot([r["iteration"] for r in curve], [r["success"] * 100 for r in curve], marker="o", label="success")
        axes[1].set_xlabel("GRPO iteration")
        axes[1].set_ylabel("training success %")
        axes[1].set_ylim(0, 100)
    else:
        axes[1].text(0.5, 0.5, "not run", ha="center", va="center", transform=axes[1].transAxes, color="#999")
        axes[1].set_axis_off()
    axes[1].set_title("GRPO on training seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    stop_on_sigterm()  # a killed bench closes its browsers and model server; finished episodes are kept
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted; finished stages and episodes are kept under --out: rerun to resume") from None
