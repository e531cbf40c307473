"""The evaluation harness: reproducible results, crash-safe resume, Ray = local, metrics, report, compare."""

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pistar.agent import Decision
from pistar.envs.babyai import BabyAIEnv
from pistar.evaluate import AgentSpec, evaluate, evaluate_shown, load_run
from pistar.metrics import compare_success, episode_metrics, wilson
from pistar.records import Action
from pistar.suites import Suite, TaskSpec, load_suite

TIMING = ("duration_s", "latency_s", "step_s")


def outcome(rows: list[dict]) -> list[dict]:
    """A run's results without wall-clock fields, which differ between any two runs."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def small_suite() -> Suite:
    return Suite(
        "small",
        [
            TaskSpec(env="babyai/MixedTrainLocal/goto", seeds=4, max_steps=40),
            TaskSpec(env="babyai/MixedTrainLocal/putnext", seeds=[3, 9], max_steps=40),
            TaskSpec(env="textworld/coin_collector", seeds=2, max_steps=30),
        ],
    )


async def test_same_suite_and_seeds_give_identical_results_at_any_concurrency(tmp_path: Path) -> None:
    suite = small_suite()
    for kind in ("expert", "random"):
        one = await evaluate(suite, AgentSpec(kind=kind), tmp_path / f"{kind}1", concurrency=1)
        again = await evaluate(suite, AgentSpec(kind=kind), tmp_path / f"{kind}2", concurrency=3)
        assert len(one) == len(suite.episodes()) == 8
        assert outcome(one) == outcome(again)
    expert = await evaluate(suite, AgentSpec(kind="expert"), tmp_path / "expert1")  # all done: nothing replayed
    assert [r["success"] for r in expert[:6]] == [True] * 6
    random_rows = outcome(await evaluate(suite, AgentSpec(kind="random"), tmp_path / "random1"))
    assert [r["success"] for r in random_rows] != [r["success"] for r in outcome(expert)]


async def test_a_shown_run_prints_a_line_per_episode_and_says_when_it_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Benches play for hours through `evaluate_shown`: each finished episode is a line, a rerun says what it kept."""
    suite = Suite("small", [TaskSpec(env="babyai/MixedTrainLocal/goto", seeds=3, max_steps=40)])
    rows = await evaluate_shown(suite, AgentSpec(kind="expert"), tmp_path / "run", "goto expert", concurrency=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("goto expert: ")]
    assert len(rows) == 3 and all(r["success"] for r in rows)
    assert sorted(line.split(" seed ")[1].split(",")[0] for line in lines) == ["0", "1", "2"]
    assert all(" success babyai/MixedTrainLocal/goto seed " in line and "stop: terminated" in line for line in lines)
    suite = Suite("small", [TaskSpec(env="babyai/MixedTrainLocal/goto", seeds=4, max_steps=40)])
    await evaluate_shown(suite, AgentSpec(kind="expert"), tmp_path / "run", "goto expert")
    out = capsys.readouterr().out
    assert "resuming in" in out and "3 of 4 episodes already done" in out and out.count("success babyai") == 1


def test_kill_9_mid_run_then_rerun_completes_without_duplicates(tmp_path: Path) -> None:
    suite_file = tmp_path / "boss.yaml"
    suite_file.write_text("name: boss\ntasks:\n  - env: babyai/BossLevel\n    seeds: 10\n    max_steps: 300\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pistar.cli", "eval", str(suite_file), "--agent", "expert", "--concurrency", "2"]
    cmd += ["--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = out / "results.sqlite"
    deadline = time.time() + 240
    finished = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as c:
                    finished = c.execute("SELECT count(*) FROM episodes").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if finished >= 2:
                break
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _, rows = load_run(out)
    assert 2 <= len(rows) < 10  # what was committed survived, in-flight episodes were lost
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "300"})
    assert again.returncode == 0, again.stderr
    assert f"{len(rows)} of 10 episodes already done" in again.stderr
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        seeds = [s for (s,) in c.execute("SELECT seed FROM episodes WHERE env_id = 'babyai/BossLevel'")]
    assert sorted(seeds) == list(range(10))
    _, final = load_run(out)
    assert all(r["success"] for r in final)
    for r in final:  # every row points at a complete trajectory file
        assert json.loads((out / r["path"] / "trajectory.json").read_text())["seed"] == r["seed"]


async def test_ray_executor_gives_the_same_results_as_in_process(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    suite = Suite("ray", [TaskSpec(env="babyai/MixedTrainLocal/pickup", seeds=4, max_steps=40)])
    local = await evaluate(suite, AgentSpec(kind="expert"), tmp_path / "local", concurrency=2)
    remote = await evaluate(suite, AgentSpec(kind="expert"), tmp_path / "ray", concurrency=2, executor="ray")
    assert outcome(local) == outcome(remote)
    assert all(r["success"] for r in remote)
    rand_local = await evaluate(suite, AgentSpec(kind="random"), tmp_path / "rl", concurrency=2)
    rand_ray = await evaluate(suite, AgentSpec(kind="random"), tmp_path / "rr", concurrency=2, executor="ray")
    assert outcome(rand_local) == outcome(rand_ray)


async def test_report_renders_in_headless_chromium_with_pictures_and_no_console_errors(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    from pistar.report import write_report

    out = tmp_path / "run"
    await evaluate(small_suite(), AgentSpec(kind="random"), out, concurrency=2)
    path = write_report(out)

    def look() -> tuple[list[str], list[int], str, int]:
        errors: list[str] = []
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=list(CHROMIUM_FLAGS))
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            summary = page.inner_text("#summary")
            rows = page.eval_on_selector_all("#episodes tr", "els => els.length")
            page.click("#episodes a >> nth=0")  # the per-episode step viewer opens, with its frames
            page.wait_for_selector("section.step img")
            widths += page.eval_on_selector_all("section.step img", "els => els.map(e => e.naturalWidth)")
            browser.close()
        return errors, widths, summary, rows

    errors, widths, summary, rows = await asyncio.to_thread(look)
    assert errors == []
    assert len(widths) >= 3 + 8 and all(w > 0 for w in widths)  # 3 plots, 8 thumbnails, then episode frames
    assert "babyai/MixedTrainLocal/goto" in summary and "overall" in summary
    assert rows == 1 + 8


from pistar.envs.miniwob import CHROME_FLAGS as CHROMIUM_FLAGS  # noqa: E402


def test_compare_finds_the_expert_significantly_better_than_random(tmp_path: Path) -> None:
    suite = Suite("cmp", [TaskSpec(env="babyai/MixedTrainLocal/goto", seeds=12, max_steps=20)])
    asyncio.run(evaluate(suite, AgentSpec(kind="random"), tmp_path / "a", concurrency=4))
    asyncio.run(evaluate(suite, AgentSpec(kind="expert"), tmp_path / "b", concurrency=4))
    _, a = load_run(tmp_path / "a")
    _, b = load_run(tmp_path / "b")
    c = compare_success(a, b)
    assert c["test"] == "mcnemar" and c["paired"] == 12 and c["b"] == 1.0
    assert c["diff"] > 0.5 and c["p"] < 0.01
    done = subprocess.run(
        [sys.executable, "-m", "pistar.cli", "compare", str(tmp_path / "a"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "babyai/MixedTrainLocal/goto" in done.stdout and "mcnemar (12 pairs)" in done.stdout


def test_wilson_interval_and_mcnemar_match_hand_computed_values() -> None:
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    # 10 paired episodes: A alone wins 1, B alone wins 9 → two-sided binomial p = 22/1024
    a = [{"env_id": "t", "seed": i, "success": i == 0} for i in range(10)]
    b = [{"env_id": "t", "seed": i, "success": i != 0} for i in range(10)]
    c = compare_success(a, b)
    assert (c["only_a"], c["only_b"]) == (1, 9) and c["p"] == pytest.approx(22 / 1024)
    # different seeds: unpaired, Fisher's exact test on [[1, 9], [9, 1]]: tables as extreme are x = 0, 1, 9, 10,
    # with hypergeometric weights C(10,x)·C(10,10-x) / C(20,10) = (1 + 100 + 100 + 1) / 184756
    d = compare_success(a, [{**r, "seed": r["seed"] + 100} for r in b])
    assert d["test"] == "fisher" and d["p"] == pytest.approx(202 / 184756)


async def test_a_model_stuck_on_one_action_is_counted_as_looping() -> None:
    from pistar.agent import Budget, ExpertAgent, run_episode

    class TurnForever:
        name = "turner"
        tools: list = []

        async def act(self, obs, env, history):  # noqa: ANN001, ANN201
            return Decision(Action("act", name="turn left"))

    env = BabyAIEnv("GoToLocal")
    stuck = episode_metrics(await run_episode(env, TurnForever(), 0, Budget(max_steps=20)))
    assert stuck["looped"] and stuck["longest_repeat"] == 20 and stuck["stuck_steps"] == 0  # turning changes the view
    solved = episode_metrics(await run_episode(env, ExpertAgent(), 0))
    assert solved["success"] and not solved["looped"] and solved["valid_action_rate"] == 1.0


def test_suite_files_and_their_errors(tmp_path: Path) -> None:
    good = tmp_path / "s.yaml"
    good.write_text("name: mine\ntasks:\n  - env: babyai/GoToLocal\n    seeds: [5, 2, 5]\n")
    suite = load_suite(str(good))
    assert [(e.env_id, e.seed, e.max_steps) for e in suite.episodes()] == [
        ("babyai/GoToLocal", 5, 64),
        ("babyai/GoToLocal", 2, 64),
    ]
    assert [e.seed for e in load_suite("babyai").with_seeds(2, 7).episodes()[:2]] == [7, 8]
    cases = {
        "name: x\ntasks: []\n": "tasks: List should have at least 1 item",
        "name: x\ntasks:\n  - env: babyai/GoToLocal\n    seeds: 0\n": "seeds must be at least 1",
        "name: x\ntasks:\n  - env: babyai/GoToLocal\n    sedes: 3\n": "0.sedes: unknown key, did you mean 'seeds'",
        "name: x\ntasks: [\n": "not valid YAML",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            load_suite(str(bad))
