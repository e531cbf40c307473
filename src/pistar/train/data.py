"""Training data from trajectories: what `pistar data` builds and the trainers read.

Every model call in a run is one training example: the exact prompt the agent saw and the reply it wrote. Expert
runs make the same records through the teacher agent (`--agent teacher`), so model and expert data are read
alike. On top of that:

- filters by outcome (success, progress), by rules (valid actions, length) and by a model judge;
- failures reused: preference pairs (a success and a failure of the same task that part ways at some step:
  the success's reply is chosen, the failure's rejected) and corrections (a failed episode replayed in its
  environment, the expert's action written at every state the agent visited — DAgger's relabelling);
- exact duplicates dropped (a policy stuck in a loop meets the same state, and gets the same correction, a dozen
  times; the bot starts many seeds alike): a copy adds no information, only weight;
- a train/validation split by (environment, seed), so no task is on both sides.

The result is a Hugging Face `DatasetDict` on disk: `OUT/sft` (messages + completion) and `OUT/dpo` (prompt,
chosen, rejected), with `OUT/summary.json` saying what was kept and why the rest was dropped.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pistar.agent import LLMAgent, reply_json
from pistar.models.base import Model, text_only
from pistar.records import Action, Trajectory

# Steps whose reply is kept as a target: a malformed reply is not worth imitating even in a won episode.
_TARGET_ROLES_DEFAULT: tuple[str, ...] = ()  # all roles


@dataclass
class Filters:
    success: bool = False  # keep only successful episodes
    min_progress: float = 0.0
    valid_only: bool = False  # drop episodes with any invalid action
    max_steps: int | None = None
    roles: tuple[str, ...] = _TARGET_ROLES_DEFAULT  # model-call roles kept as examples; empty: all
    judge: Model | None = None  # a model that must call the episode "good"


def trajectories(runs: Sequence[str | Path]) -> Iterator[tuple[Path, Trajectory]]:
    """Every finished episode of the given eval runs (a run directory holds results.sqlite)."""
    from pistar.evaluate import load_run

    for run in runs:
        run = Path(run)
        _, rows = load_run(run)
        for row in rows:
            yield run, Trajectory.load(run / row["path"])


def drop_reason(traj: Trajectory, f: Filters) -> str | None:
    """Why an episode is not training data, or None to keep it (the judge is asked separately)."""
    if traj.error:
        return "errored"
    if f.success and not traj.success:
        return "failed"
    if traj.progress < f.min_progress and not traj.success:
        return "low progress"
    if f.valid_only and traj.invalid_actions:
        return "invalid actions"
    if f.max_steps is not None and traj.num_steps > f.max_steps:
        return "too long"
    return None


async def judge(model: Model, traj: Trajectory) -> bool:
    """Ask a model whether the agent did the task sensibly; for environments whose own signal is weak."""
    first = traj.steps[0].observation.text[:1500] if traj.steps else ""
    actions = "\n".join(f"{s.index + 1}. {s.action.label() if s.action else '(invalid reply)'}" for s in traj.steps)
    prompt = (
        f"An agent was given this task and first observation:\n{first}\n\nIt took these actions:\n{actions[:3000]}\n"
        f"\nThe environment reports success={traj.success}. Is this a good demonstration to learn from: "
        'correct, without pointless or repeated actions? Answer {"verdict": "good"|"bad", "reason": "..."}.'
    )
    schema = {
        "type": "object",
        "properties": {"verdict": {"enum": ["good", "bad"]}, "reason": {"type": "string", "maxLength": 200}},
        "required": ["verdict", "reason"],
    }
    c = await model.complete([{"role": "user", "content": prompt}], schema=schema, max_tokens=100)
    try:
        return json.loads(c.text).get("verdict") == "good"
    except json.JSONDecodeError:
        return False


def action_key(action: Action | None) -> str:
    """What a reply does, coarsely (the move, the tool, "answer"), for balancing examples over actions."""
    if action is None:
        return ""
    return action.name if action.kind in ("act", "tool") else action.kind


def _base(traj: Trajectory, source: str) -> dict[str, Any]:
    return {
        "env_id": traj.env_id,
        "seed": traj.seed,
        "episode": f"{traj.env_id}#{traj.seed}#{source}",
        "success": traj.success,
        "progress": float(traj.progress),
        "source": source,
    }


def sft_examples(traj: Trajectory, source: str, roles: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One example per model call of a valid step: the prompt as the model saw it and the reply it gave."""
    rows = []
    for step in traj.steps:
        if not step.valid:
            continue
        for call in step.calls:
            if roles and call.role not in roles:
                continue
            rows.append(
                _base(traj, source)
                | {
                    "step": step.index,
                    "role": call.role,
                    "kind": "teacher" if traj.agent == "teacher" else "model",
                    "action": action_key(step.action),
                    "messages": text_only(call.messages),
                    "completion": call.completion,
                }
            )
    return rows


def _policy_call(traj: Trajectory, index: int) -> Any:
    calls = [c for c in traj.steps[index].calls if c.role in ("policy", "operator")]
    return calls[-1] if calls else None


def preference_pairs(trajs: Sequence[Trajectory], source: str = "") -> list[dict[str, Any]]:
    """Chosen/rejected replies where a success and a failure of the same task first part ways.

    Up to that step both took the same actions from the same start, so the environment was in the same state;
    the prompt is the success's (the earlier thoughts it shows may differ in wording, not in what happened).
    """
    by_task: dict[tuple[str, int], list[Trajectory]] = defaultdict(list)
    for t in trajs:
        if not t.error:
            by_task[(t.env_id, t.seed)].append(t)
    rows = []
    for (env_id, seed), group in by_task.items():
        wins = [t for t in group if t.success]
        losses = [t for t in group if not t.success]
        for w in wins:
            for lose in losses:
                k = 0
                while k < min(w.num_steps, lose.num_steps) and _same(w.steps[k].action, lose.steps[k].action):
                    k += 1
                if k >= min(w.num_steps, lose.num_steps):
                    continue  # one is a prefix of the other: no step where they chose differently
                chosen, rejected = _policy_call(w, k), _policy_call(lose, k)
                if chosen is None or rejected is None or chosen.completion == rejected.completion:
                    continue
                rows.append(_pair(env_id, seed, k, chosen.messages, chosen.completion, rejected.completion, source))
    return rows


def _same(a: Action | None, b: Action | None) -> bool:
    if a is None or b is None:
        return False
    return (a.kind, a.name, a.args, a.text) == (b.kind, b.name, b.args, b.text)


def _pair(env_id: str, seed: int, step: int, messages: list, chosen: str, rejected: str, kind: str) -> dict[str, Any]:
    return {
        "env_id": env_id,
        "seed": seed,
        "step": step,
        "kind": kind,
        "prompt": text_only(messages),
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def corrections(traj: Trajectory, source: str, history: int = 4) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Replay a failed episode in its environment and ask the expert at every state the agent reached.

    Returns SFT examples (the agent's prompt, the expert's reply) for the steps where the expert would have done
    otherwise, and the matching preference pairs (expert chosen, agent rejected). Stops where the replay leaves
    the recorded path (a nondeterministic environment) or the expert has no answer.
    """
    from pistar.envs import make_env

    env = make_env(traj.env_id)
    render = LLMAgent(None, history=history)
    sft, pairs = [], []
    try:
        obs = env.reset(traj.seed)
        for step in traj.steps:
            if obs.text != step.observation.text:
                break
            try:
                expert = env.expert_action()
            except (RuntimeError, NotImplementedError):
                break
            if not _same(expert, step.action):
                # The prompt the agent saw; an agent without model calls (random, scripted) gets the one an LLM
                # agent would have seen there.
                call = _policy_call(traj, step.index)
                if call is not None:
                    messages, taken = call.messages, call.completion
                else:
                    messages = render.messages(obs, env, traj.steps[: step.index], render.space(obs))
                    taken = reply_json(step.action) if step.action else ""
                target = reply_json(expert)
                sft.append(
                    _base(traj, source)
                    | {
                        "step": step.index,
                        "role": call.role if call else "policy",
                        "kind": "correction",
                        "action": action_key(expert),
                        "messages": text_only(messages),
                        "completion": target,
                    }
                )
                pairs.append(_pair(traj.env_id, traj.seed, step.index, messages, target, taken, "correction"))
            if step.action is None or step.action.kind != "act":
                continue  # an invalid reply or a tool call leaves the environment where it was
            result = env.step(step.action)
            obs = result.observation
            if result.terminated or result.truncated:
                break
    finally:
        env.close()
    return sft, pairs


def unique(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The first of every group of rows equal on `fields` (the prompt and the replies)."""
    seen: set[str] = set()
    out = []
    for r in rows:
        key = json.dumps([r[f] for f in fields], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def split_of(env_id: str, seed: int, validation: float) -> str:
    """Deterministic by (environment, seed): every example of one task lands on the same side."""
    return "validation" if zlib.crc32(f"{env_id}#{seed}".encode()) % 10_000 < validation * 10_000 else "train"


def to_dataset(rows: list[dict[str, Any]], validation: float) -> Any:
    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    full = Dataset.from_list(rows)
    sides = [split_of(r["env_id"], r["seed"], validation) for r in rows]
    picked = {side: [i for i, s in enumerate(sides) if s == side] for side in ("train", "validation")}
    return DatasetDict({side: full.select(idx) for side, idx in picked.items() if idx})  # empty splits don't load


def build(
    runs: Sequence[str | Path],
    out: str | Path,
    filters: Filters | None = None,
    *,
    validation: float = 0.1,
    pairs: bool = True,
    correct: bool = False,
    history: int = 4,
) -> dict[str, Any]:
    """Read runs, filter, add pairs and corrections, split, and save; returns the summary written beside."""
    f = filters or Filters()
    out = Path(out)
    dropped: Counter[str] = Counter()
    kept: list[tuple[str, Trajectory]] = []
    everything: list[Trajectory] = []
    sft: list[dict[str, Any]] = []
    dpo: list[dict[str, Any]] = []
    for run, traj in trajectories(runs):
        everything.append(traj)
        reason = drop_reason(traj, f)
        if reason is None and f.judge is not None and not asyncio.run(judge(f.judge, traj)):
            reason = "judged bad"
        if reason:
            dropped[reason] += 1
            if correct and not traj.error and not traj.success:
                more, more_pairs = corrections(traj, str(run), history)
                sft += more
                dpo += more_pairs
            continue
        kept.append((str(run), traj))
        sft += sft_examples(traj, str(run), f.roles)
    if pairs:
        dpo += preference_pairs(everything)
    n_sft, n_dpo = len(sft), len(dpo)
    sft = unique(sft, ("messages", "completion"))
    dpo = unique(dpo, ("prompt", "chosen", "rejected"))
    summary: dict[str, Any] = {
        "runs": [str(r) for r in runs],
        "episodes": len(everything),
        "kept": len(kept),
        "dropped": dict(dropped),
        "sft": Counter(r["kind"] for r in sft),
        "dpo": Counter(r["kind"] for r in dpo),
        "duplicates": {"sft": n_sft - len(sft), "dpo": n_dpo - len(dpo)},
        "validation": validation,
    }
    out.mkdir(parents=True, exist_ok=True)
    for old in ("sft", "dpo"):  # a rebuild must not leave the last build's examples behind
        shutil.rmtree(out / old, ignore_errors=True)
    if sft:
        ds = to_dataset(sft, validation)
        ds.save_to_disk(str(out / "sft"))
        summary["sft_split"] = {k: len(v) for k, v in ds.items()}
    if dpo:
        ds = to_dataset(dpo, validation)
        ds.save_to_disk(str(out / "dpo"))
        summary["dpo_split"] = {k: len(v) for k, v in ds.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
