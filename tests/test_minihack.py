"""MiniHackEnv against the real NetHack Learning Environment: names, seeding, actions, text, images and success."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pistar.agent import Budget, ExpertAgent, RandomAgent, run_episode
from pistar.envs.minihack import BOXOBAN, TASKS, MiniHackEnv, available_tasks, resolve_task
from pistar.records import Action, Observation

STEPS = {"north": (0, -1), "east": (1, 0), "south": (0, 1), "west": (-1, 0)}
WALKABLE = set(".#<>@")


def act(name: str) -> Action:
    return Action(kind="act", name=name)


def map_of(obs: Observation) -> dict[tuple[int, int], str]:
    """The text map as {(x, y): char} in map coordinates, read back from the observation text only."""
    lines = obs.text.splitlines()
    start = lines.index("Map (you are @):") + 1
    rows = [line for line in lines[start:] if not line.startswith(("HP:", "Inventory:"))]
    left, top = obs.extras["map_origin"]
    return {(left + i, top + j): c for j, row in enumerate(rows) for i, c in enumerate(row) if c != " "}


@pytest.fixture
def corridor() -> Iterator[MiniHackEnv]:
    env = MiniHackEnv("Corridor-R3")
    yield env
    env.close()


# -- names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["MazeWalk-9x9", "MiniHack-MazeWalk-9x9-v0", "mazewalk-9x9", "MazeWalk-9x9-v0", "minihack-MAZEWALK-9x9"]
)
def test_task_name_forms(name: str) -> None:
    assert resolve_task(name) == ("MazeWalk-9x9", "MiniHack-MazeWalk-9x9-v0")


def test_unknown_task_lists_the_available_ones() -> None:
    with pytest.raises(ValueError) as err:
        resolve_task("MazeWalk-10x10")
    message = str(err.value)
    assert "MazeWalk-10x10" in message and "did you mean" in message
    for name in TASKS:
        assert name in message


def test_boxoban_needs_its_downloaded_levels() -> None:
    if "Boxoban-Hard" in available_tasks():
        pytest.skip("the Boxoban levels have been downloaded here")
    assert not set(BOXOBAN) & set(available_tasks())
    with pytest.raises(ValueError, match="download_boxoban_levels"):
        MiniHackEnv("Boxoban-Hard")


def test_every_task_is_registered_and_starts() -> None:
    for name in TASKS:
        env = MiniHackEnv(name, render=False)
        try:
            obs = env.reset(0)
            assert env.id == f"minihack/{name}" and "@" in obs.text
        finally:
            env.close()


# -- seeding, actions, observation -----------------------------------------------------------------------


def test_reset_is_deterministic_per_seed(corridor: MiniHackEnv) -> None:
    def play(seed: int) -> list[str]:
        texts = [corridor.reset(seed).text]
        texts += [corridor.step(act(a)).observation.text for a in ("east", "south", "west", "search")]
        return texts

    first = play(7)
    assert play(7) == first
    assert any(corridor.reset(s).text != first[0] for s in (8, 9, 10))


def test_each_valid_action_steps(corridor: MiniHackEnv) -> None:
    obs = corridor.reset(1)
    names = obs.valid_actions
    expected = ["north", "east", "south", "west", "northeast", "southeast", "southwest", "northwest"]
    assert names == [*expected, "open", "kick", "search"]
    for name in names:
        corridor.reset(1)
        result = corridor.step(act(name))
        assert not result.truncated and "success" in result.info
        if name in ("open", "kick"):  # both ask for a direction, which a move answers
            assert result.observation.extras["message"] == "In what direction?"
            assert not corridor.step(act("north")).truncated
    with pytest.raises(ValueError, match="valid actions"):
        corridor.step(act("fly"))


def test_text_has_the_map_with_the_agent(corridor: MiniHackEnv) -> None:
    obs = corridor.reset(3)
    x, y = obs.extras["position"]
    grid = map_of(obs)
    assert grid[(x, y)] == "@" and list(grid.values()).count("@") == 1
    assert {"|", "-"} <= set(grid.values())  # Corridor starts in a lit room with walls
    assert obs.text.startswith("Message: ") and "Next to you:" in obs.text
    rows = obs.text.split("Map (you are @):\n", 1)[1].splitlines()
    image = obs.images[0]
    assert image.shape == (len(rows) * 16, max(map(len, rows)) * 16, 3)  # one 16x16 tile per map character
    assert image.dtype.name == "uint8" and image.max() > 0


def test_things_in_view_have_direction_and_distance() -> None:
    env = MiniHackEnv("MazeWalk-9x9", render=False)
    try:
        obs = env.reset(3)  # this maze starts with the stairs right next to the agent, to the west
        assert env.reset(3).images == []
        x, y = obs.extras["position"]
        assert map_of(obs)[(x - 1, y)] == ">"
        assert "- staircase down: 1 step west" in obs.text
        result = env.step(act("west"))
        assert result.terminated and result.reward > 0 and result.info["success"] and env.success
        with pytest.raises(RuntimeError, match="reset"):
            env.step(act("west"))
    finally:
        env.close()


@pytest.mark.parametrize("max_steps", [5, None])
def test_step_limit_truncates_and_keeps_the_view(max_steps: int | None) -> None:
    env = MiniHackEnv("MazeWalk-9x9", max_steps=max_steps, render=False)
    try:
        assert env.max_steps == (max_steps or 200)  # None: the task's own limit
        env.reset(3)
        results = [env.step(act("east")) for _ in range(env.max_steps)]  # away from the stairs
        assert results[-1].truncated and not any(r.terminated or r.truncated for r in results[:-1])
        assert not results[-1].terminated and results[-1].info["end_status"] == "running"
        assert not env.success and results[-1].info["success"] is False
        assert "@" in results[-1].observation.text  # NLE would have quit the game and blanked the map
    finally:
        env.close()


async def test_death_ends_without_success() -> None:
    env = MiniHackEnv("Quest-Easy", render=False)
    try:
        traj = await run_episode(env, RandomAgent(0), 0, Budget(max_steps=300))
        assert traj.stop_reason == "terminated" and traj.steps[-1].info["end_status"] == "death"
        assert not traj.success and traj.final_observation is not None
        assert "the game is over" in traj.final_observation.text
    finally:
        env.close()


def test_questions_offer_their_answer_keys() -> None:
    env = MiniHackEnv("Quest-Easy", render=False)
    try:
        obs = env.reset(1)
        assert "Inventory:" in obs.text and "HP:" in obs.text
        assert "f" not in obs.valid_actions
        asked = env.step(act("apply")).observation
        assert asked.extras["message"].startswith("What do you want to use or apply?")
        assert {"f", "g"} <= set(asked.valid_actions)
        answered = env.step(act("f")).observation  # the horn asks something back: a y/n/q question
        assert "f" not in answered.valid_actions and "[ynq]" in answered.extras["message"]
        assert {"y", "n", "q"} <= set(answered.valid_actions)
        assert "brackets" in env.describe_actions()
    finally:
        env.close()


def test_describe_actions(corridor: MiniHackEnv) -> None:
    text = corridor.describe_actions()
    assert "'>'" in text and "north" in text and "open" in text and "direction" in text
    assert "brackets" not in text  # no item questions in a navigation task


# -- episodes through the agent loop -------------------------------------------------------------------


async def test_scripted_explorer_reaches_the_stairs() -> None:
    env = MiniHackEnv("MazeWalk-9x9", render=False)
    try:
        for seed in range(5):
            traj = await run_episode(env, ExpertAgent(), seed, Budget(max_steps=200))
            assert traj.error is None, traj.error
            assert traj.success and traj.stop_reason == "terminated", (seed, traj.num_steps)
            assert traj.steps[-1].info["end_status"] == "task_successful"
    finally:
        env.close()


async def test_random_policy_runs() -> None:
    successes = 0
    for task in ("MazeWalk-9x9", "Corridor-R3"):
        env = MiniHackEnv(task, render=False)
        try:
            for seed in range(3):
                traj = await run_episode(env, RandomAgent(seed), seed, Budget(max_steps=50))
                assert traj.error is None and traj.invalid_actions == 0
                assert traj.stop_reason in ("terminated", "truncated", "max_steps")
                successes += traj.success
        finally:
            env.close()
    print(f"random policy: {successes}/6 successes in 50 steps")
