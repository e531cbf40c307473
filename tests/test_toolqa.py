"""ToolQA: the expert solves every kind with real tool calls, the checker is lenient but exact, tasks are stable."""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pistar.agent import Decision, ExpertAgent, run_episode
from pistar.envs import toolqa
from pistar.envs.toolqa import KINDS, Task, ToolQAEnv, check, corpus_dir, make_task, parse_number
from pistar.records import Action
from pistar.tools.calculator import calculator

SEEDS = range(10)
TOOL_OF = {"arithmetic": "calculator", "units": "calculator", "data": "python", "lookup": "search"}


@pytest.mark.parametrize("kind", KINDS)
async def test_expert_solves_every_kind_with_real_tool_calls(kind: str) -> None:
    env = ToolQAEnv(kind)
    solved, kinds = 0, set()
    for seed in SEEDS:
        traj = await run_episode(env, ExpertAgent(tools=env.tools()), seed)
        solved += traj.success
        task_kind = traj.steps[0].observation.extras["kind"]
        kinds.add(task_kind)
        calls, answer = traj.steps[:-1], traj.steps[-1]
        assert traj.error is None and traj.stop_reason == "answered" and answer.action.kind == "answer"
        assert calls and all(s.action.kind == "tool" and s.action.name == TOOL_OF[task_kind] for s in calls)
        assert all(s.error is None and s.result for s in calls), [s.error for s in calls]
        assert answer.action.thought == "read from the tool output"  # not the generator's value
        assert answer.action.text in calls[-1].result  # read out of the last tool's real output
        if task_kind == "data":
            assert calls[0].result.endswith("[exit code 0]")  # ran in the bubblewrap sandbox
        if task_kind == "lookup":
            assert all(s.result.startswith("[1] ") for s in calls)
            assert len(calls) == len(env.task.plan) and (len(calls) == 2 or "the town where" not in traj.task)
        assert answer.info["expected"] == env.task.answer and traj.total_reward == float(traj.success)
    assert solved / len(SEEDS) >= 0.95, f"{kind}: {solved}/{len(SEEDS)}"
    assert solved == len(SEEDS)  # in practice, all of them
    assert kind != "mixed" or len(kinds) >= 3


async def test_expert_without_the_env_tools_still_calls_them_then_answers_the_truth() -> None:
    env = ToolQAEnv("arithmetic")
    traj = await run_episode(env, ExpertAgent(tools=[calculator]), 3)  # the env cannot see this tool's output
    call, answer = traj.steps
    assert call.action.name == "calculator" and call.result == env.task.answer  # the tool did compute the truth
    assert traj.success and "unseen" in answer.action.thought


def test_lookup_two_hops_need_two_searches() -> None:
    tasks = [make_task("lookup", s) for s in range(60)]
    assert {len(t.plan) for t in tasks} == {1, 2}
    assert sum(len(t.plan) == 2 for t in tasks) >= 15


# -- the checker -------------------------------------------------------------------------------------------------
def exact(answer: str) -> Task:
    return Task("arithmetic", "q", answer, True)


def test_numbers_in_many_formats() -> None:
    task = exact("1234567")
    for text in ("1234567", "1,234,567", "The answer is 1,234,567.", "= 1234567", "1234567.0", "Answer: 1234567 m"):
        assert check(task, text), text
    for text in ("1234568", "1234566.9", "", "unknown", "1,234,568", "12345670", "about a million"):
        assert not check(task, text), text
    assert check(task, "1.234567e6")  # the exact value in e-notation is still exact
    assert check(exact("-383697243870396024764"), "−383,697,243,870,396,024,764")  # big, negative, unicode minus
    assert not check(exact("-383697243870396024764"), "-3.836972438703960e20")  # a float is not exact


def test_tolerances() -> None:
    units = Task("units", "q", "6.272385", True, 1e-3, 1e-3)
    for text in ("6.272", "6.27 L/100 km", "≈ 6.2724 liters per 100 km", "6.275", "The result is 6.27."):
        assert check(units, text), text
    for text in ("6.26", "6.29", "627", "100", "about six", "37.5 mpg"):
        assert not check(units, text), text
    data = Task("data", "q", "54321.368421", True, 1e-3, 0.006)
    assert check(data, "54321.37") and check(data, "54,321.37") and check(data, "54300")
    assert not check(data, "54200") and not check(data, "5432.14")
    small = Task("data", "q", "12.345", True, 1e-3, 0.006)
    assert check(small, "12.35") and check(small, "12.34") and not check(small, "12.33")


def test_names_are_normalised_and_wrong_entities_rejected() -> None:
    task = Task("lookup", "q", "Mira Tolland", False)
    for text in ("Mira Tolland", "mira tolland", "  MIRA   Tolland. ", "The answer is Mira Tolland"):
        assert check(task, text), text
    for text in ("Mira", "Tolland", "Mira Tolland Jr", "Kira Tolland", "", "Mira Tolland and Sam Vex"):
        assert not check(task, text), text
    river = Task("lookup", "q", "Selwyn", False)
    assert check(river, "the river Selwyn") and check(river, "Selwyn River") and not check(river, "the river")


def test_parse_number_edge_cases() -> None:
    assert parse_number("8.46L/100km") == parse_number("8.46") and parse_number("nothing") is None
    assert parse_number("37.5 mpg is 6.27 L/100 km") == parse_number("6.27")  # the value after "is"
    assert parse_number("x2 = -5") == -5 and parse_number(".5") == parse_number("0.5")


def test_checker_on_generated_tasks_rejects_off_by_more_than_tolerance() -> None:
    for kind in ("arithmetic", "units", "data", "lookup"):
        for seed in range(40):
            task = make_task(kind, seed)
            assert check(task, task.answer), (kind, seed)
            if task.numeric:
                value = float(task.answer)
                off = value + max(abs(value) * 3e-3, 0.02) if task.rel_tol else int(task.answer) + 1
                assert not check(task, repr(off)), (kind, seed, task.answer)
            else:
                assert not check(task, task.answer + "x")


# -- the tasks ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_question_different_seeds_differ(kind: str) -> None:
    first, second = ToolQAEnv(kind), ToolQAEnv(kind)
    questions = [first.reset(seed).text for seed in SEEDS]
    assert questions == [second.reset(seed).text for seed in SEEDS]
    assert len(set(questions)) == len(SEEDS)


def test_tasks_are_the_same_in_another_process() -> None:
    code = "from pistar.envs.toolqa import make_task; print([make_task(k, 7).answer for k in ('data', 'lookup')])"
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": str(h)})
        for h in (1, 2)
    ]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout == str([make_task(k, 7).answer for k in ("data", "lookup")]) + "\n"


def test_observation_and_tools() -> None:
    env = ToolQAEnv("data")
    obs = env.reset(4)
    assert obs.extras["mission"] == env.task.question and obs.valid_actions == []
    assert env.task.question in obs.text and "Tools that help: python" in obs.text
    assert [t.name for t in ToolQAEnv("arithmetic").tools()] == ["calculator", "python"]
    assert [t.name for t in env.tools()] == ["python", "calculator"]
    assert [t.name for t in ToolQAEnv("lookup").tools()] == ["search"]
    assert [t.name for t in ToolQAEnv("mixed").tools()] == ["calculator", "python", "search"]
    assert ToolQAEnv("units").id == "toolqa/units" and ToolQAEnv().id == "toolqa/mixed"
    table = env.task.question.split("\n\n")[1].splitlines()
    assert 21 <= len(table) <= 41 and len({len(row.split(",")) for row in table}) == 1  # header + 20-40 rows


def test_lookup_answers_are_in_the_corpus_and_not_guessable() -> None:
    root = corpus_dir()
    corpus = "\n".join(p.read_text() for p in sorted(root.rglob("*.md")))
    assert len(list(root.rglob("*.md"))) == 240
    tasks = [make_task("lookup", s) for s in range(100)]
    for task in tasks:
        forms = {task.answer, f"{int(task.answer):,}"} if task.numeric else {task.answer}
        assert any(f in corpus for f in forms), task
        assert task.answer not in task.question
        names = re.findall(r"[A-Z][a-z]+(?: [A-Z][a-z]+)*", task.question.split(" ", 1)[1])
        assert names and all(n in corpus for n in names), task.question  # the question's entities are documented
    most_common = collections.Counter(t.answer for t in tasks).most_common(1)[0][1]
    assert most_common <= 10  # no answer is a safe guess


def test_corpus_is_regenerated_when_missing_or_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = corpus_dir()
    monkeypatch.setenv("PISTAR_HOME", str(tmp_path))
    root = corpus_dir()
    assert root == tmp_path / "toolqa" / "corpus"
    files = sorted(p.relative_to(root) for p in root.rglob("*.md"))
    assert files == sorted(p.relative_to(real) for p in real.rglob("*.md"))  # deterministic
    victim = root / files[0]
    original = victim.read_text()
    victim.unlink()
    (root / ".complete").write_text("stale")
    assert corpus_dir() == root and victim.read_text() == original
    assert not list(tmp_path.joinpath("toolqa").glob(".corpus-*"))  # no staging left behind


# -- episodes that fail ------------------------------------------------------------------------------------------
class FixedAnswer:
    """Answers the same text to every question: the floor any agent must beat."""

    name = "fixed"
    tools = ()

    def __init__(self, text: str) -> None:
        self.text = text

    async def act(self, obs, env, history) -> Decision:  # noqa: ANN001
        return Decision(Action("answer", text=self.text))


@pytest.mark.parametrize("text", ["", "-1", "unknown", "I cannot know that"])
async def test_a_fixed_answer_scores_zero(text: str) -> None:
    for kind in KINDS:
        env = ToolQAEnv(kind)
        results = [await run_episode(env, FixedAnswer(text), seed) for seed in SEEDS]
        assert not any(t.success for t in results) and all(t.total_reward == 0 for t in results)
        assert all(t.steps[-1].info["verdict"] == "incorrect" for t in results)


def test_step_rules() -> None:
    env = ToolQAEnv("arithmetic")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(Action("answer", text="1"))
    env.reset(0)
    result = env.step(Action("act", name="look"))
    assert result.terminated and result.reward == 0 and not env.success and result.info["given"] == "look"
    with pytest.raises(RuntimeError, match="one answer ends"):
        env.step(Action("answer", text=env.task.answer))
    env.reset(0)
    result = env.step(Action("answer", text=f"The answer is {int(env.task.answer):,}."))
    assert env.success and result.reward == 1.0 and result.observation.text == "Your answer is correct."
    with pytest.raises(ValueError, match="unknown ToolQA kind"):
        ToolQAEnv("trivia")
    with pytest.raises(ValueError, match="unknown ToolQA kind"):
        make_task("trivia", 0)


def test_expert_reads_a_failed_lookup_as_unknown() -> None:
    env = ToolQAEnv("lookup")
    env.reset(0)
    env.task = replace(env.task, plan=(replace(env.task.plan[0], pattern=r"no such sentence (\w+)"),))
    call = env.expert_action()
    env.tools()[0](call.args)  # the tool runs and reports its output to the env
    answer = env.expert_action()
    assert answer.kind == "answer" and answer.text == "unknown" and "did not give" in answer.thought
    assert toolqa.normalise(answer.text) != toolqa.normalise(env.task.answer)
