"""The Berkeley Function Calling Leaderboard (BFCL) single-turn categories, graded by our own AST checker.

The cases and their possible answers ship as JSON lines inside the `bfcl-eval` wheel on PyPI. Installing that
package would pull a multi-GB CUDA torch, so `pull_bfcl` downloads only the pinned wheel (pip checks its sha256),
extracts the data files once into `$PISTAR_HOME/bfcl/<version>/`, and nothing of the package is imported or run.
Run time never downloads anything: missing data is an error that says which command fetches it.

One episode is one case: the observation holds the user's request and the function documentation; the agent answers
once with the call(s) it would make, as Python (`[f(a=1), g(b="x")]`) or JSON (`[{"name": ..., "arguments": ...}]`),
and `step` grades it. The grader follows the rules BFCL documents for its AST checker: exact function name, every
required parameter present, no unknown parameter, each value one of the possible answers (strings compared
case-insensitively, ignoring spaces and some punctuation; ints accepted for floats), lists and dicts element-wise,
parallel calls matched to the expected calls in any order.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pistar.downloads import pip_download, pistar_home
from pistar.envs.base import Env, StepResult
from pistar.records import Action, Observation

VERSION = "2026.3.23"  # bfcl-eval on PyPI
WHEEL_SHA256 = "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a"

# Our category name -> the stem of BFCL's files (BFCL v4 names the original Python "simple" set simple_python).
CATEGORIES: dict[str, str] = {
    "simple": "simple_python",
    "multiple": "multiple",
    "parallel": "parallel",
    "parallel_multiple": "parallel_multiple",
    "irrelevance": "irrelevance",
    "live_simple": "live_simple",
    "live_multiple": "live_multiple",
    "live_parallel": "live_parallel",
    "live_parallel_multiple": "live_parallel_multiple",
    "live_irrelevance": "live_irrelevance",
    "live_relevance": "live_relevance",
}
_NO_ANSWERS = {"irrelevance", "live_irrelevance", "live_relevance"}  # graded on whether a call was made at all
_MARKER = ".complete"


class BFCLDataMissing(RuntimeError):
    """The BFCL data is not on disk; the message says how to get it."""


@dataclass(frozen=True)
class Call:
    """One function call as the agent made it."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One BFCL case. `answers` holds one {function: {parameter: [acceptable values]}} per expected call."""

    id: str
    category: str
    messages: list[dict[str, str]]
    functions: list[dict[str, Any]]
    answers: list[dict[str, dict[str, list[Any]]]]


# -- data --------------------------------------------------------------------------------------------------------
def data_dir() -> Path:
    return pistar_home() / "bfcl" / VERSION


def is_pulled() -> bool:
    return (data_dir() / _MARKER).exists()


def _members() -> list[str]:
    """The wheel members we keep: each category's questions, the possible answers where BFCL has them, the card."""
    names = ["bfcl_eval/data/README.md"]
    for category, stem in CATEGORIES.items():
        names.append(f"bfcl_eval/data/BFCL_v4_{stem}.json")
        if category not in _NO_ANSWERS:
            names.append(f"bfcl_eval/data/possible_answer/BFCL_v4_{stem}.json")
    return names


def pull_bfcl(*, force: bool = False, quiet: bool = False) -> Path:
    """Download the pinned bfcl-eval wheel (pip verifies its sha256) and extract the data files; idempotent."""
    root = data_dir()
    if is_pulled() and not force:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".pull-") as tmp:
        (wheel,) = pip_download([("bfcl-eval", VERSION, WHEEL_SHA256)], Path(tmp), quiet=quiet)
        staging = Path(tmp) / "data"
        with zipfile.ZipFile(wheel) as z:
            for member in _members():
                target = staging / member.removeprefix("bfcl_eval/data/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(member))
        (staging / _MARKER).write_text(f"bfcl-eval=={VERSION} sha256:{WHEEL_SHA256}\n")
        if root.exists():
            shutil.rmtree(root)
        staging.replace(root)
    return root


def _read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_cases(category: str) -> list[Case]:
    """Every case of a category, in BFCL's order; BFCLDataMissing if `pistar data pull bfcl` has not run."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; known: {', '.join(CATEGORIES)}")
    if not is_pulled():
        raise BFCLDataMissing(f"BFCL data is not on disk: run `pistar data pull bfcl` (looked in {data_dir()})")
    return _load(category, data_dir())


@functools.cache
def _load(category: str, root: Path) -> list[Case]:
    stem = CATEGORIES[category]
    questions = _read_lines(root / f"BFCL_v4_{stem}.json")
    answers: dict[str, Any] = {}
    if category not in _NO_ANSWERS:
        answers = {
            a["id"]: _repair(a["ground_truth"]) for a in _read_lines(root / "possible_answer" / f"BFCL_v4_{stem}.json")
        }
    return [
        Case(q["id"], category, [m for turn in q["question"] for m in turn], q["function"], answers.get(q["id"], []))
        for q in questions
    ]


def _repair(answers: list[dict[str, dict[str, list[Any]]]]) -> list[dict[str, dict[str, list[Any]]]]:
    """Two live_simple cases list no acceptable value (`[]`) for array parameters where the empty list (`[[]]`) is
    meant; read literally no answer could pass, so read them as meant."""
    return [
        {n: {p: alts if alts != [] else [[]] for p, alts in params.items()} for n, params in a.items()} for a in answers
    ]


# -- parsing the agent's answer ----------------------------------------------------------------------------------
class AnswerError(ValueError):
    """The answer text is neither a Python call list nor a JSON call list."""


def parse_calls(text: str) -> list[Call]:
    """Read `[f(a=1), g(b='x')]` or `[{"name": "f", "arguments": {"a": 1}}]` (a lone call or object is fine too).

    Python is parsed with `ast` and never evaluated: literals become values, a bare name or any other expression
    becomes its source text (BFCL's possible answers write variables that way).
    """
    text = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text.strip())
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = ast.literal_eval(text)  # a Python repr of the JSON form, e.g. str() of a list of dicts
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            data = None
    if isinstance(data, dict | list):
        return _calls_from_json(data)
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise AnswerError(f"not a call list: {e}") from None
    nodes = tree.elts if isinstance(tree, ast.List | ast.Tuple) else [tree]
    return [_call_from_ast(n) for n in nodes]


def _calls_from_json(data: dict[str, Any] | list[Any]) -> list[Call]:
    calls = []
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, dict) and "name" not in item and len(item) == 1:  # BFCL's own {"f": {"a": 1}}
            ((name, arguments),) = item.items()
            item = {"name": name, "arguments": arguments}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise AnswerError(f'each call must be an object with "name" and "arguments", got {item!r:.80}')
        arguments = item.get("arguments", item.get("args", {}))
        if isinstance(arguments, str):  # OpenAI style: arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise AnswerError(f"arguments of {item['name']} are not a JSON object") from None
        if not isinstance(arguments, dict):
            raise AnswerError(f"arguments of {item['name']} must be an object, got {arguments!r:.80}")
        calls.append(Call(item["name"], arguments))
    return calls


def _call_from_ast(node: ast.expr) -> Call:
    if not isinstance(node, ast.Call):
        raise AnswerError(f"not a function call: {ast.unparse(node)[:80]}")
    if node.args:
        raise AnswerError(f"{ast.unparse(node.func)}: pass arguments by keyword (name=value)")
    if any(k.arg is None for k in node.keywords):
        raise AnswerError(f"{ast.unparse(node.func)}: **kwargs is not allowed")
    return Call(_dotted(node.func), {k.arg: _value(k.value) for k in node.keywords if k.arg is not None})


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise AnswerError(f"not a function name: {ast.unparse(node)[:80]}")


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Dict) and all(k is not None for k in node.keys):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _value(node.operand)
        if isinstance(inner, int | float) and not isinstance(inner, bool):
            return -inner if isinstance(node.op, ast.USub) else inner
    return ast.unparse(node)  # a variable name or an expression: its text, as BFCL writes such answers


def format_calls(calls: list[Call], style: str = "python") -> str:
    """The answer text for `calls`: BFCL's Python form `[f(a=1)]` or the JSON form."""
    if style == "json":
        return json.dumps([{"name": c.name, "arguments": c.arguments} for c in calls], ensure_ascii=False)
    return "[" + ", ".join(f"{c.name}({', '.join(f'{k}={v!r}' for k, v in c.arguments.items())})" for c in calls) + "]"


# -- grading -----------------------------------------------------------------------------------------------------
_PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
}


def normalise(s: str) -> str:
    """BFCL's string standardisation: lower case, no spaces or `,./-_*^`, single quotes as double quotes."""
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _same(value: Any, expected: Any) -> bool:
    """Equality with BFCL's leniencies, recursively: normalised strings, int == float, bools only equal bools."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(value, str) and isinstance(expected, str):
        return normalise(value) == normalise(expected)
    if isinstance(value, int | float) and isinstance(expected, int | float):
        return value == expected
    if isinstance(value, list) and isinstance(expected, list):
        return len(value) == len(expected) and all(_same(v, e) for v, e in zip(value, expected, strict=True))
    if isinstance(value, dict) and isinstance(expected, dict):
        return value.keys() == expected.keys() and all(_same(value[k], expected[k]) for k in value)
    return value is None and expected is None


def _dict_matches(value: dict[str, Any], alternatives: dict[str, list[Any]]) -> str | None:
    """Check a dict against {key: [acceptable values]} ("" = key may be left out); None if it matches."""
    for key, v in value.items():
        if key not in alternatives:
            return f"unexpected key {key!r}"
        if not any(_same(v, a) for a in alternatives[key] if a != "" or v == ""):
            return f"key {key!r} = {v!r} is not one of {alternatives[key]!r}"
    missing = [k for k, alts in alternatives.items() if k not in value and "" not in alts]
    return f"missing key {missing[0]!r}" if missing else None


def _type_ok(value: Any, schema: dict[str, Any], alternatives: list[Any]) -> bool:
    """The declared type, one level into arrays; a value typed like a possible answer passes (BFCL's variables)."""
    expected = _PYTHON_TYPES.get(str(schema.get("type")))
    if expected is None or type(value) is expected or (expected is float and type(value) is int):
        if expected is list and isinstance(schema.get("items"), dict):
            inner = [x for a in alternatives if isinstance(a, list) for x in a]
            return all(_type_ok(v, schema["items"], inner) for v in value)
        return True
    return any(type(a) is type(value) for a in alternatives if a != "")


def _check_value(name: str, value: Any, alternatives: list[Any], schema: dict[str, Any]) -> str | None:
    """Why `value` is not acceptable for parameter `name`, or None if it is."""
    if not _type_ok(value, schema, alternatives):
        return f"parameter {name!r} has the wrong type ({type(value).__name__}, expected {schema.get('type')})"
    kind, items = schema.get("type"), (schema.get("items") or {}).get("type")
    structured = [a for a in alternatives if a != ""]
    if kind in ("dict", "object") and isinstance(value, dict) and all(isinstance(a, dict) for a in structured):
        reasons = [_dict_matches(value, a) for a in structured]
        if None in reasons:
            return None
        return f"parameter {name!r}: {reasons[0] if reasons else 'no value expected'}"
    if items == "dict" and isinstance(value, list) and all(isinstance(a, list) for a in structured):
        for alt in structured:
            if len(alt) == len(value) and all(
                isinstance(v, dict) and _dict_matches(v, a) is None for v, a in zip(value, alt, strict=True)
            ):
                return None
        return f"parameter {name!r} = {value!r:.120} matches none of the possible answers"
    if any(_same(value, a) for a in alternatives if a != "" or value == ""):
        return None
    return f"parameter {name!r} = {value!r:.120} is not one of {alternatives!r:.200}"


def _check_call(call: Call, expected: dict[str, dict[str, list[Any]]], docs: list[dict[str, Any]]) -> str | None:
    """Why `call` does not match one expected call, or None if it does."""
    (name, params), *_ = expected.items()
    if call.name != name:
        return f"wrong function: expected {name}, got {call.name}"
    doc = next((d for d in docs if d["name"] == name), {})
    properties = doc.get("parameters", {}).get("properties", {})
    for required in doc.get("parameters", {}).get("required", []):
        if required not in call.arguments:
            return f"{name}: missing required parameter {required!r}"
    for param, value in call.arguments.items():
        if param not in properties or param not in params:
            return f"{name}: unknown parameter {param!r}"
        if (reason := _check_value(param, value, params[param], properties[param])) is not None:
            return f"{name}: {reason}"
    for param, alternatives in params.items():
        if param not in call.arguments and "" not in alternatives:
            return f"{name}: missing parameter {param!r}"
    return None


def _match(calls: list[Call], answers: list[Any], docs: list[Any], used: frozenset[int] = frozenset()) -> bool:
    """Whether the answers can each be matched to a distinct call (backtracking; parallel cases are small)."""
    if not answers:
        return True
    return any(
        i not in used and _check_call(c, answers[0], docs) is None and _match(calls, answers[1:], docs, used | {i})
        for i, c in enumerate(calls)
    )


def grade(case: Case, calls: list[Call] | None) -> tuple[bool, str]:
    """Judge the agent's calls (None = the answer could not be parsed as calls) against a case."""
    if case.category in ("irrelevance", "live_irrelevance"):
        return (True, "correctly made no call") if not calls else (False, f"made {len(calls)} call(s); none was due")
    if case.category == "live_relevance":
        return (True, f"made {len(calls)} call(s)") if calls else (False, "made no call; a call was due")
    if calls is None:
        return False, "the answer is not a list of function calls"
    if len(calls) != len(case.answers):
        return False, f"wrong number of calls: expected {len(case.answers)}, got {len(calls)}"
    if len(calls) == 1:
        reason = _check_call(calls[0], case.answers[0], case.functions)
        return (True, "correct") if reason is None else (False, reason)
    if _match(calls, case.answers, case.functions):
        return True, "correct"
    for i, expected in enumerate(case.answers):  # explain the first expected call that no call satisfies
        reasons = [_check_call(c, expected, case.functions) for c in calls]
        if None in reasons:
            continue
        same_name = [r for r, c in zip(reasons, calls, strict=True) if c.name in expected]
        return False, f"no call matches expected call {i + 1} ({next(iter(expected))}): {(same_name or reasons)[0]}"
    return False, "the calls cannot be matched one-to-one with the expected calls"


def expert_calls(case: Case) -> list[Call]:
    """The first possible answer: each parameter's first acceptable value; "" first means leave it out, except for
    a parameter the documentation requires (then its first real value) or does not know (then it is left out)."""
    if case.category in ("irrelevance", "live_irrelevance"):
        return []
    if case.category == "live_relevance":  # no ground truth: any call counts, so call the first function minimally
        doc = case.functions[0]
        props = doc.get("parameters", {}).get("properties", {})
        placeholder = {"integer": 0, "float": 0.0, "boolean": False, "array": [], "tuple": [], "dict": {}}
        args = {p: placeholder.get(props.get(p, {}).get("type"), "") for p in doc["parameters"].get("required", [])}
        return [Call(doc["name"], args)]

    def first(value: Any, schema: dict[str, Any]) -> Any:
        if schema.get("type") in ("dict", "object") and isinstance(value, dict):
            return _first_dict(value)
        if (schema.get("items") or {}).get("type") == "dict" and isinstance(value, list):
            return [_first_dict(v) if isinstance(v, dict) else v for v in value]
        return value

    calls = []
    for expected in case.answers:
        (name, params), *_ = expected.items()
        doc = next((d for d in case.functions if d["name"] == name), {})
        props = doc.get("parameters", {}).get("properties", {})
        required = doc.get("parameters", {}).get("required", [])
        args = {}
        for param, alternatives in params.items():
            given = [a for a in alternatives if a != ""]
            if param in required:  # "" listed for a required parameter: a value is due all the same
                args[param] = first(given[0], props[param]) if given else ""
            elif alternatives and alternatives[0] != "" and param in props:
                args[param] = first(alternatives[0], props[param])
        calls.append(Call(name, args))
    return calls


def _first_dict(alternatives: dict[str, list[Any]]) -> dict[str, Any]:
    return {k: v[0] for k, v in alternatives.items() if isinstance(v, list) and v and v[0] != ""}


# -- the environment ---------------------------------------------------------------------------------------------
class BFCLEnv(Env):
    """One BFCL category; `reset(seed)` plays case `seed` (modulo the category size) and one answer ends it."""

    accepts_answers = True  # the loop must hand kind="answer" actions to step(): that is how this env is played

    def __init__(self, category: str = "simple") -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown BFCL category {category!r}; known: {', '.join(CATEGORIES)}")
        self.category = category
        self.id = f"bfcl/{category}"
        self.cases = load_cases(category)
        self.case: Case | None = None
        self._correct = False
        self._done = False

    def reset(self, seed: int) -> Observation:
        self.case = self.cases[seed % len(self.cases)]
        self._correct = False
        self._done = False
        return self._observation()

    def step(self, action: Action) -> StepResult:
        if self.case is None or self._done:
            raise RuntimeError(f"{self.id}: call reset() before step() (one answer ends an episode)")
        calls: list[Call] | None = None
        parse_error = ""
        if action.kind != "answer":
            ok, reason = False, f"expected an answer with the function calls, got {action.label()!r}"
        else:
            try:
                calls = parse_calls(action.text)
            except AnswerError as e:
                parse_error = str(e)
            ok, reason = grade(self.case, calls)
            if calls is None and not ok:
                reason = f"{reason}: {parse_error}"
        self._correct, self._done = ok, True
        verdict = "correct" if ok else "incorrect"
        return StepResult(
            observation=Observation(f"Your answer is {verdict}: {reason}.", extras=self._extras()),
            reward=1.0 if ok else 0.0,
            terminated=True,
            info={
                "verdict": verdict,
                "reason": reason,
                "success": ok,
                "case_id": self.case.id,
                "calls": None if calls is None else [vars(c) for c in calls],
            },
        )

    def describe_actions(self) -> str:
        return (
            "You are given a user's request and the documentation of some functions. Answer once, with the "
            "function call(s) that fulfil the request, as your final answer. Write them as a Python list of calls "
            'with keyword arguments, e.g. [get_weather(city="Paris", unit="celsius"), get_time(zone="CET")], or as '
            'a JSON list, e.g. [{"name": "get_weather", "arguments": {"city": "Paris"}}]. Make several calls when '
            "the request asks for several things; use only the documented functions and parameters. If none of the "
            "functions fits the request, answer with an empty list: []."
        )

    @property
    def success(self) -> bool:
        return self._correct

    def expert_action(self) -> Action:
        if self.case is None:
            raise RuntimeError(f"{self.id}: call reset() first")
        return Action(kind="answer", text=format_calls(expert_calls(self.case)), thought="the ground truth")

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _extras(self) -> dict[str, Any]:
        assert self.case is not None
        users = [m["content"] for m in self.case.messages if m["role"] == "user"]
        return {
            "functions": self.case.functions,
            "case_id": self.case.id,
            "category": self.category,
            "mission": users[-1] if users else "",
            "valid_actions": [],
        }

    def _observation(self) -> Observation:
        assert self.case is not None
        conversation = [f"{m['role'].capitalize()}: {m['content']}" for m in self.case.messages]
        functions = [json.dumps(f, ensure_ascii=False) for f in self.case.functions]
        text = "\n".join([*conversation, "", "Available functions:", *(functions or ["(none)"])])
        return Observation(text, extras=self._extras())
