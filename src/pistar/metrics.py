"""What an evaluation reports: per-episode numbers from a trajectory, their aggregates with confidence intervals,
and the significance of the difference between two runs.

Outcome metrics (success, progress, return, steps) say how well the agent did; process metrics (valid actions,
tool-call errors, repeated-action loops, tokens, latency) say how it behaved and what it cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from scipy import stats

from pistar.records import Trajectory

# An episode "loops" when it takes the same action in the same observed state this many times: in a
# deterministic world that is a cycle, while "go forward" five times down a corridor is not.
LOOP_REPEATS = 4


def episode_metrics(traj: Trajectory) -> dict[str, Any]:
    """The numbers of one finished episode, flat, as the result store keeps them."""
    tokens_in, tokens_out = traj.tokens
    earlier = traj.config.get("earlier_attempts", [])  # Reflexion's failed attempts cost tokens too
    tokens_in += sum(a["tokens_in"] for a in earlier)
    tokens_out += sum(a["tokens_out"] for a in earlier)
    by_role: dict[str, list[int]] = {}
    for c in (c for s in traj.steps for c in s.calls):
        tin, tout = by_role.get(c.role, [0, 0])
        by_role[c.role] = [tin + c.prompt_tokens, tout + c.completion_tokens]
    tool_steps = [s for s in traj.steps if s.action is not None and s.action.kind == "tool"]
    labels = [s.action.label() if s.action is not None else None for s in traj.steps]
    longest, run = 0, 0
    for i, label in enumerate(labels):
        run = run + 1 if label is not None and i > 0 and label == labels[i - 1] else (1 if label else 0)
        longest = max(longest, run)
    seen: dict[tuple[str, str], int] = {}
    for step, label in zip(traj.steps, labels, strict=True):
        if label is not None:
            key = (step.observation.text, label)
            seen[key] = seen.get(key, 0) + 1
    stuck = sum(
        1
        for prev, cur in zip(traj.steps, traj.steps[1:], strict=False)
        if cur.action is not None
        and prev.action is not None
        and cur.action.label() == prev.action.label()
        and cur.observation.text == prev.observation.text
    )  # repeats of an action that changed nothing
    calls = [c for s in traj.steps for c in s.calls]
    return {
        "success": bool(traj.success),
        "progress": float(traj.progress),
        "reward": float(traj.total_reward),
        "steps": traj.num_steps,
        "invalid_actions": traj.invalid_actions,
        "valid_action_rate": traj.valid_action_rate,
        "tool_calls": len(tool_steps),
        "tool_errors": sum(1 for s in tool_steps if s.error_kind in ("bad_args", "schema", "unknown_action")),
        "tool_failures": sum(1 for s in tool_steps if s.error_kind == "tool_failed"),
        "schema_errors": sum(1 for s in traj.steps if s.error_kind in ("schema", "bad_json", "empty", "too_long")),
        "longest_repeat": longest,
        "looped": max(seen.values(), default=0) >= LOOP_REPEATS,
        "stuck_steps": stuck,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "tokens_by_role": by_role,
        "attempts": 1 + len(earlier),
        "model_calls": len(calls),
        "latency_s": sum(c.latency_s for c in calls) / len(calls) if calls else 0.0,
        "step_s": sum(s.agent_s + s.env_s for s in traj.steps) / len(traj.steps) if traj.steps else 0.0,
        "duration_s": traj.duration_s,
        "stop_reason": traj.stop_reason,
        "error": traj.error,
    }


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a rate: honest at 0/n and n/n and for the small n of agent evaluations."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summary of a set of episodes. Errored episodes (infrastructure failures) are counted, not scored."""
    scored = [r for r in rows if not r.get("error")]
    n = len(scored)
    wins = sum(1 for r in scored if r["success"])
    low, high = wilson(wins, n)

    def mean(key: str, among: Iterable[dict[str, Any]] = scored) -> float:
        values = [float(r[key]) for r in among]
        return sum(values) / len(values) if values else 0.0

    steps = sum(r["steps"] for r in scored)
    tool_calls = sum(r["tool_calls"] for r in scored)
    calls = sum(r["model_calls"] for r in scored)
    return {
        "episodes": len(rows),
        "scored": n,
        "errors": len(rows) - n,
        "successes": wins,
        "success_rate": wins / n if n else 0.0,
        "ci_low": low,
        "ci_high": high,
        "progress": mean("progress"),
        "reward": mean("reward"),
        "steps": mean("steps"),
        "valid_action_rate": 1 - sum(r["invalid_actions"] for r in scored) / steps if steps else 1.0,
        "tool_calls": tool_calls,
        "tool_call_validity": 1 - sum(r["tool_errors"] for r in scored) / tool_calls if tool_calls else 1.0,
        "schema_errors": sum(r["schema_errors"] for r in scored),
        "loop_rate": mean("looped"),
        "stuck_steps": mean("stuck_steps"),
        "tokens_in": mean("tokens_in"),
        "tokens_out": mean("tokens_out"),
        "latency_s": sum(r["latency_s"] * r["model_calls"] for r in scored) / calls if calls else 0.0,
        "step_s": sum(r["step_s"] * r["steps"] for r in scored) / steps if steps else 0.0,
    }


def by_task(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Aggregates per environment id, in order of first appearance, plus "overall"."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        tasks.setdefault(r["env_id"], []).append(r)
    out = {task: aggregate(rs) for task, rs in tasks.items()}
    out["overall"] = aggregate(rows)
    return out


def compare_success(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Difference in success rate between two runs and its p-value.

    Where both runs played the same (task, seed) episodes the comparison is paired: McNemar's exact test on the
    discordant pairs, which is far more sensitive than comparing two rates. Otherwise Fisher's exact test.
    """
    sa = {(r["env_id"], r["seed"]): bool(r["success"]) for r in a if not r.get("error")}
    sb = {(r["env_id"], r["seed"]): bool(r["success"]) for r in b if not r.get("error")}
    rate_a = sum(sa.values()) / len(sa) if sa else 0.0
    rate_b = sum(sb.values()) / len(sb) if sb else 0.0
    shared = sa.keys() & sb.keys()
    if shared and len(shared) >= 0.5 * max(len(sa), len(sb)):
        only_a = sum(1 for k in shared if sa[k] and not sb[k])
        only_b = sum(1 for k in shared if sb[k] and not sa[k])
        discordant = only_a + only_b
        p = stats.binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
        return {
            "test": "mcnemar",
            "paired": len(shared),
            "a": rate_a,
            "b": rate_b,
            "diff": rate_b - rate_a,
            "only_a": only_a,
            "only_b": only_b,
            "p": float(p),
        }
    wins_a, wins_b = sum(sa.values()), sum(sb.values())
    table = [[wins_a, len(sa) - wins_a], [wins_b, len(sb) - wins_b]]
    p = stats.fisher_exact(table).pvalue if sa and sb else 1.0
    return {"test": "fisher", "paired": 0, "a": rate_a, "b": rate_b, "diff": rate_b - rate_a, "p": float(p)}
