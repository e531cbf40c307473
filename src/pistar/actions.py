"""The language action space: what a model may say, the JSON schema that constrains it, and a parser that never
raises.

A model answers with one JSON object:
    {"thought": "...", "action": "go forward"}                      act in the environment
    {"thought": "...", "action": "type [4] hello"}                  act with free text, where the env gives a pattern
    {"thought": "...", "tool": "calculator", "args": {...}}          call a tool
    {"thought": "...", "answer": "42"}                               give the final answer
    {"thought": "..."}                                               only think (when allowed)
Anything else becomes an ActionError: the model sees its message on the next turn and the step counts as invalid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pistar.records import Action
from pistar.tools.base import Tool

MAX_OUTPUT_CHARS = 20_000  # longer output is rejected before any parsing: 10 MB of text must not cost seconds


@dataclass
class ActionError:
    kind: str  # "empty", "too_long", "bad_json", "unknown_action", "bad_args", "schema"
    message: str


@dataclass
class ActionSpace:
    env_actions: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    answer: bool = False
    think_only: bool = False
    thought_chars: int = 300
    # Regexes for parameterised actions ("type [4] hello"): full-match, JSON-schema compatible, from the env.
    env_patterns: list[str] = field(default_factory=list)

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)

    def schema(self) -> dict[str, Any]:
        """A JSON schema with one branch per kind of action, for constrained decoding."""
        thought = {"type": "string", "maxLength": self.thought_chars}
        branches: list[dict[str, Any]] = []

        def obj(props: dict[str, Any]) -> dict[str, Any]:
            return {
                "type": "object",
                "properties": {"thought": thought, **props},
                "required": ["thought", *props],
                "additionalProperties": False,
            }

        if self.env_actions or self.env_patterns:
            choices: list[dict[str, Any]] = (
                [{"type": "string", "enum": list(self.env_actions)}] if self.env_actions else []
            )
            choices += [{"type": "string", "pattern": f"^(?:{p})$"} for p in self.env_patterns]
            branches.append(obj({"action": choices[0] if len(choices) == 1 else {"anyOf": choices}}))
        for t in self.tools:
            branches.append(obj({"tool": {"const": t.name}, "args": t.parameters}))
        if self.answer:
            branches.append(obj({"answer": {"type": "string"}}))
        if self.think_only or not branches:
            branches.append(obj({}))
        return branches[0] if len(branches) == 1 else {"anyOf": branches}

    def describe(self) -> str:
        """The output format in words, for the system prompt."""
        lines = ["Reply with exactly one JSON object and nothing else. Write a short thought first."]
        if self.env_actions or self.env_patterns:
            lines.append('To act: {"thought": "...", "action": "<one of the valid actions>"}')
        if self.tools:
            lines.append('To use a tool: {"thought": "...", "tool": "<tool name>", "args": {<arguments>}}')
            for t in self.tools:
                lines.append(f"- tool {t.name}: {t.description} Arguments schema: {json.dumps(t.parameters)}")
        if self.answer:
            lines.append('To give the final answer: {"thought": "...", "answer": "<answer>"}')
        if self.think_only:
            lines.append('To only think this turn: {"thought": "..."}')
        return "\n".join(lines)

    def parse(self, text: str) -> Action | ActionError:
        """Model output → Action, or a typed ActionError. Never raises."""
        if len(text) > MAX_OUTPUT_CHARS:
            return ActionError("too_long", f"output too long ({len(text)} characters; limit {MAX_OUTPUT_CHARS})")
        stripped = text.strip()
        if not stripped:
            return ActionError("empty", "empty output: reply with one JSON object")
        start = stripped.find("{")
        if start < 0:
            bare = _normalise(stripped)
            for name in self.env_actions:
                if _normalise(name) == bare:
                    return Action("act", name=name)
            return ActionError("bad_json", f"no JSON object found in {_clip(stripped)!r}")
        try:
            data, _ = json.JSONDecoder().raw_decode(stripped, start)
        except json.JSONDecodeError as e:
            kind = "truncated JSON" if e.pos >= len(stripped) - 1 else "invalid JSON"
            return ActionError("bad_json", f"{kind}: {e.msg} at character {e.pos}")
        if not isinstance(data, dict):
            return ActionError("bad_json", "expected a JSON object")
        return self._from_dict(data)

    def _from_dict(self, data: dict[str, Any]) -> Action | ActionError:
        thought = data.get("thought", "")
        thought = thought if isinstance(thought, str) else json.dumps(thought)
        name = data.get("action")
        if isinstance(name, str) and self.tool(name) and "tool" not in data:  # {"action": "calculator", "args": ...}
            data = {**data, "tool": name}
            name = None
        if "tool" in data:
            tool = self.tool(data["tool"]) if isinstance(data["tool"], str) else None
            if tool is None:
                known = ", ".join(t.name for t in self.tools) or "none"
                return ActionError("unknown_action", f"unknown tool {data['tool']!r}; tools: {known}")
            args = data.get("args", {})
            if not isinstance(args, dict):
                return ActionError("bad_args", f"args for {tool.name} must be a JSON object, got {_clip(str(args))!r}")
            return Action("tool", name=tool.name, args=args, thought=thought)
        if name is not None:
            if not isinstance(name, str):
                return ActionError("schema", f'"action" must be a string, got {_clip(json.dumps(name))}')
            for valid in self.env_actions:
                if _normalise(valid) == _normalise(name):
                    return Action("act", name=valid, thought=thought)
            if any(re.fullmatch(p, name, re.DOTALL) for p in self.env_patterns):
                return Action("act", name=name, thought=thought)
            return ActionError("unknown_action", f"{_clip(name)!r} is not a valid action; valid: {self._valid_list()}")
        if "answer" in data:
            if not self.answer:
                return ActionError("schema", "answering is not possible in this task: choose an action")
            return Action("answer", text=str(data["answer"]), thought=thought)
        if "thought" in data and self.think_only:
            return Action("think", thought=thought)
        keys = ", ".join(sorted(data)) or "none"
        return ActionError("schema", f'no "action", "tool" or "answer" key (keys given: {keys})')

    def _valid_list(self) -> str:
        patterns = [f"/{p}/" for p in self.env_patterns]
        return ", ".join([*self.env_actions, *patterns])


def _normalise(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def _clip(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[:n] + "…"
