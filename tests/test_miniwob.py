"""MiniWoBEnv against miniwob in a real headless Chromium: tasks, observations, actions, the scripted expert and a
browser killed mid-episode."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pistar.actions import ActionSpace
from pistar.agent import Budget, Decision, ExpertAgent, RandomAgent, run_episode
from pistar.envs.base import Env
from pistar.envs.miniwob import MiniWoBEnv
from pistar.records import Action, Observation, Step

SEEDS = range(5)


def act(name: str) -> Action:
    return Action(kind="act", name=name)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed child waiting to be reaped is gone for our purposes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def name_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def wait_gone(pids: list[int], seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def ref_of(obs: Observation, tag: str, text: str | None = None) -> int:
    return next(e["ref"] for e in obs.extras["dom"] if e["tag"] == tag and (text is None or e["text"] == text))


@pytest.fixture(scope="module")
def env() -> Iterator[MiniWoBEnv]:
    e = MiniWoBEnv("enter-text")
    yield e
    e.close()


# -- tasks -----------------------------------------------------------------------------------------------


def test_tasks_cover_the_registry_and_unknown_names_fail_in_one_line() -> None:
    tasks = MiniWoBEnv.tasks()
    assert len(tasks) > 100 and {"click-button", "enter-text", "book-flight", "flight.AA"} <= set(tasks)
    assert set(MiniWoBEnv.EXPERT_TASKS) <= set(tasks) and len(MiniWoBEnv.EXPERT_TASKS) >= 12
    assert MiniWoBEnv.resolve("miniwob/click-button-v1") == "click-button"
    with pytest.raises(ValueError) as err:
        MiniWoBEnv("click-buton")
    message = str(err.value)
    assert "\n" not in message and "click-buton" in message and "did you mean click-button" in message


def test_browser_starts_lazily_and_close_is_safe() -> None:
    env = MiniWoBEnv("click-test")
    assert env.id == "miniwob/click-test" and env.browser_pids() == []
    env.close()
    env.close()
    with pytest.raises(NotImplementedError, match="no expert"):
        MiniWoBEnv("book-flight").expert_action()


# -- observation and actions ----------------------------------------------------------------------------


def test_observation_has_screenshot_dom_and_instruction(env: MiniWoBEnv) -> None:
    obs = env.reset(0)
    image = obs.images[0]
    assert image.shape == (210, 160, 3) and image.dtype == np.uint8
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # a real page, not one colour
    mission = obs.extras["mission"]
    assert mission.startswith('Enter "') and mission in obs.text
    refs = {e["ref"] for e in obs.extras["dom"]}
    clicks = {int(a[7:-1]) for a in obs.valid_actions if a.startswith("click [")}
    assert clicks == refs and len(refs) >= 2
    field = ref_of(obs, "input_text")
    assert f"[{field}] input_text" in obs.text and "press Enter" in obs.valid_actions
    for e in obs.extras["dom"]:
        assert {"ref", "tag", "text", "value", "left", "top", "width", "height", "focused", "flags"} <= set(e)
    json.dumps(obs.extras)  # plain values, ready for the trajectory file
    assert "type [ref]" in env.describe_actions() and "press" in env.describe_actions()


def test_seeds_make_episodes_repeat(env: MiniWoBEnv) -> None:
    first = env.reset(3)
    again = env.reset(3)
    assert first.text == again.text and np.array_equal(first.images[0], again.images[0])
    assert any(env.reset(s).extras["mission"] != first.extras["mission"] for s in (4, 5, 6))


def test_typing_and_keys_solve_enter_text(env: MiniWoBEnv) -> None:
    obs = env.reset(1)
    target = re.search(r'"(.+)"', obs.extras["mission"]).group(1)
    field, submit = ref_of(obs, "input_text"), ref_of(obs, "button", "Submit")
    result = env.step(act(f"type [{field}] {target}x"))
    assert not result.terminated and result.reward == 0
    result = env.step(act("press Backspace"))
    value = next(e["value"] for e in result.observation.extras["dom"] if e["ref"] == field)
    assert value == target and f'value "{target}" focused' in result.observation.text
    result = env.step(act(f"click [{submit}]"))
    assert result.terminated and result.reward > 0 and env.success and result.info["raw_reward"] == 1
    assert "success" in result.observation.text
    with pytest.raises(RuntimeError, match="reset"):
        env.step(act(f"click [{submit}]"))


def test_a_missing_element_does_nothing_and_the_episode_goes_on(env: MiniWoBEnv) -> None:
    obs = env.reset(2)
    result = env.step(act("type [999] hello"))
    assert not result.terminated and result.reward == 0 and "[999] is not on the page" in result.info["error"]
    assert "Note: element [999] is not on the page" in result.observation.text
    assert env.step(act("click (500,500)")).info["error"].startswith("(500,500) is off the page")
    assert not env.step(act("scroll down [999]")).terminated
    assert not env.step(act(f"scroll down [{ref_of(obs, 'input_text')}]")).terminated
    assert not env.step(act("click (150,205)")).terminated  # a click on empty page
    with pytest.raises(ValueError, match="invalid MiniWoB action"):
        env.step(act("fly away"))


async def test_a_bad_action_in_an_episode_does_not_end_it(env: MiniWoBEnv) -> None:
    class Clumsy:
        """Types into an element that does not exist, then lets the expert finish."""

        name = "clumsy"
        tools = ()

        async def act(self, obs: Observation, env: Env, history: list[Step]) -> Decision:
            return Decision(act("type [999] oops") if not history else env.expert_action())

    traj = await run_episode(env, Clumsy(), 4, Budget(max_steps=10))
    assert traj.error is None and traj.success and traj.steps[0].info["error"]


def test_the_action_space_accepts_the_experts_actions() -> None:
    for task, seed in [("login-user", 0), ("click-checkboxes", 1), ("navigate-tree", 2), ("drag-single-shape", 3)]:
        env = MiniWoBEnv(task, render=False)
        try:
            obs, done = env.reset(seed), False
            while not done:
                space = ActionSpace(obs.valid_actions, env_patterns=obs.extras["action_patterns"])
                expert = env.expert_action()
                parsed = space.parse(json.dumps({"thought": "", "action": expert.name}))
                assert isinstance(parsed, Action) and parsed.name == expert.name, (task, expert.name, parsed)
                result = env.step(parsed)
                obs, done = result.observation, result.terminated
            assert env.success, task
        finally:
            env.close()
    schema = json.dumps(space.schema())
    assert "(?=" not in schema and "pattern" in schema


def test_the_clock_and_the_flight_pages_run_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    env = MiniWoBEnv("click-test", render=False, time_limit=1)
    try:
        obs = env.reset(0)
        time.sleep(1.5)  # past the 1 s limit: miniwob ends the episode on its own clock
        result = env.step(act(obs.valid_actions[0]))
        assert result.terminated and result.reward == -1 and result.info["reason"] == "timed out" and not env.success
    finally:
        env.close()
    env = MiniWoBEnv("flight.AA")  # FlightWoB pages come from a local HTTP server
    try:
        obs = env.reset(0)
        assert obs.images[0].shape == (667, 375, 3) and len(obs.extras["dom"]) > 10 and "Departure" in obs.text
        assert not env.step(act("press Tab")).terminated
    finally:
        env.close()
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no Chromium, chromedriver, miniwob or HTTP-server lines


# -- the scripted expert against random clicking -------------------------------------------------------------


async def test_expert_solves_its_tasks_and_random_does_not() -> None:
    expert: dict[str, int] = {}
    random: dict[str, int] = {}
    for task in MiniWoBEnv.EXPERT_TASKS:
        env = MiniWoBEnv(task, render=False)
        try:
            for seed in SEEDS:
                traj = await run_episode(env, ExpertAgent(), seed, Budget(max_steps=20))
                assert traj.error is None, (task, seed, traj.error)
                expert[task] = expert.get(task, 0) + traj.success
                traj = await run_episode(env, RandomAgent(seed), seed, Budget(max_steps=10))
                assert traj.error is None, (task, seed, traj.error)
                random[task] = random.get(task, 0) + traj.success
        finally:
            env.close()
    n = len(SEEDS) * len(MiniWoBEnv.EXPERT_TASKS)
    won, lucky = sum(expert.values()), sum(random.values())
    print(f"\nMiniWoB success over {len(SEEDS)} seeds: expert {won}/{n} ({won / n:.0%}), random {lucky}/{n}")
    for task in MiniWoBEnv.EXPERT_TASKS:
        print(f"  {task:24s} expert {expert[task]}/{len(SEEDS)}  random {random[task]}/{len(SEEDS)}")
    assert won >= 0.95 * n
    assert all(v >= len(SEEDS) - 1 for v in expert.values()), expert
    assert lucky < won / 2


# -- a browser that dies --------------------------------------------------------------------------------------


async def test_a_killed_browser_fails_the_episode_and_the_next_one_starts_afresh(env: MiniWoBEnv) -> None:
    class Killer:
        """Plays the expert, but kills this env's Chromium (SIGKILL) before its second action."""

        name = "killer"
        tools = ()

        async def act(self, obs: Observation, env: Env, history: list[Step]) -> Decision:
            if len(history) == 1:
                for pid in env.browser_pids():  # type: ignore[attr-defined]
                    if name_of(pid) == "chromium":
                        os.kill(pid, signal.SIGKILL)
            return Decision(env.expert_action())

    env.reset(0)
    before = env.browser_pids()
    traj = await run_episode(env, Killer(), 5, Budget(max_steps=10))
    assert traj.stop_reason == "error" and not traj.success
    assert (
        traj.error is not None
        and traj.error.startswith("environment failed")
        and "browser failed" in traj.error
        and "InvalidSessionId" in traj.error
    )
    assert wait_gone(before) == []  # the dead browser's chromedriver went too

    traj = await run_episode(env, ExpertAgent(), 6, Budget(max_steps=10))
    assert traj.error is None and traj.success
    after = env.browser_pids()
    assert after and not set(after) & set(before)
    assert {name_of(p) for p in after} >= {"chromedriver", "chromium"}

    env.close()
    assert wait_gone(after) == [] and env.browser_pids() == []
    traj = await run_episode(env, ExpertAgent(), 7, Budget(max_steps=10))  # a closed env starts again when reset
    assert traj.success
