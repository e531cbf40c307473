"""The `pistar` command as a user runs it: a real subprocess, real files, one clear line on bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import SMALL, require

PISTAR = [sys.executable, "-m", "pistar.cli"]


def pistar(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PISTAR, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_expert_run_writes_trajectory_and_page_and_resumes(tmp_path: Path) -> None:
    from pistar.evaluate import load_run

    out = tmp_path / "run"
    done = pistar(
        "run", "--agent", "expert", "--env", "babyai/GoToLocal", "--seed", "3", "--episodes", "2", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    episodes = out / "episodes" / "babyai-GoToLocal"
    for s in (3, 4):
        data = json.loads((episodes / f"seed_{s:04d}" / "trajectory.json").read_text())
        assert data["success"] is True and data["seed"] == s
        page = (episodes / f"seed_{s:04d}" / "index.html").read_text()
        assert page.count("data:image/png;base64,") == len(data["steps"]) + 1
    # one more episode asked for: the rerun plays only that one
    first = (episodes / "seed_0003" / "trajectory.json").stat().st_mtime_ns
    again = pistar("run", "--agent", "expert", "--seed", "3", "--episodes", "3", "--out", str(out))
    assert again.returncode == 0 and "2 of 3 episodes already done" in again.stderr
    assert (episodes / "seed_0005" / "trajectory.json").exists()
    assert (episodes / "seed_0003" / "trajectory.json").stat().st_mtime_ns == first
    _, rows = load_run(out)
    assert [(r["seed"], r["success"]) for r in rows] == [(3, True), (4, True), (5, True)]
    # the same directory with another agent is refused, not mixed in
    other = pistar("run", "--agent", "random", "--seed", "3", "--episodes", "3", "--out", str(out))
    assert other.returncode == 2 and "another agent config" in other.stderr


def test_bad_input_gives_one_clear_line(tmp_path: Path) -> None:
    cases = [
        (["run", "--env", "babyai/GoToNowhere"], "unknown BabyAI level"),
        (["run", "--env", "atari/Pong"], "unknown environment"),
        (["run", "--model", "ollama:llama3"], "bad model URI"),
        (["run", "--model", "embedded:qwen2.5-coder-1.5b"], "pistar models pull qwen2.5-coder-1.5b"),
        (["run", "--agent", "expert", "--tools", "browser"], "unknown tool 'browser'"),
        (["run", "--tools", "search"], "unknown tool 'search'"),
        (["eval", "nosuchsuite"], "unknown suite 'nosuchsuite'"),
        (["eval", "babyai", "--executor", "slurm", "--agent", "expert", "--seeds", "1"], "executor 'slurm'"),
        (["run", "--mcp", "http://127.0.0.1:9/mcp"], "cannot connect to MCP server"),
        (["data", "pull", "imagenet"], "unknown data set 'imagenet'"),
        (["models", "pull", "gpt-5"], "unknown model 'gpt-5'"),
    ]
    for i, (args, expected) in enumerate(cases):
        done = (
            pistar(*args, "--out", str(tmp_path / f"x{i}"), env={"PISTAR_HOME": str(tmp_path / "empty")})
            if args[0] in ("run", "eval")
            else pistar(*args)
        )
        if expected is None:
            assert done.returncode == 0, done.stderr
            continue
        assert done.returncode == 2, (args, done.stderr)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_models_list_shows_the_catalog() -> None:
    done = pistar("models", "list")
    assert done.returncode == 0
    for name in ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "gemma-3-270m"):
        assert name in done.stdout


def test_embedded_model_plays_babyai_end_to_end(tmp_path: Path) -> None:
    """The real 0.5B model through the CLI: a trajectory with exact token ids and an HTML page."""
    require(SMALL)
    out = tmp_path / "llm"
    done = pistar(
        "run", "--model", f"embedded:{SMALL}?parallel=1&ctx=4096", "--max-steps", "4", "--seed", "0", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "episodes" / "babyai-GoToLocal" / "seed_0000" / "trajectory.json").read_text())
    assert 1 <= len(data["steps"]) <= 4
    valid = [s for s in data["steps"] if s["error_kind"] is None]
    assert len(valid) >= len(data["steps"]) - 1  # constrained decoding: the model's replies parse
    for s in data["steps"]:
        call = s["calls"][0]
        assert (
            call["prompt_ids"]
            and call["completion_ids"]
            and len(call["completion_logprobs"]) == len(call["completion_ids"])
        )
        assert call["messages"][0]["role"] == "system"
    assert (out / "episodes" / "babyai-GoToLocal" / "seed_0000" / "index.html").stat().st_size > 10_000


def test_serve_exposes_an_openai_compatible_server() -> None:
    """`pistar serve` in a subprocess; pistar's own openai backend talks to it; SIGTERM stops it."""
    import asyncio
    import signal
    import socket
    import time

    import httpx

    from pistar.models import load_model

    require(SMALL)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [*PISTAR, "serve", "--model", f"embedded:{SMALL}?parallel=2&ctx=4096", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.5)
        model = load_model(f"openai:{SMALL}@http://127.0.0.1:{port}/v1")
        reply = asyncio.run(
            model.complete(
                [{"role": "user", "content": "Say hi in JSON."}],
                schema={
                    "type": "object",
                    "properties": {"hi": {"type": "string"}},
                    "required": ["hi"],
                    "additionalProperties": False,
                },
                max_tokens=24,
            )
        )
        assert "hi" in json.loads(reply.text)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_teacher_data_and_train_commands_fail_in_one_line_on_bad_input(tmp_path: Path) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntasks:\n  - {env: babyai/GoToLocal, seeds: 2, max_steps: 20}\n")
    run = pistar("eval", str(suite), "--agent", "teacher", "--history", "0", "--out", str(tmp_path / "t"))
    assert run.returncode == 0, run.stderr
    built = pistar("data", "build", str(tmp_path / "t"), "--out", str(tmp_path / "d"), "--success")
    assert built.returncode == 0, built.stderr
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["kept"] == 2 and sum(summary["sft_split"].values()) == summary["sft"]["teacher"] > 0
    for args, message in [
        (["data", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "x")], "is not a pistar run"),
        (["train", "sft", "--data", str(tmp_path / "d"), "--set", "lr=fast"], "lr: Input should be a valid number"),
        (["train", "dpo", "--set", "bogus=1"], "bogus: unknown key"),
        (["eval", "babyai", "--noise", "0.2"], "--noise applies to the expert and teacher agents only"),
        (["train", "grpo", "--set", "micro_batch=8"], "did you mean 'minibatch' or 'micro_tokens'?"),
        (["train", "dpo", "--data", str(tmp_path / "t")], "no dpo dataset here"),
        (["train", "grpo", "--model", SMALL], "online RL needs the tasks it plays"),
        (["train", "grpo", "--suite", "babyai", "--set", "rollout_model=vllm"], "rollout_model='vllm'"),
        (["train", "grpo", "--suite", "babyai", "--set", "group_size=1"], "set group_size=2 or more"),
    ]:
        done = pistar(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and message in lines[0], (args, done.stderr)
