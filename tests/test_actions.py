import json

import pytest

from pistar.actions import MAX_OUTPUT_CHARS, ActionError, ActionSpace
from pistar.records import Action
from pistar.tools.calculator import calculator

ENV_ACTIONS = ["turn left", "turn right", "go forward", "pick up"]


@pytest.fixture
def space() -> ActionSpace:
    return ActionSpace(ENV_ACTIONS, [calculator], answer=True)


def test_well_formed_actions_parse(space: ActionSpace) -> None:
    a = space.parse('{"thought": "ahead", "action": "go forward"}')
    assert a == Action("act", name="go forward", thought="ahead")
    t = space.parse('{"thought": "x", "tool": "calculator", "args": {"expression": "2+2"}}')
    assert isinstance(t, Action) and t.kind == "tool" and t.args == {"expression": "2+2"}
    assert space.parse('{"thought": "done", "answer": "42"}') == Action("answer", text="42", thought="done")


def test_lenient_forms_small_models_produce(space: ActionSpace) -> None:
    fenced = space.parse('```json\n{"thought": "t", "action": "Turn Left"}\n```')
    assert isinstance(fenced, Action) and fenced.name == "turn left"
    bare = space.parse("go forward")
    assert isinstance(bare, Action) and bare.name == "go forward"
    as_action = space.parse('{"action": "calculator", "args": {"expression": "1"}}')
    assert isinstance(as_action, Action) and as_action.kind == "tool"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ('{"thought": "I will go', "bad_json"),
        ('{"thought": "a", "action": "go forward"', "bad_json"),
        ("I think I should move", "bad_json"),
        ('{"thought": "a", "action": "jump"}', "unknown_action"),
        ('{"thought": "a", "tool": "browser", "args": {}}', "unknown_action"),
        ('{"thought": "a", "tool": "calculator", "args": "2+2"}', "bad_args"),
        ('{"thought": "a", "action": ["go forward"]}', "schema"),
        ('{"thought": "only thinking"}', "schema"),
        ("[1, 2, 3]", "bad_json"),
        ("x" * (10 * 1024 * 1024), "too_long"),
        ('{"a": 1}' + " " * MAX_OUTPUT_CHARS, "too_long"),
    ],
)
def test_garbage_is_a_typed_error_never_an_exception(space: ActionSpace, text: str, kind: str) -> None:
    result = space.parse(text)
    assert isinstance(result, ActionError)
    assert result.kind == kind
    assert result.message and "\n" not in result.message and len(result.message) < 400


def test_unknown_action_error_lists_the_valid_ones(space: ActionSpace) -> None:
    err = space.parse('{"thought": "", "action": "fly"}')
    assert isinstance(err, ActionError)
    assert all(a in err.message for a in ENV_ACTIONS)


def test_answer_refused_where_the_task_has_none() -> None:
    err = ActionSpace(ENV_ACTIONS).parse('{"thought": "", "answer": "yes"}')
    assert isinstance(err, ActionError) and err.kind == "schema"


def test_think_only_when_allowed() -> None:
    a = ActionSpace(ENV_ACTIONS, think_only=True).parse('{"thought": "let me plan"}')
    assert a == Action("think", thought="let me plan")


def test_schema_has_one_branch_per_kind_and_llama_cpp_compiles_it(space: ActionSpace) -> None:
    import xllamacpp

    schema = space.schema()
    branches = schema["anyOf"]
    assert len(branches) == 3
    assert branches[0]["properties"]["action"]["enum"] == ENV_ACTIONS
    assert branches[1]["properties"]["tool"] == {"const": "calculator"}
    assert branches[1]["properties"]["args"]["required"] == ["expression"]
    assert all(b["additionalProperties"] is False for b in branches)
    grammar = xllamacpp.json_schema_to_grammar(json.dumps(schema))
    assert "go forward" in grammar and "calculator" in grammar


def test_describe_names_every_tool(space: ActionSpace) -> None:
    text = space.describe()
    assert "calculator" in text and '"answer"' in text and '"action"' in text


def test_parameterised_actions_match_the_env_patterns_and_llama_cpp_compiles_them() -> None:
    import xllamacpp

    space = ActionSpace(["click [1]", "press Enter"], env_patterns=[r"type \[[0-9]+\] .+"])
    assert space.parse('{"thought": "t", "action": "type [3] hello world"}') == Action(
        "act", name="type [3] hello world", thought="t"
    )
    assert space.parse('{"thought": "t", "action": "click [1]"}') == Action("act", name="click [1]", thought="t")
    bad = space.parse('{"thought": "t", "action": "type hello"}')
    assert isinstance(bad, ActionError) and bad.kind == "unknown_action" and "/type" in bad.message
    choices = space.schema()["properties"]["action"]["anyOf"]
    assert choices[0]["enum"] == ["click [1]", "press Enter"] and choices[1]["pattern"].startswith("^")
    assert "type" in xllamacpp.json_schema_to_grammar(json.dumps(space.schema()))
