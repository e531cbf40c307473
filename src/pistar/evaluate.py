"""Play a suite: many episodes at once, every finished one stored at once, a rerun resuming where a crash left off.

Two executors give the same results:
- `local`: episodes are asyncio tasks in this process, so model calls overlap and one model server stays busy;
  environment steps run in threads so a slow environment does not stall the others' model calls.
- `ray`: each episode is a Ray task on a local or remote cluster; workers build their own environment and
  policy from the (picklable) AgentSpec, and the driver stores what comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import platform
import re
import signal
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pistar.agent import Budget, ExpertAgent, LLMAgent, Policy, RandomAgent, StepCallback
from pistar.envs import Env, make_env
from pistar.metrics import episode_metrics
from pistar.models import DEFAULT_URI, Model, load_model
from pistar.records import Trajectory
from pistar.store import Store
from pistar.suites import Episode, Suite
from pistar.team import play
from pistar.tools import Tool
from pistar.viewer import write_html

# Packages whose versions change results; recorded with every run.
_PACKAGES = (
    "pistar",
    "xllamacpp",
    "minigrid",
    "gymnasium",
    "textworld",
    "crafter",
    "nle",
    "minihack",
    "miniwob",
    "selenium",
    "openai",
    "torch",
    "transformers",
)


@dataclass
class AgentSpec:
    """Everything that decides how an agent plays, picklable, so a Ray worker can rebuild the same agent."""

    kind: str = "llm"  # llm | expert | random | teacher (the expert, recording the prompts an llm agent would see)
    model: str = DEFAULT_URI
    temperature: float = 0.7
    history: int = 4
    max_tokens: int | None = None  # per reply; None: the agent's own (160, 320 when it reasons first)
    constrained: bool = True
    tools: list[str] = field(default_factory=list)  # calculator, python, search:FOLDER, image
    mcp: list[str] = field(default_factory=list)
    seed: int = 0
    max_episode_tokens: int | None = None
    max_seconds: float | None = None
    team: str | None = None  # a TeamConfig: YAML file or inline key=value list (pistar.team)
    noise: float = 0.0  # expert, teacher: the share of steps that take a random action instead (DART)

    def __post_init__(self) -> None:
        if self.kind not in ("llm", "expert", "random", "teacher"):
            raise ValueError(f"agent {self.kind!r}: expected llm, expert, random or teacher")
        if self.team is not None and self.kind != "llm":
            raise ValueError("--agent-config applies to the llm agent only")
        if self.noise and self.kind not in ("expert", "teacher"):
            raise ValueError("--noise applies to the expert and teacher agents only")
        if not 0 <= self.noise < 1:
            raise ValueError(f"--noise {self.noise}: expected a share of steps, at least 0 and below 1")
        self.team_config()  # a broken config fails now, in one line

    def team_config(self) -> Any:
        from pistar.team import load_config

        return load_config(self.team) if self.team else None

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to resume a run rather than mix two experiments in one table."""
        d = asdict(self)
        d["team"] = self.team_config().model_dump() if self.team else None
        if d["max_tokens"] is None:  # as runs recorded it when 160 was the spec's default: they still resume
            d["max_tokens"] = 160
        if not d["noise"]:  # as runs recorded it before there was noise
            d.pop("noise")
        if self.kind != "llm":
            for k in ("model", "temperature", "max_tokens", "constrained"):
                d.pop(k)
            if self.kind != "teacher":
                d.pop("history")
        return d

    def load_model(self) -> Model | None:
        return load_model(self.model) if self.kind == "llm" else None

    def role_models(self, main: Model | None) -> dict[str, Model]:
        """The team's per-role models, each URI loaded once (the main model where it is the same)."""
        team = self.team_config()
        if main is None or team is None:
            return {}
        loaded = {main.uri: main, self.model: main}
        return {role: loaded.setdefault(uri, load_model(uri)) for role, uri in team.models.items()}

    def policy(
        self,
        env: Env,
        episode: Episode,
        model: Model | None,
        extra_tools: Sequence[Tool] = (),
        role_models: dict[str, Model] | None = None,
    ) -> Policy:
        """A fresh policy per episode: its sampling seed comes from the episode, so results do not depend on the
        order in which concurrent episodes happen to run."""
        tools = [*tools_by_name(self.tools), *extra_tools, *env.tools()]
        episode_seed = zlib.crc32(f"{self.seed}:{episode.env_id}:{episode.seed}".encode())
        if self.kind == "expert":
            return ExpertAgent(tools, noise=self.noise, seed=episode_seed)
        if self.kind == "teacher":
            llm = LLMAgent(None, tools, history=self.history, answer=env.accepts_answers)
            return ExpertAgent(tools, llm, noise=self.noise, seed=episode_seed)
        if self.kind == "random":
            return RandomAgent(episode_seed)
        assert model is not None
        team = self.team_config()
        reply = {} if self.max_tokens is None else {"max_tokens": self.max_tokens}
        if team is not None:
            from pistar.memory import LongTermMemory
            from pistar.team import TeamAgent

            return TeamAgent(
                model,
                tools,
                config=team,
                role_models=role_models,
                memory=LongTermMemory(team.memory) if team.memory else None,
                temperature=self.temperature,
                constrained=self.constrained,
                answer=env.accepts_answers,
                seed=episode_seed,
                **reply,
            )
        return LLMAgent(
            model,
            tools,
            history=self.history,
            temperature=self.temperature,
            constrained=self.constrained,
            answer=env.accepts_answers,
            seed=episode_seed,
            **reply,
        )

    def budget(self, episode: Episode) -> Budget:
        return Budget(episode.max_steps, self.max_episode_tokens, self.max_seconds)


def tools_by_name(names: Sequence[str]) -> list[Tool]:
    """`calculator`, `python`, `search:FOLDER`, `image` → tools. Unknown names are a ValueError naming the choices."""
    out: list[Tool] = []
    for name in names:
        kind, _, arg = name.partition(":")
        if kind == "calculator":
            from pistar.tools.calculator import calculator

            out.append(calculator)
        elif kind == "python":
            from pistar.tools.sandbox import python_tool

            out.append(python_tool)
        elif kind == "search" and arg:
            from pistar.tools.search import search_tool

            out.append(search_tool(arg))
        elif kind == "image":
            from pistar.tools.image import image_tools

            out.extend(image_tools())
        else:
            raise ValueError(f"unknown tool {name!r}: choose from calculator, python, search:FOLDER, image")
    return out


def episode_dir(out: Path, episode: Episode) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", episode.env_id)
    return out / "episodes" / slug / f"seed_{episode.seed:04d}"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


class RunMismatch(ValueError):
    """The output directory holds a run made with another suite or agent."""


def open_run(out: Path, suite: Suite, spec: AgentSpec) -> Store:
    """Open (or start) the run in `out`; refuse to resume one made with another agent or suite."""
    store = Store(out / "results.sqlite")
    config = {"suite": suite.to_dict(), "agent": spec.identity()}
    before = store.get_meta("config")
    if before is None:
        store.set_meta("config", config)
    elif before["agent"] != config["agent"]:
        store.close()
        diff = sorted(
            k for k in {**before["agent"], **config["agent"]} if before["agent"].get(k) != config["agent"].get(k)
        )
        raise RunMismatch(
            f"{out} holds a run with another agent config ({', '.join(diff)} differ): use a new --out to compare"
        )
    elif before["suite"] != config["suite"]:
        store.set_meta("config", {**before, "suite": config["suite"]})  # more seeds or tasks: the rows stay valid
    store.set_meta("versions", versions())
    return store


EpisodeCallback = Callable[[Episode, Trajectory, dict[str, Any]], None]


def save_episode(store: Store, out: Path, episode: Episode, traj: Trajectory) -> dict[str, Any]:
    """Files first, then the row: a row always points at a complete trajectory."""
    where = episode_dir(out, episode)
    traj.save(where)
    write_html(traj, where / "index.html")
    metrics = episode_metrics(traj)
    store.add(episode.env_id, episode.seed, metrics, str(where.relative_to(out)))
    return metrics


async def evaluate(
    suite: Suite,
    spec: AgentSpec,
    out: Path,
    *,
    concurrency: int = 1,
    executor: str = "local",
    address: str | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_episode: EpisodeCallback | None = None,
    on_step: Callable[[Episode], StepCallback] | None = None,
    model: Model | None = None,
) -> list[dict[str, Any]]:
    """Play every episode of the suite not yet in `out`, storing each as it finishes; return all rows.

    `model`: an already loaded model to use (and leave open) instead of loading `spec.model`.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if executor not in ("local", "ray"):
        raise ValueError(f"executor {executor!r}: expected local or ray")
    # Tool servers and a model that cannot start must fail before the run directory records anything.
    mcp_servers, mcp_tools = _start_mcp(spec.mcp) if executor == "local" else ([], [])
    given = model
    try:
        if model is None and executor == "local" and _pending(out, suite):
            model = spec.load_model()
        out.mkdir(parents=True, exist_ok=True)
        store = open_run(out, suite, spec)
    except BaseException:
        _close(None if given else model, mcp_servers)
        raise
    try:
        done = store.done()
        todo = [e for e in suite.episodes() if (e.env_id, e.seed) not in done]
        if on_start:
            on_start(len(suite.episodes()) - len(todo), len(todo))
        if todo:
            if executor == "local":
                await _run_local(todo, spec, model, mcp_tools, out, store, concurrency, on_episode, on_step)
            else:
                await _run_ray(todo, spec, out, store, concurrency, address, on_episode)
        if spec.kind == "llm" and store.get_meta("model") is None:
            store.set_meta("model", {"uri": spec.model})
        by_key = {(r["env_id"], r["seed"]): r for r in store.rows()}
        return [by_key[k] for k in ((e.env_id, e.seed) for e in suite.episodes()) if k in by_key]
    finally:
        store.close()
        if model is not None and given is None:
            await model.aclose()
        _close(None if given else model, mcp_servers)


def progress_bar(console: Any = None) -> Any:
    """A rich progress bar with the elapsed time and an ETA: what `pistar eval`, `pistar train` and the benches show."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


async def evaluate_shown(suite: Suite, spec: AgentSpec, out: Path, label: str, **kwargs: Any) -> list[dict[str, Any]]:
    """`evaluate` under a progress bar, with a line per finished episode: for scripts and benches whose runs take
    hours (`pistar eval` draws its own, with the steps)."""
    progress = progress_bar()
    bar = progress.add_task(label, total=None)

    def on_start(done: int, todo: int) -> None:
        progress.update(bar, total=todo)
        if done:
            progress.console.print(
                f"{label}: resuming in {out}, {done} of {done + todo} episodes already done", soft_wrap=True
            )

    def on_episode(episode: Episode, traj: Trajectory, metrics: dict[str, Any]) -> None:
        result = "success" if traj.success else "failure"
        progress.console.print(
            f"{label}: {result} {episode.env_id} seed {episode.seed}, {traj.num_steps} steps, "
            f"{traj.duration_s:.0f} s, stop: {traj.stop_reason}" + (f", {traj.error}" if traj.error else ""),
            highlight=False,
            soft_wrap=True,  # one line, also in a log file (off a terminal rich wraps at 80 columns)
        )
        progress.advance(bar)

    with progress:
        return await evaluate(suite, spec, out, on_start=on_start, on_episode=on_episode, **kwargs)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so a killed run unwinds: environments (browsers) and model servers
    close, finished episodes stay stored, and the caller can say where they are."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _pending(out: Path, suite: Suite) -> bool:
    """Whether any episode is left to play (a finished run is reported without loading its model)."""
    if not (out / "results.sqlite").exists():
        return True
    store = Store(out / "results.sqlite")
    try:
        done = store.done()
    finally:
        store.close()
    return any((e.env_id, e.seed) not in done for e in suite.episodes())


def _close(model: Model | None, servers: Sequence[Any]) -> None:
    if model is not None:
        model.close()
    for server in servers:
        server.close()


async def _run_local(
    todo: list[Episode],
    spec: AgentSpec,
    model: Model | None,
    mcp_tools: list[Tool],
    out: Path,
    store: Store,
    concurrency: int,
    on_episode: EpisodeCallback | None,
    on_step: Callable[[Episode], StepCallback] | None,
) -> None:
    if model is not None:
        store.set_meta("model", model.info())
    roles = spec.role_models(model)
    idle: dict[str, list[Env]] = {}  # environments are reused across episodes (a browser, a game cache)
    made: list[Env] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(episode: Episode) -> None:
        async with gate:
            pool = idle.setdefault(episode.env_id, [])
            if pool:
                env = pool.pop()
            else:
                env = await asyncio.to_thread(make_env, episode.env_id)
                made.append(env)
            try:
                policy = spec.policy(env, episode, model, mcp_tools, roles)
                callbacks = [on_step(episode)] if on_step else []
                traj = await play(
                    env, policy, episode.seed, spec.budget(episode), callbacks, env_thread=concurrency > 1
                )
            finally:
                pool.append(env)
            metrics = await asyncio.to_thread(save_episode, store, out, episode, traj)
            if on_episode:
                on_episode(episode, traj, metrics)

    try:
        await asyncio.gather(*(one(e) for e in todo))
    finally:
        for env in made:
            with contextlib.suppress(Exception):  # closing must not hide the run's own outcome
                env.close()
        for m in {id(m): m for m in roles.values() if m is not model}.values():
            await m.aclose()
            m.close()


def _start_mcp(specs: Sequence[str]) -> tuple[list[Any], list[Tool]]:
    servers, tools = [], []
    for spec in specs:
        from pistar.tools.mcp import mcp_tools

        server, found = mcp_tools(spec)
        servers.append(server)
        tools += found
    return servers, tools


# -- Ray -------------------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}  # per Ray worker process: loaded model and environments, reused across tasks


def _ray_episode(spec: AgentSpec, episode: Episode) -> Trajectory:
    if "model" not in _WORKER:
        _WORKER["model"] = spec.load_model()
        _WORKER["roles"] = spec.role_models(_WORKER["model"])
        _WORKER["mcp"] = _start_mcp(spec.mcp)[1]
    envs = _WORKER.setdefault("envs", {})
    if episode.env_id not in envs:
        envs[episode.env_id] = make_env(episode.env_id)
    env = envs[episode.env_id]
    policy = spec.policy(env, episode, _WORKER["model"], _WORKER["mcp"], _WORKER["roles"])
    return asyncio.run(play(env, policy, episode.seed, spec.budget(episode)))


async def _run_ray(
    todo: list[Episode],
    spec: AgentSpec,
    out: Path,
    store: Store,
    concurrency: int,
    address: str | None,
    on_episode: EpisodeCallback | None,
) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("the ray executor needs Ray: pip install 'ray==2.60.0'") from None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": concurrency}
        ray.init(**kwargs, include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_episode)
    pending: dict[Any, Episode] = {}
    queue = list(todo)
    try:
        while queue or pending:
            while queue and len(pending) < concurrency:
                episode = queue.pop(0)
                pending[remote.remote(spec, episode)] = episode
            ready, _ = await asyncio.to_thread(ray.wait, list(pending), num_returns=1)
            for ref in ready:
                episode = pending.pop(ref)
                try:
                    traj = ray.get(ref)
                except Exception as e:  # a worker that died: the episode is recorded as errored, the run goes on
                    traj = Trajectory(episode.env_id, episode.seed, spec.kind, stop_reason="error")
                    traj.error = f"ray worker failed: {type(e).__name__}: {str(e).splitlines()[0]}"
                metrics = await asyncio.to_thread(save_episode, store, out, episode, traj)
                if on_episode:
                    on_episode(episode, traj, metrics)
    finally:
        if started_here:
            ray.shutdown()


def load_run(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A finished or partial run: its metadata (config, versions, model) and its episode rows."""
    path = out / "results.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"{out} is not a pistar run (no results.sqlite): run `pistar eval` first")
    store = Store(path)
    try:
        meta = {k: store.get_meta(k) for k in ("config", "versions", "model")}
        return meta, store.rows()
    finally:
        store.close()
