"""BabyAIEnv against real minigrid: level names, the text view, rendering, determinism and the expert."""

from __future__ import annotations

import random

import gymnasium
import numpy as np
import pytest
from minigrid.core.world_object import Ball, Door, Key, Wall

from pistar.envs import make_env
from pistar.envs.babyai import ACTIONS, LEVELS, BabyAIEnv, resolve_level
from pistar.records import Action

# Facing direction (minigrid agent_dir) -> world offsets (dx, dy) of one step forward and one step left,
# written out by hand (x grows east, y grows south) rather than taken from minigrid's own vectors.
FORWARD_LEFT = {
    0: ((1, 0), (0, -1)),  # east, left is north
    1: ((0, 1), (1, 0)),  # south, left is east
    2: ((-1, 0), (0, 1)),  # west, left is south
    3: ((0, -1), (-1, 0)),  # north, left is west
}


def act(name: str) -> Action:
    return Action(kind="act", name=name)


def empty_room(env: BabyAIEnv, pos: tuple[int, int], direction: int) -> None:
    """Clear the interior of GoToLocal's single 8x8 room and put the agent at `pos` facing `direction`."""
    core = env.core
    assert (core.width, core.height) == (8, 8)
    for x in range(1, 7):
        for y in range(1, 7):
            core.grid.set(x, y, None)
    core.agent_pos = np.array(pos)
    core.agent_dir = direction
    core.carrying = None


def seen_lines(text: str) -> list[str]:
    return [line[2:] for line in text.splitlines() if line.startswith("- ")]


# -- level names --------------------------------------------------------------------------------------


def test_all_registered_levels_are_known() -> None:
    registered = {e for e in gymnasium.registry if e.startswith("BabyAI")}
    assert len(registered) == 96 + 6  # minigrid's 96 and BALROG's MixedTrainLocal with its five kinds
    assert set(LEVELS.values()) == registered


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("goto", ["go to"]),
        ("pickup", ["pick up"]),
        ("open", ["open"]),
        ("putnext", ["put", "next to"]),
        ("pick_up_seq_go_to", ["pick up", "go to"]),
    ],
)
async def test_balrog_task_kinds_give_their_missions_and_the_bot_solves_them(kind: str, words: list[str]) -> None:
    from pistar.agent import ExpertAgent, run_episode

    env = BabyAIEnv(f"MixedTrainLocal/{kind}")
    assert env.id == f"babyai/MixedTrainLocal/{kind}"
    trajs = [await run_episode(env, ExpertAgent(), seed) for seed in range(8)]
    assert all(all(w in t.task for w in words) for t in trajs), [t.task for t in trajs]
    assert len({t.task for t in trajs}) >= 4  # seeds give different missions
    assert all(t.success for t in trajs)
    if kind == "pick_up_seq_go_to":
        assert any("then" in t.task for t in trajs) and any("after you" in t.task for t in trajs)


def test_unknown_balrog_kind_is_one_clear_line() -> None:
    with pytest.raises(ValueError, match="MixedTrainLocal/<goto"):
        resolve_level("MixedTrainLocal/fly")


@pytest.mark.parametrize("name", ["GoToLocal", "BabyAI-GoToLocal", "GoToLocal-v0", "BabyAI-GoToLocal-v0", "gotolocal"])
def test_level_name_forms(name: str) -> None:
    assert resolve_level(name) == ("GoToLocal", "BabyAI-GoToLocal-v0")


def test_level_with_v1_and_env_id() -> None:
    assert resolve_level("GoToObjS6") == ("GoToObjS6", "BabyAI-GoToObjS6-v1")
    env = make_env("babyai/BabyAI-PickupLoc-v0", render=False)
    assert isinstance(env, BabyAIEnv)
    assert env.id == "babyai/PickupLoc"


def test_unknown_level_is_one_clear_line() -> None:
    with pytest.raises(ValueError) as err:
        BabyAIEnv("GoToLocl")
    message = str(err.value)
    assert "\n" not in message
    assert "'GoToLocl'" in message
    assert "GoToLocal" in message


# -- observations ------------------------------------------------------------------------------------


def test_observation_fields_and_images() -> None:
    env = BabyAIEnv("GoToLocal", render=True)
    obs = env.reset(3)
    core = env.core
    assert obs.text.splitlines()[0] == f"Your goal: {core.mission}"
    assert obs.valid_actions == ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
    assert obs.extras["mission"] == core.mission
    assert obs.extras["direction"] == core.agent_dir
    assert obs.extras["position"] == [int(core.agent_pos[0]), int(core.agent_pos[1])]
    assert obs.extras["carrying"] is None
    assert len(obs.images) == 1
    frame = obs.images[0]
    assert frame.dtype == np.uint8
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.shape[0] >= 64 and frame.shape[1] >= 64
    moved = env.step(act("turn left")).observation.images[0]
    assert not np.array_equal(moved, frame)  # the frame shows the agent's new heading

    blind = BabyAIEnv("GoToLocal", render=False)
    obs = blind.reset(3)
    assert obs.images == []
    assert blind.step(act("turn left")).observation.images == []


@pytest.mark.parametrize("direction", [0, 1, 2, 3])
def test_description_of_a_hand_built_room(direction: int) -> None:
    env = BabyAIEnv("GoToLocal", render=False)
    env.reset(0)
    empty_room(env, (3, 3), direction)
    (fx, fy), (lx, ly) = FORWARD_LEFT[direction]
    env.core.grid.set(3 + 2 * fx + lx, 3 + 2 * fy + ly, Ball("red"))
    text = env.observation().text

    # Walls of the 8x8 room are at 0 and 7; from (3, 3) the view reaches 6 ahead and 3 to each side.
    walls = {  # direction -> (forward, left, right) distance of the wall, None when out of view
        0: (4, 3, None),
        1: (4, None, 3),
        2: (3, None, 3),
        3: (3, 3, None),
    }[direction]
    expected = ["a red ball 2 steps forward, 1 step left"]
    for distance, side in zip(walls, ["forward", "left", "right"], strict=True):
        if distance is not None:
            expected.append(f"a wall {distance} steps {side}")
    assert seen_lines(text) == expected
    assert text == "\n".join(
        [
            f"Your goal: {env.core.mission}",
            "You see:",
            *(f"- {line}" for line in expected),
            "You carry nothing.",
        ]
    )


def test_turning_moves_an_adjacent_object_around_the_agent() -> None:
    env = BabyAIEnv("GoToLocal", render=False)
    env.reset(0)
    empty_room(env, (3, 3), 3)  # facing north
    env.core.grid.set(2, 3, Ball("red"))  # west of the agent: on its left
    assert "a red ball 1 step left" in seen_lines(env.observation().text)
    after_left = env.step(act("turn left")).observation  # now facing west: the ball is ahead
    assert after_left.extras["direction"] == 2
    assert "a red ball 1 step forward" in seen_lines(after_left.text)
    after_two = env.step(act("turn left")).observation  # facing south: the ball is on the right
    assert "a red ball 1 step right" in seen_lines(after_two.text)
    after_three = env.step(act("turn left")).observation  # facing east: the ball is behind, out of view
    assert not any("ball" in line for line in seen_lines(after_three.text))


def test_occlusion_doors_and_carrying() -> None:
    env = BabyAIEnv("GoToLocal", render=False)
    env.reset(0)
    empty_room(env, (3, 5), 3)  # facing north
    for x in range(1, 7):
        env.core.grid.set(x, 3, Wall())
    door = Door("red", is_open=False, is_locked=True)
    env.core.grid.set(3, 3, door)
    env.core.grid.set(3, 1, Ball("green"))  # behind the wall row
    env.core.carrying = Key("blue")

    obs = env.observation()
    lines = seen_lines(obs.text)
    assert lines[0] == "a locked red door 2 steps forward"
    assert not any("ball" in line for line in lines)  # hidden behind the wall and the door
    assert not any("key" in line for line in lines)  # the carried key is not "seen" on the floor
    assert "a wall 2 steps forward" not in lines  # the door, not a wall, is what lies straight ahead
    assert "a wall 2 steps forward, 1 step left" not in lines  # wall cells are not listed one by one
    assert obs.text.endswith("You carry a blue key.")
    assert obs.extras["carrying"] == "blue key"

    door.is_locked, door.is_open = False, True
    lines = seen_lines(env.observation().text)
    assert "an open red door 2 steps forward" in lines
    assert "a green ball 4 steps forward" in lines


# -- dynamics ----------------------------------------------------------------------------------------


def test_same_seed_same_episode() -> None:
    a, b = BabyAIEnv("GoToLocal"), BabyAIEnv("GoToLocal")
    first, second = a.reset(7), b.reset(7)
    assert first.text == second.text and first.extras == second.extras
    assert np.array_equal(first.images[0], second.images[0])
    for name in ["go forward", "turn right", "go forward"]:
        assert a.step(act(name)).observation.text == b.step(act(name)).observation.text
    assert a.reset(7).text == first.text  # reseeding the same env replays the same layout
    missions = {a.reset(seed).extras["mission"] for seed in range(8)}
    assert len(missions) > 1


def test_level_generation_is_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    env = BabyAIEnv("PutNextLocal", render=False)
    for seed in (
        4,
        8,
        13,
    ):  # seeds whose layouts minigrid rejects (and reports on stdout) before accepting one
        env.reset(seed)
    assert "Sampling rejected" not in capsys.readouterr().out


def test_invalid_actions_raise() -> None:
    env = BabyAIEnv("GoToLocal", render=False)
    env.reset(0)
    with pytest.raises(ValueError, match="valid actions"):
        env.step(act("done"))
    with pytest.raises(ValueError):
        env.step(Action(kind="tool", name="go forward"))


def test_describe_actions_names_every_action() -> None:
    text = BabyAIEnv("GoToLocal", render=False).describe_actions()
    for name in ACTIONS:
        assert f"{name}:" in text


def test_random_policy_that_gives_up_does_not_succeed() -> None:
    env = BabyAIEnv("GoToLocal", max_steps=5, render=False)
    rng = random.Random(0)
    gave_up = 0
    for seed in range(5):
        env.reset(seed)
        assert env.success is False
        steps = 0
        while True:
            result = env.step(act(rng.choice(list(ACTIONS))))
            steps += 1
            if result.terminated or result.truncated:
                break
        assert steps <= 5
        assert result.info["success"] is env.success is (result.terminated and result.reward > 0)
        if not result.terminated:
            assert steps == 5 and result.truncated and not env.success
            gave_up += 1
    assert gave_up >= 4


# -- expert ------------------------------------------------------------------------------------------


def run_expert(env: BabyAIEnv, seed: int, limit: int = 2000) -> tuple[bool, int]:
    env.reset(seed)
    for steps in range(1, limit + 1):
        result = env.step(env.expert_action())
        if result.terminated or result.truncated:
            return env.success, steps
    return env.success, limit


def test_expert_solves_gotolocal_on_50_seeds() -> None:
    env = BabyAIEnv("GoToLocal", render=False)
    results = [run_expert(env, seed) for seed in range(50)]
    assert all(ok for ok, _ in results), [seed for seed, (ok, _) in enumerate(results) if not ok]
    assert env.success
    with pytest.raises(RuntimeError, match="over"):
        env.expert_action()


@pytest.mark.parametrize("level", ["PickupLoc", "UnlockPickup", "GoTo", "BossLevel"])
def test_expert_solves_harder_levels(level: str) -> None:
    env = BabyAIEnv(level, render=False)
    for seed in range(3):
        ok, steps = run_expert(env, seed)
        assert ok, (level, seed, steps)


def test_expert_recovers_from_other_actions() -> None:
    """Asked late, or overruled mid-episode, the bot still finishes the mission."""
    env = BabyAIEnv("GoToLocal", render=False)
    rng = random.Random(1)
    for seed in range(10):
        env.reset(seed)
        result = None
        for i in range(200):
            if i < 3 or i % 4 == 0:  # first three steps before the bot is asked, then every fourth overruled
                name = rng.choice(["turn left", "turn right", "go forward"])
            else:
                name = env.expert_action().name
            result = env.step(act(name))
            if result.terminated or result.truncated:
                break
        assert result is not None and result.terminated and env.success, seed
