"""Agents that get better without training: reasoning, reflection, memory and Mobile-Agent-E style teams, each
part switched on by configuration and measured by the same evaluation.

    reasoning: plan            # direct | cot (bounded chain of thought) | plan (manager: subgoals, re-planning)
    action_reflector: true     # after each action: did it have the intended effect? the verdict is fed back
    notetaker: true            # keeps task-relevant facts across the episode
    perceptor: true            # screenshot → numbered elements (OCR, detection, DOM) for text-only models
    attempts: 2                # Reflexion: a failed episode is retried with a lesson written from it
    history: 4                 # working memory: recent turns replayed in full ...
    compact: true              # ... and older ones summarised, so the prompt stays bounded
    memory: runs/memory.sqlite # long-term memory: Tips, Shortcuts, solved episodes, retrieved by similarity
    models: {manager: "openai:big@http://...", reflector: "embedded:qwen2.5-coder-0.5b"}  # per-role models

Every role writes on one blackboard (plan, notes, last verdict, summary); the operator reads it. Each model call
is recorded with its role, so tokens and latency are reported per role.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pistar import configs
from pistar.actions import ActionSpace
from pistar.agent import Budget, Decision, LLMAgent, record_call, run_episode, window_start
from pistar.envs.base import Env
from pistar.memory import LongTermMemory, Recall, Shortcut
from pistar.models.base import Model
from pistar.records import Action, ModelCall, Observation, Step, Trajectory
from pistar.tools.base import Tool

ROLES = ("manager", "operator", "reflector", "notetaker")
SHORTCUT_PREFIX = "shortcut: "


class TeamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    reasoning: Literal["direct", "cot", "plan"] = "direct"
    action_reflector: bool = False
    notetaker: bool = False
    perceptor: bool = False
    attempts: int = Field(1, ge=1, le=5)
    history: int = Field(4, ge=0)
    compact: bool = False
    memory: str | None = None
    tips: int = Field(3, ge=0)
    shortcuts: int = Field(5, ge=0)
    examples: int = Field(1, ge=0)
    learn: bool = True
    replan_every: int = Field(8, ge=1)
    models: dict[str, str] = Field(default_factory=dict)

    def model_post_init(self, _: Any) -> None:
        unknown = set(self.models) - set(ROLES)
        if unknown:
            raise ValueError(f"models: unknown role(s) {', '.join(sorted(unknown))}; roles are {', '.join(ROLES)}")


def load_config(spec: str) -> TeamConfig:
    """A YAML file, inline `key=value,key=value` for quick ablations (`reasoning=cot,action_reflector=true`), or
    both: `agents/memory.yaml,memory=runs/m.sqlite` overrides the file's keys."""
    return configs.load_config(spec, TeamConfig, "agent config")


@dataclass
class Blackboard:
    """What the roles share during one episode."""

    plan: str = ""
    subgoal: str = ""
    notes: str = ""
    verdict: str = ""
    summary: str = ""
    summarised_upto: int = 0
    recall: Recall = field(default_factory=Recall)
    lessons: list[str] = field(default_factory=list)  # Reflexion: from failed attempts at this same task
    queue: list[str] = field(default_factory=list)  # the rest of a shortcut being executed
    running: str = ""
    tried: list[str] = field(default_factory=list)  # actions taken before from this very observation
    verdicts: list[dict[str, Any]] = field(default_factory=list)


_COT = (
    "Before acting, reason step by step in the thought (at most a few sentences): where the target is relative "
    "to you, what the last action changed, and which single action brings you closer."
)


class TeamAgent(LLMAgent):
    """The operator is an LLMAgent; the other roles add to what it reads. All parts off = the single agent."""

    def __init__(
        self,
        model: Model,
        tools: Sequence[Tool] = (),
        *,
        config: TeamConfig,
        role_models: dict[str, Model] | None = None,
        memory: LongTermMemory | None = None,
        **kwargs: Any,
    ):
        cot = config.reasoning in ("cot", "plan")
        kwargs.setdefault("thought_chars", 600 if cot else 240)
        kwargs.setdefault("max_tokens", 320 if cot else 160)
        super().__init__(model, tools, history=config.history, **kwargs)
        self.team = config
        self.roles = {role: (role_models or {}).get(role, model) for role in ROLES}
        self.memory = memory
        self.board = Blackboard()
        self.name = f"team:{config.name}({model.uri})"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "team": self.team.model_dump()}

    # -- the step ----------------------------------------------------------------------------------
    async def act(self, obs: Observation, env: Env, history: list[Step]) -> Decision:
        if not history:
            lessons = self.board.lessons
            self.board = Blackboard(lessons=lessons)
            if self.memory is not None:
                task = str(obs.extras.get("mission", "")) or obs.text[:300]
                self.board.recall = self.memory.recall(
                    env.id, task, tips=self.team.tips, shortcuts=self.team.shortcuts, examples=self.team.examples
                )
        if self.board.queue:  # inside a shortcut: its next action, if the world still allows it
            nxt = self.board.queue.pop(0)
            if not obs.valid_actions or nxt in obs.valid_actions:
                n = len(self.board.queue)
                return Decision(Action("act", name=nxt, thought=f"{self.board.running} (continues; {n} left)"))
            self.board.queue.clear()
            self.board.verdict = f"the shortcut {self.board.running} stopped: {nxt!r} was not possible"
        calls: list[ModelCall] = []
        if self.team.action_reflector and history:
            calls += await self._reflect(history[-1], obs)
            self.board.tried = _tried_here(obs, history)
        if self.team.reasoning == "plan" and self._should_plan(history):
            calls += await self._plan(obs, env, history)
        if self.team.notetaker and history and len(history) % 3 == 0:
            calls += await self._take_notes(obs, history)
        if self.team.compact:
            calls += await self._compact(history)
        decision = await super().act(obs, env, history)
        for c in decision.calls:
            c.role = "operator"
        decision.calls = calls + decision.calls
        action = decision.action
        if action is not None and action.kind == "act" and action.name.startswith(SHORTCUT_PREFIX):
            decision.action = self._start_shortcut(action, env)
        return decision

    def _should_plan(self, history: list[Step]) -> bool:
        if not history or not self.board.plan:
            return True
        failed = self.board.verdict.startswith(("failure", "no effect"))
        return failed or len(history) % self.team.replan_every == 0

    def _start_shortcut(self, action: Action, env: Env) -> Action:
        name = action.name.removeprefix(SHORTCUT_PREFIX)
        cut = next(s for s in self.board.recall.shortcuts if s.name == name)
        self.board.queue = list(cut.actions[1:])
        self.board.running = f"shortcut {name}"
        if self.memory is not None:
            self.memory.used_shortcut(env.id, name)
        return Action(
            "act", name=cut.actions[0], thought=f"{action.thought} [shortcut {name}: {', '.join(cut.actions)}]"
        )

    # -- what the operator reads -----------------------------------------------------------------------
    def space(self, obs: Observation) -> ActionSpace:
        space = super().space(obs)
        # the reflector's verdict binds: what led back here is not offered again
        fresh = [a for a in space.env_actions if a not in self.board.tried]
        space.env_actions = fresh + [SHORTCUT_PREFIX + s.name for s in self._shortcuts(obs)]
        return space

    def _shortcuts(self, obs: Observation) -> list[Shortcut]:
        return [s for s in self.board.recall.shortcuts if s.applicable(obs.text, obs.valid_actions)]

    def messages(self, obs: Observation, env: Env, history: list[Step], space: ActionSpace) -> list[dict[str, Any]]:
        msgs = super().messages(self._perceived(obs), env, history, space)
        extra = self._system_extra()
        if extra:
            msgs[0] = {"role": "system", "content": msgs[0]["content"] + "\n\n" + extra}
        board = self._board_text(obs)
        if self.team.compact and self.board.summary and len(msgs) > 2:  # the summary replaces the bare count
            msgs[1]["content"] = re.sub(r"^\(\d+ earlier steps not shown\)\n", "", _text(msgs[1]["content"]))
        if board:
            last = msgs[-1]
            if isinstance(last["content"], list):
                last["content"] = [{"type": "text", "text": board}, *last["content"]]
            else:
                last["content"] = board + "\n\n" + last["content"]
        return msgs

    def _perceived(self, obs: Observation) -> Observation:
        """The perceptor: a text-only operator gets a GUI screenshot as a numbered list of elements. Only screens
        (observations with a DOM or marked `screen`): a game's own text view already says what its frame shows."""
        screen = "dom" in obs.extras or obs.extras.get("screen")
        if not (self.team.perceptor and obs.images and screen and not self.model.vision):
            return obs
        from pistar.tools.image import perceive_observation

        return Observation(obs.text + "\n\nScreen elements:\n" + perceive_observation(obs), obs.images, obs.extras)

    def _system_extra(self) -> str:
        parts = []
        if self.team.reasoning in ("cot", "plan"):
            parts.append(_COT)
        r = self.board.recall
        if r.tips or self.board.lessons:
            tips = [*self.board.lessons, *r.tips]
            parts.append("Tips from earlier tasks:\n" + "\n".join(f"- {t}" for t in tips))
        if r.examples:
            ex = r.examples[0]
            lines = [f"{_state(s['observation'], ex['task'])} -> {s['action']}" for s in ex["steps"][:12]]
            parts.append(f"A solved example (task: {ex['task']}):\n" + "\n".join(lines))
        if r.shortcuts:
            cuts = [f"- {SHORTCUT_PREFIX}{s.name} = {', '.join(s.actions)}" for s in r.shortcuts]
            parts.append(
                "Shortcuts (when listed among the valid actions, one shortcut plays its whole sequence):\n"
                + "\n".join(cuts)
            )
        return "\n\n".join(parts)

    def _board_text(self, obs: Observation) -> str:
        b, parts = self.board, []
        if b.summary:
            parts.append(f"Summary of earlier steps: {b.summary}")
        if b.plan:
            parts.append(f"Plan: {b.plan}" + (f"\nCurrent subgoal: {b.subgoal}" if b.subgoal else ""))
        if b.notes:
            parts.append(f"Notes: {b.notes}")
        if b.verdict:
            parts.append(f"Check of your last action: {b.verdict}")
        if b.tried:
            parts.append(f"Tried here before, led back here, not offered now: {', '.join(b.tried)}")
        cuts = self._shortcuts(obs)
        if cuts:
            parts.append("Shortcuts available now: " + ", ".join(SHORTCUT_PREFIX + s.name for s in cuts))
        return "\n".join(parts)

    # -- the other roles ---------------------------------------------------------------------------------
    async def _ask(self, role: str, prompt: str, schema: dict[str, Any], max_tokens: int) -> tuple[dict, ModelCall]:
        model = self.roles[role]
        messages = [{"role": "user", "content": prompt}]
        c = await model.complete(messages, schema=schema, max_tokens=max_tokens, temperature=0.0)
        call = record_call(messages, c, role)
        try:
            data = json.loads(c.text[c.text.find("{") :])
        except (json.JSONDecodeError, ValueError):
            data = {}
        return (data if isinstance(data, dict) else {}), call

    async def _reflect(self, last: Step, obs: Observation) -> list[ModelCall]:
        """Action reflector: compare the observation before and after the last action."""
        if last.action is None or last.action.kind != "act":
            self.board.verdict = ""
            return []
        if last.observation.text == obs.text:  # nothing changed: no model needed to see that
            self.board.verdict = f"no effect: '{last.action.name}' changed nothing; do something else"
            self.board.verdicts.append({"step": last.index, "verdict": "no_effect", "by": "rule"})
            return []
        prompt = (
            f"Task: {obs.extras.get('mission', '')}\n"
            + (f"Intended subgoal: {self.board.subgoal}\n" if self.board.subgoal else "")
            + f"Before:\n{last.observation.text[:1200]}\n\nAction taken: {last.action.name}\n\n"
            f"After:\n{obs.text[:1200]}\n\nDid the action bring the agent closer to the task? "
            'Answer {"verdict": "progress"|"failure", "reason": "<one sentence>"}.'
        )
        schema = {
            "type": "object",
            "properties": {
                "verdict": {"enum": ["progress", "failure"]},
                "reason": {"type": "string", "maxLength": 200},
            },
            "required": ["verdict", "reason"],
            "additionalProperties": False,
        }
        data, call = await self._ask("reflector", prompt, schema, 80)
        verdict = data.get("verdict", "progress")
        self.board.verdict = f"{verdict}: {data.get('reason', '')}".strip()
        self.board.verdicts.append({"step": last.index, "verdict": verdict, "by": "model"})
        return [call]

    async def _plan(self, obs: Observation, env: Env, history: list[Step]) -> list[ModelCall]:
        """Manager: break the task into subgoals; re-plan when the reflector reports a failure."""
        recent = ", ".join(s.action.label() for s in history[-6:] if s.action) or "none yet"
        prompt = (
            f"You plan for an agent. {env.describe_actions()}\n\nCurrent observation:\n{obs.text[:1500]}\n\n"
            f"Recent actions: {recent}\n"
            + (
                f"Previous plan: {self.board.plan}\nCheck of the last action: {self.board.verdict}\n"
                if self.board.plan
                else ""
            )
            + 'Write a short plan of 2-4 subgoals and the current one: {"plan": "...", "subgoal": "..."}'
        )
        schema = {
            "type": "object",
            "properties": {
                "plan": {"type": "string", "maxLength": 300},
                "subgoal": {"type": "string", "maxLength": 120},
            },
            "required": ["plan", "subgoal"],
            "additionalProperties": False,
        }
        data, call = await self._ask("manager", prompt, schema, 160)
        self.board.plan, self.board.subgoal = str(data.get("plan", "")), str(data.get("subgoal", ""))
        return [call]

    async def _take_notes(self, obs: Observation, history: list[Step]) -> list[ModelCall]:
        """Notetaker: keep the facts the task will need later (codes, names, where things are), bounded."""
        prompt = (
            f"Task: {obs.extras.get('mission', '')}\nNotes so far: {self.board.notes or '(none)'}\n\n"
            f"Latest observation:\n{obs.text[:1500]}\n\nUpdate the notes with facts that matter for the task "
            '(at most 3 short sentences): {"notes": "..."}'
        )
        schema = {
            "type": "object",
            "properties": {"notes": {"type": "string", "maxLength": 300}},
            "required": ["notes"],
            "additionalProperties": False,
        }
        data, call = await self._ask("notetaker", prompt, schema, 110)
        self.board.notes = str(data.get("notes", self.board.notes))
        return [call]

    async def _compact(self, history: list[Step]) -> list[ModelCall]:
        """Working memory: turns that left the window are folded into a running summary, without a model call:
        counts of actions and their outcomes, so the prompt stays the same size however long the episode."""
        upto = window_start(len(history), self.history)
        if upto <= self.board.summarised_upto:
            return []
        done = Counter(s.action.label() for s in history[:upto] if s.action is not None)
        errors = sum(1 for s in history[:upto] if s.error)
        reward = sum(s.reward for s in history[:upto])
        top = ", ".join(f"{a} ×{n}" for a, n in done.most_common(6))
        self.board.summary = (
            f"steps 0-{upto - 1}: {top}" + (f"; {errors} rejected replies" if errors else "") + f"; reward {reward:g}"
        )
        self.board.summarised_upto = upto
        return []

    # -- after the episode ---------------------------------------------------------------------------------
    async def lesson(self, traj: Trajectory) -> tuple[str, list[ModelCall]]:
        """Reflexion: one lesson from a failed attempt, for the next attempt and for long-term memory."""
        actions = ", ".join(s.action.label() for s in traj.steps if s.action)[:1500]
        final = traj.final_observation.text[:800] if traj.final_observation else ""
        prompt = (
            f"An agent failed this task: {traj.task}\nIts actions: {actions}\nWhere it ended:\n{final}\n\n"
            'Write one short, general lesson for the next attempt: {"lesson": "..."}'
        )
        schema = {
            "type": "object",
            "properties": {"lesson": {"type": "string", "maxLength": 240}},
            "required": ["lesson"],
            "additionalProperties": False,
        }
        data, call = await self._ask("manager", prompt, schema, 100)
        return str(data.get("lesson", "")).strip(), [call]

    def learn(self, traj: Trajectory, lesson: str = "") -> None:
        """Write to long-term memory: the solved episode, its repeated action sequences as Shortcuts, a lesson."""
        if self.memory is None or not self.team.learn:
            return
        source = f"{traj.env_id}#{traj.seed}"
        if lesson:
            self.memory.add_tip(traj.env_id, traj.task, lesson, source)
        if not traj.success:
            return
        steps = [
            {"observation": s.observation.text, "action": s.action.label()}
            for s in traj.steps
            if s.action is not None and s.valid
        ]
        self.memory.add_episode(traj.env_id, traj.task, traj.seed, True, steps)
        for cut in mine_shortcuts(traj):
            self.memory.add_shortcut(cut, source)


def _tried_here(obs: Observation, history: list[Step]) -> list[str]:
    """Listed actions taken from this same observation more often than the least-tried one: in a deterministic
    world, being here again means they changed nothing or went round in a loop, which a small model repeats
    unless it is stopped. Once everything was tried, the choice goes round the actions instead of back to one
    (a TextWorld room where every exit was tried once otherwise got 'look' twenty times)."""
    valid = obs.valid_actions
    here = [s.action for s in history if s.action is not None and s.observation.text == obs.text]
    counts = Counter(a.name for a in here if a.kind == "act" and a.name in valid)
    least = min((counts[a] for a in valid), default=0)
    return [name for name in counts if counts[name] > least]


def mine_shortcuts(traj: Trajectory, lengths: Sequence[int] = (2, 3), min_count: int = 2) -> list[Shortcut]:
    """Action sequences a successful episode used at least twice become Shortcuts. Only actions the
    environment names the same in every state qualify (not 'click [12]', whose ref is of one page)."""
    acts = [s.action.name for s in traj.steps if s.action is not None and s.action.kind == "act" and s.valid]
    acts = [a for a in acts if not re.search(r"\[\d+\]|\(\d+", a)]
    found: list[Shortcut] = []
    for n in lengths:
        grams = Counter(tuple(acts[i : i + n]) for i in range(len(acts) - n + 1))
        for gram, count in grams.most_common():
            if count < min_count or len(set(gram)) == 1 and n > 2:
                continue
            name = "_then_".join(re.sub(r"\W+", "_", a).strip("_") for a in gram)
            found.append(
                Shortcut(name, list(gram), f"{' then '.join(gram)} (used {count}x in a solved task)", "", traj.env_id)
            )
    return found[:4]


async def play(
    env: Env, agent: Any, seed: int, budget: Budget, callbacks: Sequence[Any] = (), env_thread: bool = False
) -> Trajectory:
    """One evaluated episode: with a TeamAgent, Reflexion retries and memory writes; any other policy, plain."""
    if not isinstance(agent, TeamAgent):
        return await run_episode(env, agent, seed, budget, callbacks, env_thread)
    agent.board = Blackboard()
    earlier: list[dict[str, Any]] = []
    lessons: list[str] = []
    for attempt in range(agent.team.attempts):
        agent.board.lessons = list(lessons)
        traj = await run_episode(env, agent, seed, budget, callbacks, env_thread)
        last = attempt == agent.team.attempts - 1
        lesson = ""
        if not traj.success and traj.error is None and (not last or agent.team.learn):
            lesson, calls = await agent.lesson(traj)
            if traj.steps:
                traj.steps[-1].calls += calls
        agent.learn(traj, lesson)
        if traj.success or last:
            break
        lessons.append(lesson)
        tokens_in, tokens_out = traj.tokens
        earlier.append(
            {
                "attempt": attempt,
                "steps": traj.num_steps,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "lesson": lesson,
            }
        )
    traj.config["earlier_attempts"] = earlier
    traj.config["reflections"] = agent.board.verdicts
    return traj


def _state(observation: str, task: str) -> str:
    """One line of a solved example: what the step saw, less the goal that a game's observation opens with (the
    example's task is stated once above; cut at 160 characters, every line was that goal and none the room)."""
    text = observation.strip().removeprefix(f"Goal: {task}")
    return " ".join(text.split())[:160]


def _text(content: Any) -> str:
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
