"""Model backends against real models and servers: the embedded llama.cpp, an OpenAI-compatible server, hf."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from conftest import SMALL, require

from pistar.actions import ActionSpace
from pistar.downloads import sha256_file
from pistar.models import ContextOverflow, ModelError, ModelMissing, load_model, parse_uri, weights
from pistar.records import Action
from pistar.tools.calculator import calculator

SPACE = ActionSpace(["turn left", "turn right", "go forward"], [calculator], thought_chars=80)
MESSAGES = [
    {"role": "system", "content": "You control a robot. " + SPACE.describe()},
    {"role": "user", "content": "The red ball is 2 steps forward. Valid actions: turn left, turn right, go forward"},
]


def test_uri_parsing_and_clear_errors() -> None:
    assert parse_uri("embedded") == ("embedded", "", {})
    assert parse_uri("embedded:qwen2.5-coder-0.5b?ctx=4096") == ("embedded", "qwen2.5-coder-0.5b", {"ctx": "4096"})
    assert parse_uri("openai:gpt-4o@http://h:8000/v1?vision=1")[2] == {"vision": "1"}
    with pytest.raises(ValueError, match="expected embedded"):
        parse_uri("ollama:llama3")
    with pytest.raises(ValueError, match="key=value"):
        parse_uri("embedded:x?ctx")


def test_missing_model_says_which_pull_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PISTAR_HOME", str(tmp_path))
    with pytest.raises(ModelMissing, match="pistar models pull qwen2.5-coder-1.5b"):
        load_model("embedded:qwen2.5-coder-1.5b")
    with pytest.raises(ModelMissing, match="unknown model 'llama-70b'"):
        load_model("embedded:llama-70b")


def test_catalog_pins_are_consistent() -> None:
    for w in weights.CATALOG.values():
        assert len(w.sha256) == 64 and all(len(h) == 64 for h in w.part_sha256)
        assert len(set(w.part_sha256)) == len(w.part_sha256)
    assert weights.DEFAULT_MODEL in weights.CATALOG


def test_pulled_weights_match_their_sha256() -> None:
    require(SMALL)
    assert sha256_file(weights.path_of(SMALL)) == weights.CATALOG[SMALL].sha256


async def test_embedded_records_exact_tokens_and_obeys_the_schema(small_model) -> None:  # noqa: ANN001
    c = await small_model.complete(MESSAGES, schema=SPACE.schema(), max_tokens=96)
    action = SPACE.parse(c.text)
    assert isinstance(action, Action), c.text
    # the prompt ids are the tokenized chat template, and the completion ids decode to the text
    assert c.prompt_ids == await small_model.tokenize(await small_model.render(MESSAGES))
    async with httpx.AsyncClient(base_url=small_model.base_url) as http:
        detok = (await http.post("/detokenize", json={"tokens": c.completion_ids})).json()["content"]
    assert detok.startswith(c.text.strip()) or c.text.strip() in detok
    assert len(c.logprobs) == len(c.completion_ids) == c.completion_tokens
    assert all(lp <= 0 for lp in c.logprobs)


async def test_embedded_sampling_is_reproducible_by_seed(small_model) -> None:  # noqa: ANN001
    runs = [await small_model.complete(MESSAGES, max_tokens=24, temperature=1.0, seed=s) for s in (7, 7, 8)]
    assert runs[0].completion_ids == runs[1].completion_ids
    assert runs[0].completion_ids != runs[2].completion_ids


async def test_context_overflow_is_a_clear_error_of_its_own_kind(small_model) -> None:  # noqa: ANN001
    """Both backends name it the same way, so the agent loop can score it as the agent's failure."""
    long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(ContextOverflow, match="exceeds the context"):
        await small_model.complete(long, max_tokens=16)
    server = load_model(f"openai:local@{small_model.base_url}/v1")  # llama.cpp's own server says it in its words
    server._client_args["max_retries"] = 0
    with pytest.raises(ContextOverflow, match="context size"):
        await server.complete(long, max_tokens=16)
    await server.aclose()


async def test_openai_backend_keeps_many_requests_in_flight(small_model) -> None:  # noqa: ANN001
    """A real OpenAI-compatible server (llama.cpp's, started by xllamacpp), 8 concurrent structured requests."""
    model = load_model(f"openai:local@{small_model.base_url}/v1?concurrency=6")
    replies = await asyncio.gather(
        *[model.complete(MESSAGES, schema=SPACE.schema(), max_tokens=96, temperature=0.7, seed=i) for i in range(8)]
    )
    assert model.max_in_flight >= 4
    for r in replies:
        assert isinstance(SPACE.parse(r.text), Action), r.text
        assert r.prompt_tokens > 50 and r.completion_tokens > 0 and r.logprobs
    await model.aclose()


async def test_openai_backend_dead_server_is_one_clear_error() -> None:
    model = load_model("openai:x@http://127.0.0.1:9/v1?timeout=2")
    model._client_args["max_retries"] = 1
    with pytest.raises(ModelError, match="127.0.0.1:9"):
        await model.complete(MESSAGES, max_tokens=4)


@pytest.mark.slow
async def test_hf_backend_constrained_and_token_exact() -> None:
    """The transformers backend on the same Qwen weights (dequantized once into the cache)."""
    require(SMALL)
    model = load_model(f"hf:{SMALL}")
    c = await model.complete(MESSAGES, schema=SPACE.schema(), max_tokens=64)
    assert isinstance(SPACE.parse(c.text), Action), c.text
    expected = model.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert c.prompt_ids == list(expected["input_ids"])
    assert model.tokenizer.decode(c.completion_ids, skip_special_tokens=True) == c.text
    assert len(c.logprobs) == len(c.completion_ids) and all(lp <= 0 for lp in c.logprobs)
    assert json.loads(c.text)  # constrained: valid JSON even from a 0.5B model


@pytest.mark.slow
async def test_hf_backend_prefills_the_system_prompt_once_and_replies_the_same() -> None:
    """The system message's keys and values are computed once per instance and reused by every later call with
    it; the replies and their log-probs are those of prefilling every prompt in full."""
    require(SMALL)
    model = load_model(f"hf:{SMALL}")
    second = {"role": "user", "content": "The red ball is 1 step right. Valid actions: " + ", ".join(SPACE.env_actions)}
    conversations = [MESSAGES, [MESSAGES[0], second], [{"role": "user", "content": "hi"}]]
    cached = [await model.complete(m, schema=SPACE.schema(), max_tokens=24) for m in conversations]
    assert len(model._prefixes) == 1  # one system message, computed once; the last call has none
    model._system_cache = lambda *_: None  # the same weights, every prompt prefilled in full
    full = [await model.complete(m, schema=SPACE.schema(), max_tokens=24) for m in conversations]
    for c, f in zip(cached, full, strict=True):
        assert c.prompt_ids == f.prompt_ids and c.completion_ids == f.completion_ids
        assert c.logprobs == pytest.approx(f.logprobs, abs=1e-3)
