"""Tools are typed Python functions; their JSON schema comes from the signature, their docstring describes them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError, create_model


class ToolError(Exception):
    """A tool call that could not run; its message is shown to the model."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # "bad_args" (the model's fault) or "tool_failed" (the tool's outcome)


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    fn: Callable[..., Any]
    _model: Any = None
    # Tools that look at what the agent sees (crop, OCR, perceptor) take the current Observation as the keyword
    # `observation`; it is not part of the schema the model fills in.
    wants_observation: bool = False

    def __call__(self, args: dict[str, Any], observation: Any = None) -> str:
        """Validate the arguments against the signature, run, and return the result as text."""
        try:
            validated = self._model.model_validate(args) if self._model else None
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'args'}: {err['msg']}" for err in e.errors())
            raise ToolError("bad_args", f"bad arguments for {self.name}: {problems}") from None
        kwargs = dict(validated) if validated is not None else dict(args)
        if self.wants_observation:
            kwargs["observation"] = observation
        try:
            result = self.fn(**kwargs)
        except ToolError:
            raise
        except Exception as e:  # the tool's own failure is the model's observation, not our crash
            raise ToolError("tool_failed", f"{self.name} failed: {type(e).__name__}: {e}") from None
        return result if isinstance(result, str) else str(result)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Make a Tool from a typed function: `@tool def add(a: int, b: int) -> int: "Add."`.

    A parameter named `observation` is filled by the loop with what the agent currently sees, not by the model.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        sig = inspect.signature(f)
        wants_observation = "observation" in sig.parameters
        fields = {
            p.name: (
                p.annotation if p.annotation is not inspect.Parameter.empty else Any,
                ... if p.default is inspect.Parameter.empty else p.default,
            )
            for p in sig.parameters.values()
            if p.name != "observation"
        }
        model = create_model(f"{f.__name__}_args", __config__={"extra": "forbid"}, **fields)
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        doc = inspect.getdoc(f) or ""
        return Tool(name or f.__name__, doc.strip(), schema, f, model, wants_observation)

    return wrap(fn) if fn is not None else wrap
