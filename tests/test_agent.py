"""The agent loop with the real BabyAI environment: the expert, scripted model output, budgets, errors, records."""

import json
from pathlib import Path

import pytest
from conftest import ScriptedModel

from pistar.agent import Budget, ExpertAgent, LLMAgent, run_episode
from pistar.envs import make_env
from pistar.envs.babyai import BabyAIEnv
from pistar.metrics import aggregate, episode_metrics
from pistar.records import Trajectory
from pistar.tools.calculator import calculator
from pistar.viewer import render_html


async def test_expert_solves_50_of_50_gotolocal_through_the_loop() -> None:
    env = make_env("babyai/GoToLocal")
    env.render = False
    results = [await run_episode(env, ExpertAgent(), seed) for seed in range(50)]
    assert sum(t.success for t in results) == 50
    assert all(t.stop_reason == "terminated" and t.valid_action_rate == 1.0 for t in results)
    assert len({t.task for t in results}) > 5  # different seeds, different missions


async def test_garbage_output_counts_invalid_and_the_model_sees_the_error() -> None:
    replies = [
        "",
        '{"thought": "go',
        '{"thought": "x", "action": "fly"}',
        "z" * 10_000_000,
        '{"thought": "ok", "action": "turn left"}',
    ]
    model = ScriptedModel(replies)
    traj = await run_episode(BabyAIEnv("GoToLocal", render=False), LLMAgent(model), 0, Budget(max_steps=6))
    kinds = [s.error_kind for s in traj.steps]
    assert kinds[:4] == ["empty", "bad_json", "unknown_action", "too_long"]
    assert traj.invalid_actions == 4 and traj.steps[4].valid and traj.steps[4].action.name == "turn left"
    assert traj.stop_reason == "max_steps" and traj.num_steps == 6
    # the error of step i is in the last user message of step i+1
    for i in range(4):
        last_user = model.seen[i + 1][-1]["content"]
        assert traj.steps[i].error in last_user
    assert traj.valid_action_rate == pytest.approx(2 / 6)


async def test_tool_result_reaches_the_next_prompt_and_bad_args_are_invalid() -> None:
    model = ScriptedModel(
        [
            '{"thought": "compute", "tool": "calculator", "args": {"expression": "6*7"}}',
            '{"thought": "oops", "tool": "calculator", "args": {"expr": "1"}}',
            '{"thought": "move", "action": "go forward"}',
        ]
    )
    traj = await run_episode(BabyAIEnv(render=False), LLMAgent(model, [calculator]), 1, Budget(max_steps=3))
    assert traj.steps[0].result == "42" and traj.steps[0].valid
    assert "Result of calculator:\n42" in model.seen[1][-1]["content"]
    assert traj.steps[1].error_kind == "bad_args" and not traj.steps[1].valid
    assert "expression" in model.seen[2][-1]["content"]
    assert traj.steps[2].action.kind == "act"


async def test_history_window_is_bounded() -> None:
    model = ScriptedModel(['{"thought": "spin", "action": "turn left"}'])
    await run_episode(BabyAIEnv(render=False), LLMAgent(model, history=3), 0, Budget(max_steps=20))
    sizes = [len(m) for m in model.seen]
    assert max(sizes) == 1 + 2 * 3 + 1  # system + 3 turns + current
    assert "(16 earlier steps not shown)" in model.seen[-1][1]["content"]


async def test_token_and_time_budgets_stop_the_episode() -> None:
    model = ScriptedModel(['{"thought": "spin", "action": "turn left"}'])
    traj = await run_episode(BabyAIEnv(render=False), LLMAgent(model), 0, Budget(max_steps=100, max_tokens=45))
    assert traj.stop_reason == "max_tokens" and traj.num_steps == 3  # 15 tokens a call
    env = BabyAIEnv(render=False, max_steps=10**7)
    traj = await run_episode(env, LLMAgent(model), 0, Budget(max_steps=10**6, max_seconds=0.2))
    assert traj.stop_reason == "max_seconds" and traj.duration_s < 5


class CrashingEnv(BabyAIEnv):
    def step(self, action):  # noqa: ANN001, ANN201
        if self.core.step_count >= 2:
            raise RuntimeError("simulator segfault")
        return super().step(action)


async def test_a_crashing_environment_is_recorded_not_raised() -> None:
    traj = await run_episode(CrashingEnv(render=False), ExpertAgent(), 3)
    assert traj.stop_reason == "error" and "simulator segfault" in traj.error
    assert traj.num_steps == 3 and not traj.success


async def test_a_prompt_outgrowing_the_context_ends_the_episode_as_a_scored_failure(small_model) -> None:  # noqa: ANN001
    """The real 0.5B's 4,096-token slot cannot hold a prompt plus 4,000 tokens to generate: the agent's own doing, so
    the episode counts as failed (not as an infrastructure error left out of the success rate)."""
    agent = LLMAgent(small_model, max_tokens=4000)
    traj = await run_episode(BabyAIEnv(render=False), agent, 0, Budget(max_steps=5))
    assert traj.stop_reason == "context_full" and traj.error is None and not traj.success
    m = aggregate([episode_metrics(traj)])
    assert m["scored"] == 1 and m["errors"] == 0 and m["success_rate"] == 0.0


async def test_trajectory_roundtrip_with_frames_and_html(tmp_path: Path) -> None:
    traj = await run_episode(BabyAIEnv("GoToLocal"), ExpertAgent(), 5)
    path = traj.save(tmp_path / "ep")
    data = json.loads(path.read_text())
    assert data["summary"]["success"] is True
    frames = sorted((tmp_path / "ep" / "frames").glob("*.png"))
    assert len(frames) == traj.num_steps + 1
    loaded = Trajectory.load(tmp_path / "ep")
    assert loaded.summary() == traj.summary()
    assert [s.action.name for s in loaded.steps] == [s.action.name for s in traj.steps]
    page = render_html(loaded, tmp_path / "ep")
    assert page.count("data:image/png;base64,") == traj.num_steps + 1
    assert "success" in page and loaded.steps[0].observation.text.split("\n")[0] in page


def test_window_moves_in_jumps_so_prompts_extend_each_other() -> None:
    from pistar.agent import window_start

    starts = [window_start(n, 4) for n in range(12)]
    assert starts == [0, 0, 0, 0, 0, 2, 2, 4, 4, 6, 6, 8]
    assert all(2 <= n - s <= 4 for n, s in enumerate(starts) if n >= 4)
    assert [window_start(n, 0) for n in range(3)] == [0, 1, 2]


async def test_prompt_is_a_prefix_of_the_next_between_jumps() -> None:
    model = ScriptedModel(['{"thought": "spin", "action": "turn left"}'])
    await run_episode(BabyAIEnv(render=False, max_steps=100), LLMAgent(model, history=4), 0, Budget(max_steps=12))
    extends = [model.seen[t + 1][: len(model.seen[t]) - 1] == model.seen[t][:-1] for t in range(11)]
    # steps 0-4 grow the window; after that, every other step keeps the start and only appends
    assert extends[:4] == [True] * 4
    assert sum(extends[4:]) >= 3
    assert max(len(m) for m in model.seen) == 1 + 2 * 4 + 1


async def test_a_tool_sees_the_current_observation_and_an_unknown_tool_is_an_error() -> None:
    from pistar.agent import Decision
    from pistar.records import Action
    from pistar.tools.base import tool

    @tool
    def mission_words(observation: object, upper: bool = False) -> str:
        """Echo the mission of what the agent sees."""
        text = observation.extras["mission"]  # type: ignore[attr-defined]
        return text.upper() if upper else text

    assert "observation" not in mission_words.parameters.get("properties", {})

    class TwoToolCalls:
        name = "scripted"
        tools = [mission_words]

        async def act(self, obs, env, history):  # type: ignore[no-untyped-def]
            if not history:
                return Decision(Action("tool", name="mission_words", args={"upper": True}))
            return Decision(Action("tool", name="nope"))

    env = BabyAIEnv("GoToLocal")
    traj = await run_episode(env, TwoToolCalls(), 1, Budget(max_steps=2))
    assert traj.steps[0].result == traj.task.upper() and traj.steps[0].error is None
    assert traj.steps[1].error_kind == "unknown_action" and "nope" in (traj.steps[1].error or "")
