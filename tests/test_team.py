"""Reasoning, reflection, memory and teams: bounded prompts, durable memory, shortcuts that get used, roles."""

import asyncio
import json
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pistar.agent import Budget, ExpertAgent, run_episode
from pistar.envs.babyai import BabyAIEnv
from pistar.envs.textworld import TextWorldEnv
from pistar.memory import LongTermMemory, Shortcut
from pistar.metrics import episode_metrics
from pistar.models.base import Completion, Model
from pistar.records import Action, Observation, Step
from pistar.team import TeamAgent, TeamConfig, _tried_here, load_config, mine_shortcuts, play


class RoleScript(Model):
    """A scripted model that answers each role in its own format: the manager plans, the reflector judges, the
    notetaker notes, and the operator plays `actions` in turn. Prompt sizes are what the test measures."""

    uri = "scripted"

    def __init__(self, actions: list[str]):
        self.actions = actions
        self.operator_prompts: list[int] = []
        self.seen: list[list[dict[str, Any]]] = []

    async def complete(self, messages: list[dict[str, Any]], *, schema: dict | None = None, **_: Any) -> Completion:
        await asyncio.sleep(0)
        props = (schema or {}).get("properties", {})
        size = sum(len(m["content"]) if isinstance(m["content"], str) else 0 for m in messages)
        if "plan" in props:
            text = json.dumps({"plan": "find the target, then reach it", "subgoal": "look around"})
        elif "verdict" in props:
            text = json.dumps({"verdict": "progress", "reason": "the view changed"})
        elif "notes" in props:
            text = json.dumps({"notes": "the target is somewhere in the room"})
        elif "lesson" in props:
            text = json.dumps({"lesson": "turn towards the target before going forward"})
        else:
            self.seen.append(messages)
            self.operator_prompts.append(size)
            action = self.actions[(len(self.operator_prompts) - 1) % len(self.actions)]
            text = json.dumps({"thought": "t", "action": action})
        return Completion(text=text, prompt_tokens=size // 4, completion_tokens=len(text) // 4, finish_reason="stop")


async def test_working_memory_stays_bounded_over_a_100_step_episode() -> None:
    """With compaction, every role on and 100 steps, the operator's prompt does not grow with the episode."""
    config = TeamConfig(reasoning="plan", action_reflector=True, notetaker=True, compact=True, history=4)
    model = RoleScript(["turn left", "go forward", "turn right", "go forward", "toggle"])
    env = BabyAIEnv("BossLevel", max_steps=1000)
    traj = await run_episode(env, TeamAgent(model, config=config), 1, Budget(max_steps=100))
    assert traj.num_steps == 100
    sizes = model.operator_prompts
    early, late = max(sizes[10:30]), max(sizes[70:100])
    assert late <= 1.15 * early, (early, late)
    roles = {c.role for s in traj.steps for c in s.calls}
    assert roles == {"operator", "manager", "reflector", "notetaker"}
    assert "Summary of earlier steps: steps 0-" in model.seen[-1][-1]["content"]
    # the single agent without compaction is bounded too (the window), but says less about the past
    plain = RoleScript(["turn left", "go forward"])
    await run_episode(env, TeamAgent(plain, config=TeamConfig()), 1, Budget(max_steps=40))
    assert "Summary of earlier steps" not in plain.seen[-1][-1]["content"]


def test_long_term_memory_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite"
    memory = LongTermMemory(path)
    assert memory.add_tip("babyai/GoToLocal", "go to the red ball", "Turn to face the object before moving.")
    assert not memory.add_tip("babyai/GoToLocal", "go to the red ball", "Turn to face the object before moving.")
    memory.add_tip("textworld/cooking", "cook the meal", "Read the cookbook first.")
    memory.add_shortcut(Shortcut("turn_around", ["turn left", "turn left"], "face the other way", env="babyai/x"))
    del memory
    code = (
        "import sys; from pistar.memory import LongTermMemory; m = LongTermMemory(sys.argv[1]); "
        "r = m.recall('babyai/PickupLoc', 'pick up the blue key'); print(r.tips[0]); print(r.shortcuts[0].name); "
        "print(len(m.recall('textworld/x', 'prepare dinner').tips))"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["Turn to face the object before moving.", "turn_around", "1"]


def _write_tips(path: str, worker: int) -> None:
    memory = LongTermMemory(path)
    for i in range(15):
        memory.add_tip("babyai/GoToLocal", f"task {worker}", f"lesson {worker}-{i}")
        memory.add_episode("babyai/GoToLocal", f"task {worker}-{i}", i, True, [{"observation": "o", "action": "a"}])


def test_parallel_writers_do_not_corrupt_long_term_memory(tmp_path: Path) -> None:
    path = str(tmp_path / "memory.sqlite")
    LongTermMemory(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_tips, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    assert LongTermMemory(path).counts() == {"tips": 60, "shortcuts": 0, "episodes": 60}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_shortcut_learned_in_one_episode_is_executed_in_a_later_one(tmp_path: Path) -> None:
    memory = LongTermMemory(tmp_path / "memory.sqlite")
    env = BabyAIEnv("GoToLocal")
    config = TeamConfig(memory=str(tmp_path / "memory.sqlite"))
    # episode 1: a solved episode (the BabyAI bot) is written to memory; its repeated moves become shortcuts
    for seed in range(20):
        solved = await run_episode(env, ExpertAgent(), seed)
        if mine_shortcuts(solved):
            break
    learner = TeamAgent(RoleScript(["go forward"]), config=config, memory=memory)
    learner.learn(solved)
    mined = mine_shortcuts(solved)
    assert mined and memory.counts()["shortcuts"] == len(mined) and memory.counts()["episodes"] == 1
    # episode 2: the operator calls one shortcut as a single action; the agent plays its whole sequence
    cut = next(c for c in mined if c.actions[0] in ("turn left", "turn right", "go forward"))
    model = RoleScript([f"shortcut: {cut.name}", "go forward"])
    traj = await run_episode(env, TeamAgent(model, config=config, memory=memory), 100, Budget(max_steps=6))
    assert "Shortcuts available now: shortcut: " in model.seen[0][-1]["content"]
    played = [s.action.name for s in traj.steps[: len(cut.actions)]]
    assert played == cut.actions
    assert cut.name in traj.steps[0].action.thought and "continues" in traj.steps[1].action.thought
    assert not traj.steps[1].calls  # the shortcut's later actions cost no model call
    assert memory.recall("babyai/GoToLocal", traj.task).shortcuts[0].uses >= 1 or any(
        s.uses for s in memory.recall("babyai/GoToLocal", traj.task, shortcuts=10).shortcuts
    )


async def test_a_solved_example_shows_each_step_s_state_not_the_goal_again(tmp_path: Path) -> None:
    """TextWorld opens every observation with the goal; the recalled example must show the rooms the expert saw."""
    memory = LongTermMemory(tmp_path / "memory.sqlite")
    env = TextWorldEnv("coin_collector")
    solved = await run_episode(env, ExpertAgent(), 0)
    assert solved.success and solved.steps[0].observation.text.startswith("Goal: ")
    TeamAgent(RoleScript(["look"]), config=TeamConfig(), memory=memory).learn(solved)
    model = RoleScript(["look"])
    agent = TeamAgent(model, config=TeamConfig(examples=1), memory=memory)
    await run_episode(env, agent, 1, Budget(max_steps=1))
    system = model.seen[0][0]["content"]
    example = system[system.index("A solved example") :].splitlines()[1:]
    assert len(example) == solved.num_steps
    assert not any(line.startswith("Goal:") for line in example)
    assert all("-=" in line for line in example)  # each step names the room it was taken in
    assert [line.rsplit(" -> ", 1)[1] for line in example] == [s.action.name for s in solved.steps]


async def test_reflexion_retries_a_failed_episode_with_its_lesson_and_counts_all_tokens(tmp_path: Path) -> None:
    config = TeamConfig(attempts=2, memory=str(tmp_path / "m.sqlite"))
    model = RoleScript(["turn left"])
    agent = TeamAgent(model, config=config, memory=LongTermMemory(tmp_path / "m.sqlite"))
    traj = await play(BabyAIEnv("GoToLocal"), agent, 3, Budget(max_steps=4))
    assert not traj.success and len(traj.config["earlier_attempts"]) == 1
    assert traj.config["earlier_attempts"][0]["lesson"] == "turn towards the target before going forward"
    second_attempt_system = model.seen[4][0]["content"]
    assert "turn towards the target before going forward" in second_attempt_system
    assert "turn towards the target" not in model.seen[0][0]["content"]
    metrics = episode_metrics(traj)
    assert metrics["attempts"] == 2 and metrics["tokens_in"] > traj.tokens[0]
    assert "manager" in metrics["tokens_by_role"]  # the lesson writer's tokens are the manager's
    assert agent.memory.counts()["tips"] == 1  # the final failure's lesson is kept for later tasks


class Stubborn(Model):
    """An operator that repeats its favourite action whenever the schema still offers it, as small models do."""

    uri = "stubborn"

    def __init__(self, favourite: str):
        self.favourite = favourite
        self.offered: list[list[str]] = []

    async def complete(self, messages: list[dict[str, Any]], *, schema: dict | None = None, **_: Any) -> Completion:
        await asyncio.sleep(0)
        if "verdict" in (schema or {}).get("properties", {}):
            return Completion(text=json.dumps({"verdict": "progress", "reason": "r"}), finish_reason="stop")
        offered = schema["properties"]["action"]["enum"]
        self.offered.append(offered)
        action = self.favourite if self.favourite in offered else offered[0]
        return Completion(text=json.dumps({"thought": "t", "action": action}), finish_reason="stop")


async def test_the_action_reflector_stops_a_loop_the_operator_would_repeat() -> None:
    """In a real BabyAI room, `pick up` with nothing in front changes nothing. Without the reflector the operator
    repeats it to the end; with it, what already led back to this observation is not offered again."""
    env = BabyAIEnv("GoToLocal")
    plain = Stubborn("pick up")
    traj = await run_episode(env, TeamAgent(plain, config=TeamConfig()), 2, Budget(max_steps=10))
    assert [s.action.name for s in traj.steps] == ["pick up"] * 10
    model = Stubborn("pick up")
    agent = TeamAgent(model, config=TeamConfig(action_reflector=True))
    traj = await run_episode(env, agent, 2, Budget(max_steps=10))
    names = [s.action.name for s in traj.steps]
    assert names[0] == "pick up" and names[1] != "pick up", names
    assert "pick up" not in model.offered[1] and "pick up" in model.offered[0]
    assert traj.steps[1].observation.text == traj.steps[0].observation.text  # the same situation, a new choice
    # Each new view gets one `pick up`, then a turn; four left turns bring back the first view, where both were
    # tried already, so the operator is made to do a third thing instead of going round again.
    assert names[:8] == ["pick up", "turn left"] * 4, names
    assert names[8] not in ("pick up", "turn left"), names


def test_what_was_tried_most_from_an_observation_is_withheld() -> None:
    here = Observation("a locked door ahead", extras={"valid_actions": ["toggle", "turn left", "turn right"]})
    there = Observation("a key ahead", extras={"valid_actions": ["toggle", "turn left", "turn right"]})
    steps = [
        Step(0, here, Action("act", name="toggle")),
        Step(1, there, Action("act", name="turn right")),  # taken elsewhere: does not count here
        Step(2, here, Action("act", name="type [3] x")),  # not a listed action: nothing to withhold
        Step(3, here, Action("act", name="turn left")),
    ]
    assert _tried_here(here, steps) == ["toggle", "turn left"]
    steps.append(Step(4, here, Action("act", name="turn right")))
    assert _tried_here(here, steps) == []  # everything was tried once: offer everything again rather than nothing
    steps.append(Step(5, here, Action("act", name="toggle")))
    assert _tried_here(here, steps) == ["toggle"]  # ...but not the one just taken again: go round, not back
    steps += [Step(6, here, Action("act", name="turn left")), Step(7, there, Action("act", name="toggle"))]
    assert _tried_here(here, steps) == ["toggle", "turn left"]


def test_agent_config_files_and_inline_and_their_errors(tmp_path: Path) -> None:
    team = load_config("agents/team.yaml")
    assert team.reasoning == "plan" and team.action_reflector and team.notetaker and team.name == "team"
    inline = load_config("reasoning=cot,action_reflector=true,history=2")
    assert inline.reasoning == "cot" and inline.action_reflector and inline.history == 2
    for spec, message in [
        ("reasoning=telepathy", "reasoning: Input should be 'direct', 'cot' or 'plan'"),
        ("attempts=9", "attempts: Input should be less than or equal to 5"),
        ("colour=blue", "colour: unknown key"),
        ("action_reflection=true", "did you mean 'action_reflector'"),
        ("nonsense", "expected key=value"),
        ("missing.yaml", "does not exist"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_config(spec)
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {pilot: embedded}\n")
    with pytest.raises(ValueError, match="unknown role"):
        load_config(str(bad))


def test_a_reply_limit_given_to_the_agent_spec_reaches_the_team_too() -> None:
    from pistar.evaluate import AgentSpec
    from pistar.suites import Episode

    env, episode, model = BabyAIEnv("GoToLocal"), Episode("babyai/GoToLocal", 0, 8), RoleScript(["go forward"])
    limits = {
        (team, tokens): AgentSpec(team=team, max_tokens=tokens).policy(env, episode, model).max_tokens
        for team in (None, "reasoning=cot")
        for tokens in (None, 48)
    }
    assert limits == {(None, None): 160, (None, 48): 48, ("reasoning=cot", None): 320, ("reasoning=cot", 48): 48}


async def test_the_full_team_with_the_real_small_model_records_every_role(small_model: Model, tmp_path: Path) -> None:
    config = load_config("agents/team.yaml").model_copy(update={"memory": str(tmp_path / "memory.sqlite")})
    agent = TeamAgent(small_model, config=config, memory=LongTermMemory(config.memory), seed=1)
    # Seed 2's goal is 6 steps away (the bot's path), so no luck can end the episode before its 3 steps.
    traj = await play(BabyAIEnv("GoToLocal"), agent, 2, Budget(max_steps=3))
    assert traj.error is None and traj.num_steps == 3
    roles = [c.role for s in traj.steps for c in s.calls]
    assert {"operator", "manager"} <= set(roles)
    # The reflector judges every action after the first; an unchanged observation is judged by rule, the rest by
    # the model, one recorded call each.
    verdicts = traj.config["reflections"]
    assert [v["step"] for v in verdicts] == list(range(traj.num_steps - 1))
    assert roles.count("reflector") == sum(v["by"] == "model" for v in verdicts)
    metrics = episode_metrics(traj)
    assert all(tin > 0 and tout > 0 for tin, tout in metrics["tokens_by_role"].values())
    manager = next(c for s in traj.steps for c in s.calls if c.role == "manager")
    assert json.loads(manager.completion)["plan"]  # constrained decoding: the plan parses
