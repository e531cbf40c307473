"""The records every part of pistar shares: what the agent saw, what it did, and what the model was asked.

One Trajectory serves the live view, the HTML page, evaluation and (later) training. Per model call it keeps the
exact token ids the backend used, so a trainer never re-tokenizes: `prompt_ids` are context (system prompt,
environment and tool text, earlier turns as rendered by the chat template) and `completion_ids` are the tokens
the model itself wrote. Training masks the first and learns from the second.
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

ActionKind = Literal["act", "tool", "answer", "think"]


@dataclass
class Observation:
    """What the agent perceives: text for any model, images for a vision model, extras for code."""

    text: str
    images: list[Any] = field(default_factory=list)  # HxWx3 uint8 arrays in memory, file names once saved
    extras: dict[str, Any] = field(default_factory=dict)  # mission, valid_actions, inventory, DOM, ...

    @property
    def valid_actions(self) -> list[str]:
        return list(self.extras.get("valid_actions", []))


@dataclass
class Action:
    """One decision in the language action space."""

    kind: ActionKind
    name: str = ""  # environment action ("turn left") or tool name ("python")
    args: dict[str, Any] = field(default_factory=dict)  # tool arguments
    text: str = ""  # the answer, for kind == "answer"
    thought: str = ""  # the reasoning the model wrote before choosing

    def label(self) -> str:
        """A short human-readable form for progress lines and the HTML page."""
        if self.kind == "act":
            return self.name
        if self.kind == "tool":
            args = json.dumps(self.args, ensure_ascii=False)
            return f"{self.name}({args[:120] + '…' if len(args) > 120 else args})"
        if self.kind == "answer":
            return f"answer: {self.text}"
        return "think"


@dataclass
class ModelCall:
    """One request to a model and what came back, exactly as training will need it."""

    messages: list[dict[str, Any]]  # the prompt; images replaced by {"type": "image", "ref": ...}
    completion: str
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    completion_logprobs: list[float] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    latency_s: float = 0.0
    role: str = "policy"


@dataclass
class Step:
    """One turn of the loop: the observation seen, the model calls made, the action taken and its outcome."""

    index: int
    observation: Observation
    action: Action | None = None
    calls: list[ModelCall] = field(default_factory=list)
    error: str | None = None  # the parse or tool error the model will see next turn
    error_kind: str | None = None  # "empty", "bad_json", "unknown_action", "bad_args", "too_long", "tool_failed"
    result: str = ""  # tool output or environment feedback
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    agent_s: float = 0.0  # time spent deciding (model included)
    env_s: float = 0.0  # time spent in the environment or tool

    @property
    def valid(self) -> bool:
        return self.action is not None and self.error_kind not in _INVALID_KINDS


# Errors that make an action invalid; a tool that ran and failed is a valid action with a bad outcome.
_INVALID_KINDS = {"empty", "bad_json", "unknown_action", "bad_args", "too_long", "schema"}


@dataclass
class Trajectory:
    env_id: str
    seed: int
    agent: str
    model: str = ""
    task: str = ""
    steps: list[Step] = field(default_factory=list)
    final_observation: Observation | None = None
    success: bool = False
    progress: float = 0.0  # in [0, 1]: the environment's partial credit (score / max score), success counts 1
    total_reward: float = 0.0
    # "terminated", "truncated", "max_steps", "max_tokens", "max_seconds", "context_full", "answered", "error"
    stop_reason: str = ""
    error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    duration_s: float = 0.0

    # -- metrics ----------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def invalid_actions(self) -> int:
        return sum(1 for s in self.steps if not s.valid)

    @property
    def valid_action_rate(self) -> float:
        return 1.0 - self.invalid_actions / len(self.steps) if self.steps else 1.0

    @property
    def tokens(self) -> tuple[int, int]:
        calls = [c for s in self.steps for c in s.calls]
        return sum(c.prompt_tokens for c in calls), sum(c.completion_tokens for c in calls)

    def summary(self) -> dict[str, Any]:
        tokens_in, tokens_out = self.tokens
        return {
            "env_id": self.env_id,
            "seed": self.seed,
            "agent": self.agent,
            "model": self.model,
            "success": self.success,
            "progress": round(self.progress, 4),
            "total_reward": self.total_reward,
            "steps": self.num_steps,
            "invalid_actions": self.invalid_actions,
            "valid_action_rate": round(self.valid_action_rate, 4),
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "stop_reason": self.stop_reason,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
        }

    # -- files ------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write trajectory.json and one PNG per observation image; returns the JSON path."""
        out = Path(directory)
        (out / "frames").mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        observations = [("step", i, s.observation) for i, s in enumerate(self.steps)]
        if self.final_observation is not None:
            observations.append(("final", 0, self.final_observation))
        for (where, i, obs), target in zip(observations, _observation_slots(data), strict=True):
            target["images"] = [_save_image(img, out, f"{where}_{i:04d}_{k}.png") for k, img in enumerate(obs.images)]
        data["summary"] = self.summary()
        path = out / "trajectory.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, default=_json_default))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trajectory:
        """Read a saved trajectory; images come back as file paths (load them lazily with PIL)."""
        path = Path(path)
        if path.is_dir():
            path = path / "trajectory.json"
        data = json.loads(path.read_text())
        data.pop("summary", None)
        base = path.parent

        def obs(d: dict[str, Any] | None) -> Observation | None:
            if d is None:
                return None
            return Observation(d["text"], [str(base / p) for p in d["images"]], d["extras"])

        steps = []
        for s in data.pop("steps"):
            s["observation"] = obs(s["observation"])
            s["action"] = Action(**s["action"]) if s["action"] else None
            s["calls"] = [ModelCall(**c) for c in s["calls"]]
            steps.append(Step(**s))
        final = obs(data.pop("final_observation"))
        return cls(steps=steps, final_observation=final, **data)


def _observation_slots(data: dict[str, Any]) -> list[dict[str, Any]]:
    slots = [s["observation"] for s in data["steps"]]
    if data.get("final_observation") is not None:
        slots.append(data["final_observation"])
    return slots


def _save_image(img: Any, out: Path, name: str) -> str:
    if isinstance(img, str):  # already a file
        return img
    to_image(img).save(out / "frames" / name)
    return f"frames/{name}"


def to_image(img: Any) -> Image.Image:
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, str | Path):
        return Image.open(img)
    return Image.fromarray(np.asarray(img, dtype=np.uint8))


def image_to_data_url(img: Any, fmt: str = "PNG") -> str:
    """Encode an image as a data URL: for OpenAI-style content parts and self-contained HTML."""
    buf = io.BytesIO()
    to_image(img).save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
