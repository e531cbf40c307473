"""What reasoning, reflection, memory and a team are worth: the same model and seeds, four agent configurations.

For each suite: the single agent (agents/baseline.yaml), + reflection, + memory (after a warm-up on other seeds
that fills the long-term memory), and the full team. Prints a markdown table (success, steps, tokens per
episode) and writes a bar chart. Every run is a `pistar eval` run directory under --out, so an interrupted
ablation resumes where it stopped.

    .venv/bin/python bench/ablation.py --suites babyai,textworld,miniwob --seeds 5 --warmup 5

`--configs` and `--tasks` pick a part of it (cells already played are reloaded, not replayed), which is how a
2-core machine gets through it over several sittings.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pistar.evaluate import AgentSpec, evaluate_shown, stop_on_sigterm  # noqa: E402
from pistar.metrics import aggregate  # noqa: E402
from pistar.models import load_model  # noqa: E402
from pistar.suites import Suite, load_suite  # noqa: E402
from pistar.team import load_config  # noqa: E402

CONFIGS = ("baseline", "reflection", "memory", "team")


async def run_suite(name: str, args: argparse.Namespace, model: object) -> dict[str, dict]:
    suite = _subset(load_suite(name).with_seeds(args.seeds, 0), args)
    results = {}
    for cfg, (config, team) in args.teams.items():
        out = args.out / name / cfg
        if team.memory:  # a memory of its own per suite and configuration, warmed up on other seeds
            config += f",memory={out / 'memory.sqlite'}"
        if team.memory and args.warmup:  # --warmup 0: the memory starts empty and fills during the eval itself
            warm = _subset(load_suite(name).with_seeds(args.warmup, 1000), args)
            spec = AgentSpec(model=args.model, team=config)
            await evaluate_shown(
                warm, spec, out / "warmup", f"{name} {cfg} warm-up", concurrency=args.concurrency, model=model
            )
        spec = AgentSpec(model=args.model, team=config)
        rows = await evaluate_shown(
            suite, spec, out / "eval", f"{name} {cfg}", concurrency=args.concurrency, model=model
        )
        results[cfg] = aggregate(rows)
        m = results[cfg]
        tokens = m["tokens_in"] + m["tokens_out"]
        print(f"{name} {cfg}: success {m['successes']}/{m['scored']}, {m['steps']:.1f} steps, {tokens:.0f} tokens")
    return results


def configs(spec: str) -> dict[str, str]:
    """Configuration label -> YAML file: a name of agents/ (baseline, reflection, …) or a YAML file of your own
    (e.g. the team with a stronger manager), labelled by its file name."""
    out = {}
    for c in spec.split(","):
        path = Path(f"agents/{c}.yaml") if c in CONFIGS else Path(c)
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            raise SystemExit(f"--configs: {c!r} is neither one of {', '.join(CONFIGS)} nor a YAML file")
        if path.stem in out:  # the label names the cell's directory under --out: two configs must not share one
            raise SystemExit(f"--configs: two configurations named {path.stem!r}; rename one of the files")
        out[path.stem] = str(path)
    return out


def _subset(suite: Suite, args: argparse.Namespace) -> Suite:
    """The suite's tasks whose environment id contains one of --tasks, capped at --max-steps."""
    keep = [k for k in args.tasks.split(",") if k]
    tasks = [t for t in suite.tasks if not keep or any(k in t.env for k in keep)]
    if not tasks:
        raise SystemExit(f"--tasks {args.tasks!r} matches no task of suite {suite.name!r}")
    for t in tasks:
        t.max_steps = min(t.max_steps, args.max_steps)
    return Suite(suite.name, tasks)


def table(all_results: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| suite | configuration | success | steps | tokens / episode | vs baseline |",
        "|---|---|---|---|---|---|",
    ]
    for suite, results in all_results.items():
        base = results.get("baseline", {}).get("success_rate")
        for cfg, m in results.items():
            gain = "" if base is None else f"{100 * (m['success_rate'] - base):+.0f} pts"
            lines.append(
                f"| {suite} | {cfg} | {m['successes']}/{m['scored']} ({m['success_rate']:.0%}) | {m['steps']:.1f} | "
                f"{m['tokens_in'] + m['tokens_out']:.0f} | {gain} |"
            )
    return "\n".join(lines)


def plot(all_results: dict[str, dict[str, dict]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(all_results), figsize=(4.2 * len(all_results), 3.2), squeeze=False)
    for ax, (suite, results) in zip(axes[0], all_results.items(), strict=True):
        colors = dict(zip(CONFIGS, ["#888", "#4c78a8", "#54a24b", "#f58518"], strict=True))
        bars = [colors.get(c, "#b279a2") for c in results]
        ax.bar(list(results), [100 * m["success_rate"] for m in results.values()], color=bars)
        ax.set_ylim(0, 100)
        ax.set_title(suite)
        ax.set_ylabel("success %")
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:qwen2.5-coder-1.5b")
    ap.add_argument("--suites", default="babyai,textworld,miniwob")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5, help="episodes per task that fill the memory first (0: none)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"{', '.join(CONFIGS)} or YAML files of yours")
    ap.add_argument("--tasks", default="", help="keep tasks whose env id contains one of these (comma-separated)")
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = ap.parse_args()
    try:  # read once for every suite; a broken config fails now, in one line, not after the model has loaded
        args.teams = {cfg: (path, load_config(path)) for cfg, path in configs(args.configs).items()}
    except ValueError as e:
        ap.error(str(e))
    model = load_model(args.model)
    try:
        results = {name: await run_suite(name, args, model) for name in args.suites.split(",")}
    finally:
        await model.aclose()
        model.close()
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "ablation.png")
    print(f"plot: {args.out / 'ablation.png'}")


if __name__ == "__main__":
    stop_on_sigterm()  # a killed bench closes its browsers and model server; finished episodes are kept
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        raise SystemExit("interrupted; finished episodes are kept under --out: rerun to resume") from None
