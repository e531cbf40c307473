"""The agent loop: observation → policy → action → environment or tool → next observation, recorded as it goes.

`run_episode` owns budgets, tools, errors and the Trajectory; a policy only decides. `LLMAgent` is the ReAct-style
language-model policy; `ExpertAgent` plays the environment's built-in expert through the very same loop.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pistar.actions import ActionError, ActionSpace
from pistar.envs.base import Env
from pistar.models.base import Completion, ContextOverflow, Model, ModelError
from pistar.records import Action, ModelCall, Observation, Step, Trajectory, image_to_data_url
from pistar.tools.base import Tool, ToolError


@dataclass
class Decision:
    action: Action | None
    calls: list[ModelCall] = field(default_factory=list)
    error: ActionError | None = None


class Policy(Protocol):
    name: str
    tools: Sequence[Tool]

    async def act(self, obs: Observation, env: Env, history: list[Step]) -> Decision: ...


@dataclass
class Budget:
    """Limits of one episode. Invalid actions and tool calls count as steps, so a confused model still stops."""

    max_steps: int = 64
    max_tokens: int | None = None  # prompt + completion tokens over all model calls
    max_seconds: float | None = None


StepCallback = Callable[[Step, Trajectory], None]


SYSTEM_PROMPT = """You are an agent acting in an environment to complete a task.
{actions}

{format}"""


class LLMAgent:
    """A ReAct-style policy: a bounded window of recent turns, one model call per step, constrained output."""

    def __init__(
        self,
        model: Model | None,  # None: only render prompts (a teacher writing training data)
        tools: Sequence[Tool] = (),
        *,
        history: int = 4,
        max_tokens: int = 160,
        temperature: float = 0.7,  # greedy small models repeat one action forever; seeds keep sampling reproducible
        thought_chars: int = 240,
        think_only: bool = False,
        answer: bool = False,
        constrained: bool = True,
        seed: int | None = None,
    ):
        self.model = model
        self.tools = list(tools)
        self.history = history
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.thought_chars = thought_chars
        self.think_only = think_only
        self.answer = answer
        self.constrained = constrained
        self.seed = seed
        self.name = f"llm({model.uri if model else 'none'})"

    def space(self, obs: Observation) -> ActionSpace:
        patterns = list(obs.extras.get("action_patterns", []))
        return ActionSpace(obs.valid_actions, self.tools, self.answer, self.think_only, self.thought_chars, patterns)

    def config(self) -> dict[str, Any]:
        keys = ("history", "max_tokens", "temperature", "thought_chars", "think_only", "answer", "constrained")
        model = self.model.info() if self.model else None
        return {"agent": "llm", "model": model, "tools": [t.name for t in self.tools]} | {
            k: getattr(self, k) for k in keys
        }

    def messages(self, obs: Observation, env: Env, history: list[Step], space: ActionSpace) -> list[dict[str, Any]]:
        """System prompt, at most `history` recent turns, then the current observation with the last outcome."""
        system = SYSTEM_PROMPT.format(actions=env.describe_actions(), format=space.describe())
        msgs: list[dict[str, Any]] = [{"role": "system", "content": system}]
        omitted = window_start(len(history), self.history)
        window = history[omitted:]
        previous = history[omitted - 1] if omitted > 0 else None
        for i, step in enumerate(window):
            note = f"({omitted} earlier steps not shown)\n" if i == 0 and omitted else ""
            msgs.append({"role": "user", "content": note + _feedback(previous) + _obs_text(step.observation)})
            msgs.append({"role": "assistant", "content": _reply(step)})
            previous = step
        text = _feedback(previous) + _obs_text(obs)
        if self.model is not None and self.model.vision and obs.images:
            content: Any = [{"type": "text", "text": text}] + [
                {"type": "image_url", "image_url": {"url": image_to_data_url(img)}} for img in obs.images[-1:]
            ]
        else:
            content = text
        msgs.append({"role": "user", "content": content})
        return msgs

    async def act(self, obs: Observation, env: Env, history: list[Step]) -> Decision:
        space = self.space(obs)
        messages = self.messages(obs, env, history, space)
        seed = None if self.seed is None else self.seed * 1_000_003 + len(history)
        assert self.model is not None, "an LLMAgent without a model only renders prompts"
        c = await self.model.complete(
            messages,
            schema=space.schema() if self.constrained else None,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=seed,
        )
        call = record_call(_strip_images(messages), c)
        parsed = space.parse(c.text)
        if isinstance(parsed, ActionError):
            if c.finish_reason == "length" and parsed.kind == "bad_json":
                parsed.message += f" (the reply hit the {self.max_tokens}-token limit: be shorter)"
            return Decision(None, [call], parsed)
        return Decision(parsed, [call])


class RandomAgent:
    """Picks uniformly among the valid actions with its own seeded RNG: the floor any agent should beat."""

    name = "random"
    tools: Sequence[Tool] = ()

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def config(self) -> dict[str, Any]:
        return {"agent": "random"}

    async def act(self, obs: Observation, env: Env, history: list[Step]) -> Decision:
        return Decision(Action("act", name=self.rng.choice(obs.valid_actions)))


def record_call(messages: list[dict[str, Any]], c: Completion, role: str = "policy") -> ModelCall:
    """A model call as the trajectory keeps it: the prompt, the reply, and the token ids training will need."""
    return ModelCall(
        messages=messages,
        completion=c.text,
        prompt_ids=c.prompt_ids,
        completion_ids=c.completion_ids,
        completion_logprobs=c.logprobs,
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        finish_reason=c.finish_reason,
        latency_s=c.latency_s,
        role=role,
    )


def window_start(n: int, size: int) -> int:
    """Index of the oldest past turn kept in the prompt, out of `n`, keeping at most `size`.

    The window's start moves in jumps of size // 2 rather than one turn a step, so that between jumps each
    prompt extends the previous one and the server's prompt cache reuses it: about half the prompt tokens to
    evaluate per step, for a prompt that is still bounded.
    """
    if size <= 0:
        return n
    if n <= size:
        return 0
    chunk = max(1, size // 2)
    return -(-(n - size) // chunk) * chunk


class ExpertAgent:
    """The environment's own expert (e.g. the BabyAI bot), usable wherever an agent is.

    An expert that solves its task with tools (search, then answer) gets them here, like any agent.
    """

    name = "expert"

    def __init__(
        self, tools: Sequence[Tool] = (), teacher: LLMAgent | None = None, noise: float = 0.0, seed: int = 0
    ) -> None:
        self.tools = list(tools)
        self.teacher = teacher
        if teacher is not None:
            self.name = "teacher"
        self.noise = noise
        self.rng = random.Random(seed)

    def config(self) -> dict[str, Any]:
        noise = {"noise": self.noise} if self.noise else {}
        if self.teacher is not None:
            return {**self.teacher.config(), "agent": "teacher", **noise}
        return {"agent": "expert", **noise}

    async def act(self, obs: Observation, env: Env, history: list[Step]) -> Decision:
        if self.noise and obs.valid_actions and self.rng.random() < self.noise:
            # DART: a random move, recorded without a model call so that no one learns it; the expert's next
            # replies then show how to recover from the state it led to (put down what should not be carried,
            # turn back), states a clean expert never visits and a trained policy's own mistakes do.
            return Decision(Action("act", name=self.rng.choice(obs.valid_actions)))
        action = env.expert_action()
        if self.teacher is None:
            return Decision(action)
        # As a teacher, the expert also writes down the prompt an LLM agent would have seen and the reply it should
        # have given: the same records an LLM run makes, so SFT reads expert and model runs alike.
        messages = self.teacher.messages(obs, env, history, self.teacher.space(obs))
        return Decision(action, [ModelCall(_strip_images(messages), reply_json(action), role="policy")])


async def run_episode(
    env: Env,
    agent: Policy,
    seed: int,
    budget: Budget | None = None,
    callbacks: Sequence[StepCallback] = (),
    env_thread: bool = False,
) -> Trajectory:
    """Play one episode. Never raises for what the model or environment does: errors end up in the record.

    With `env_thread`, environment calls run in a worker thread, so that concurrent episodes' model calls go on
    while one environment computes (an evaluation does this; a single episode need not pay for the hop).
    """

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args) if env_thread else fn(*args)

    budget = budget or Budget()
    config = agent.config() if hasattr(agent, "config") else {}
    traj = Trajectory(
        env_id=env.id,
        seed=seed,
        agent=agent.name,
        model=getattr(getattr(agent, "model", None), "uri", ""),
        config={"budget": vars(budget), **config},
    )
    t0 = time.perf_counter()
    try:
        obs = await call(env.reset, seed)
    except Exception as e:
        traj.error, traj.stop_reason = f"environment failed to reset: {type(e).__name__}: {e}", "error"
        traj.duration_s = time.perf_counter() - t0
        return traj
    traj.task = str(obs.extras.get("mission", ""))
    tools = {t.name: t for t in agent.tools}
    tokens = 0
    while True:
        if len(traj.steps) >= budget.max_steps:
            traj.stop_reason = "max_steps"
            break
        if budget.max_tokens is not None and tokens >= budget.max_tokens:
            traj.stop_reason = "max_tokens"
            break
        if budget.max_seconds is not None and time.perf_counter() - t0 >= budget.max_seconds:
            traj.stop_reason = "max_seconds"
            break
        step = Step(index=len(traj.steps), observation=obs)
        t_step = time.perf_counter()
        try:
            decision = await agent.act(obs, env, traj.steps)
        except ContextOverflow:  # the agent's prompt outgrew the model: its failure, scored like running out of steps
            traj.stop_reason = "context_full"
            break
        except ModelError as e:
            traj.error, traj.stop_reason = f"model failed: {e}", "error"
            break
        except Exception as e:  # a policy bug ends this episode, recorded, not the whole evaluation
            traj.error, traj.stop_reason = f"agent failed: {type(e).__name__}: {e}", "error"
            break
        step.agent_s = time.perf_counter() - t_step
        step.calls = decision.calls
        step.action = decision.action
        tokens += sum(c.prompt_tokens + c.completion_tokens for c in decision.calls)
        if decision.error is not None:
            step.error, step.error_kind = decision.error.message, decision.error.kind
        action = decision.action
        t_env = time.perf_counter()
        if action is not None and action.kind == "tool":
            try:
                if action.name not in tools:
                    known = ", ".join(tools) or "none"
                    raise ToolError("unknown_action", f"unknown tool {action.name!r}; tools: {known}")
                step.result = await asyncio.to_thread(tools[action.name], action.args, obs)
            except ToolError as e:
                step.error, step.error_kind = str(e), e.kind
        elif action is not None and (action.kind == "act" or (action.kind == "answer" and env.accepts_answers)):
            try:
                result = await call(env.step, action)
            except Exception as e:
                step.env_s = time.perf_counter() - t_env
                traj.steps.append(step)
                traj.error, traj.stop_reason = f"environment failed: {type(e).__name__}: {e}", "error"
                break
            obs = result.observation
            step.reward, step.terminated, step.truncated, step.info = (
                result.reward,
                result.terminated,
                result.truncated,
                result.info,
            )
            traj.total_reward += result.reward
        step.env_s = time.perf_counter() - t_env
        traj.steps.append(step)
        for cb in callbacks:
            cb(step, traj)
        if action is not None and action.kind == "answer":
            traj.stop_reason = "answered"
            break
        if step.terminated or step.truncated:
            traj.stop_reason = "terminated" if step.terminated else "truncated"
            break
    traj.final_observation = obs
    try:
        traj.success = bool(env.success)
        traj.progress = float(env.progress)
    except Exception as e:  # a broken success signal must not lose the episode
        traj.error = traj.error or f"success check failed: {type(e).__name__}: {e}"
    traj.duration_s = time.perf_counter() - t0
    return traj


def _obs_text(obs: Observation) -> str:
    valid = obs.valid_actions
    tail = f"\nValid actions: {', '.join(valid)}" if valid else ""
    return obs.text + tail


def _reply(step: Step) -> str:
    """What the model said at a past step; a step taken without a model call (a shortcut's later actions, an
    expert's move) is shown as the JSON the model would have written."""
    if step.calls:
        return step.calls[-1].completion
    if step.action is None:
        return ""
    return reply_json(step.action)


def reply_json(action: Action) -> str:
    """The reply, in the action space's JSON format, that would have produced `action`."""
    body: dict[str, Any] = {"thought": action.thought}
    if action.kind == "act":
        body["action"] = action.name
    elif action.kind == "tool":
        body |= {"tool": action.name, "args": action.args}
    elif action.kind == "answer":
        body["answer"] = action.text
    return json.dumps(body, ensure_ascii=False)


def _feedback(step: Step | None) -> str:
    """What the model learns about its previous turn: a parse/tool error or a tool's output."""
    if step is None:
        return ""
    if step.error:
        return f"Your last reply was not carried out: {step.error}\n\n"
    if step.action is not None and step.action.kind == "tool":
        return f"Result of {step.action.name}:\n{step.result}\n\n"
    return ""


def _strip_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the prompt in the record without megabytes of base64: images become references to the frame."""
    out = []
    for m in messages:
        if isinstance(m.get("content"), list):
            parts = [p if p.get("type") == "text" else {"type": "image", "ref": "observation"} for p in m["content"]]
            m = {**m, "content": parts}
        out.append(m)
    return out
