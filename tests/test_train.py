"""Training: datasets from real runs, SFT/DPO through TRL, GRPO/PPO through our own loop, on a tiny model.

The tiny model is a randomly initialised 2-layer Qwen2 with the real Qwen tokenizer and chat template, so every
path (chat template, masks, LoRA, the agent loop's token records) is the one a real model takes, in seconds.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL, require

from pistar.evaluate import AgentSpec, evaluate
from pistar.suites import Suite, TaskSpec
from pistar.train.data import Filters, build, split_of
from pistar.train.model import TrainConfig, nested, tiny_qwen2, tokenize_example
from pistar.train.rl import (
    RLTrainer,
    Turn,
    batch_logprobs,
    by_prompt,
    clipped_surrogate,
    completion_logprobs,
    gae,
    grpo_advantages,
    train_rl,
    value_loss,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(SMALL)
    return tiny_qwen2(tmp_path_factory.mktemp("tiny"), SMALL)


def suite(env: str, seeds: int, max_steps: int, start: int = 0) -> Suite:
    return Suite("t", [TaskSpec(env=env, seeds=seeds, seed_start=start, max_steps=max_steps)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A teacher run and a random run on the same BabyAI seeds (no model needed: the bot and a seeded policy)."""
    root = tmp_path_factory.mktemp("runs")
    s = suite("babyai/GoToLocal", 6, 12)
    out = {}
    for kind in ("teacher", "random"):
        asyncio.run(evaluate(s, AgentSpec(kind=kind, history=1), root / kind, concurrency=2))
        out[kind] = root / kind
    return out


def test_teacher_runs_become_a_split_dataset_and_failures_become_corrections(runs: dict, tmp_path: Path) -> None:
    from datasets import load_from_disk

    summary = build([runs["teacher"], runs["random"]], tmp_path / "ds", Filters(success=True), correct=True, history=1)
    sft = load_from_disk(str(tmp_path / "ds" / "sft"))
    rows = [r for split in sft.values() for r in split]
    # Every kept teacher step is an example whose reply names the bot's action, in the agent's JSON format.
    teacher = [r for r in rows if r["kind"] == "teacher"]
    assert teacher and all(
        json.loads(r["completion"])["action"] in ("turn left", "turn right", "go forward") for r in teacher
    )
    assert all(r["messages"][0]["role"] == "system" and "Valid actions" in r["messages"][-1]["content"] for r in rows)
    assert all(json.loads(r["completion"])["action"] == r["action"] for r in rows)  # teacher and corrections
    # The random agent's failures were replayed and relabelled by the bot, and the same states became DPO pairs.
    n_fail = summary["dropped"].get("failed", 0)
    # (A state met twice with different random actions is one correction and two pairs.)
    assert n_fail > 0 and 0 < summary["sft"]["correction"] <= summary["dpo"]["correction"]
    dpo = load_from_disk(str(tmp_path / "ds" / "dpo"))
    pair = next(iter(dpo.values()))[0]
    assert pair["chosen"][0]["content"] != pair["rejected"][0]["content"]
    # The split is by (env, seed): no task has examples on both sides.
    sides: dict[tuple[str, int], set[str]] = {}
    for side, split in sft.items():
        for r in split:
            sides.setdefault((r["env_id"], r["seed"]), set()).add(side)
            assert split_of(r["env_id"], r["seed"], 0.1) == side
    assert all(len(s) == 1 for s in sides.values())


def test_a_noisy_teacher_shows_recoveries_and_its_random_moves_are_not_learned(tmp_path: Path) -> None:
    """DART: a share of the teacher's steps take a random action; those have no reply to learn from, and the bot's
    replies after them start from states a clean teacher never reaches (a wrong object picked up, then dropped)."""
    from datasets import load_from_disk

    from pistar.train.data import trajectories

    s = suite("babyai/MixedTrainLocal/pickup", 20, 24, start=1000)
    spec = AgentSpec(kind="teacher", history=24, noise=0.3)
    asyncio.run(evaluate(s, spec, tmp_path / "a", concurrency=2))
    asyncio.run(evaluate(s, spec, tmp_path / "b", concurrency=2))
    played = {p: {t.seed: t for _, t in trajectories([tmp_path / p])} for p in "ab"}
    assert {seed: [x.action for x in t.steps] for seed, t in played["a"].items()} == {
        seed: [x.action for x in t.steps] for seed, t in played["b"].items()
    }  # the noise is seeded per episode
    steps = [x for t in played["a"].values() for x in t.steps]
    random_moves = [x for x in steps if not x.calls]
    assert 0.15 < len(random_moves) / len(steps) < 0.45
    won = [t for t in played["a"].values() if t.success]
    assert len(won) >= 15  # the bot recovers from most perturbations
    recoveries = [
        t.seed
        for t in won
        for before, after in zip(t.steps, t.steps[1:], strict=False)
        if not before.calls and before.action.name == "pick up" and after.calls and after.action.name == "drop"
    ]
    assert recoveries, "no wrong pick-up was followed by the bot dropping it"
    build([tmp_path / "a"], tmp_path / "ds", Filters(success=True), pairs=False, validation=0.0)
    rows = load_from_disk(str(tmp_path / "ds" / "sft"))["train"]
    assert len(rows) == sum(len(x.calls) for t in won for x in t.steps) < sum(len(t.steps) for t in won)


def test_duplicates_are_dropped_and_counted(runs: dict, tmp_path: Path) -> None:
    """The same run read twice gives the same examples once: a copy adds weight, not information."""
    from datasets import load_from_disk

    once = build([runs["teacher"]], tmp_path / "a", Filters(), validation=0.0, correct=True)
    twice = build([runs["teacher"], runs["teacher"]], tmp_path / "b", Filters(), validation=0.0, correct=True)
    assert twice["kept"] == 2 * once["kept"]
    assert twice["sft_split"] == once["sft_split"]
    assert twice["duplicates"]["sft"] == once["duplicates"]["sft"] + once["sft_split"]["train"]
    rows = list(load_from_disk(str(tmp_path / "b" / "sft"))["train"])
    assert len({json.dumps([r["messages"], r["completion"]]) for r in rows}) == len(rows)


def test_success_filter_and_rule_filters_drop_what_they_say(runs: dict, tmp_path: Path) -> None:
    everything = build([runs["random"]], tmp_path / "a", Filters(), pairs=False)
    winners = build([runs["random"]], tmp_path / "b", Filters(success=True), pairs=False)
    short = build([runs["random"]], tmp_path / "c", Filters(max_steps=3), pairs=False)
    assert everything["kept"] == 6
    assert winners["kept"] + winners["dropped"].get("failed", 0) == 6
    assert short["dropped"].get("too long", 0) >= winners["dropped"].get("failed", 0)  # failures ran 12 steps


def test_a_balanced_subset_keeps_the_rare_action_the_random_one_drowns(runs: dict, tmp_path: Path) -> None:
    from datasets import load_from_disk

    from pistar.train.sft import subset

    build([runs["teacher"]], tmp_path / "ds", Filters(success=True), validation=0.0, pairs=False)
    train = load_from_disk(str(tmp_path / "ds" / "sft"))["train"]
    actions = list(train["action"])
    # The action column names what the reply does.
    assert all(json.loads(r["completion"])["action"] == r["action"] for r in train)
    counts = {a: actions.count(a) for a in set(actions)}
    rare = min(counts, key=counts.get)
    n = len(counts) * counts[rare]
    assert len(counts) >= 3 and n < len(train)
    balanced = [actions[i] for i in subset(train, n, 0, balance=True)]
    plain = [actions[i] for i in subset(train, n, 0, balance=False)]
    # Round-robin over the actions: each appears exactly as often as the rarest, which is kept whole.
    assert all(balanced.count(a) == counts[rare] for a in counts)
    assert len(set(subset(train, n, 0, balance=True))) == n
    # A random draw keeps the imbalance (the frequent action is over its share).
    top = max(counts, key=counts.get)
    assert plain.count(top) > counts[rare]


def _final_hidden_grad(model: Any) -> dict[str, Any]:
    """Capture the gradient reaching the last hidden states: position t's state feeds only the prediction of token
    t+1 (TRL fuses lm_head and the loss, so there is no logits tensor to watch)."""
    box: dict[str, Any] = {}

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        output.retain_grad()
        box["hidden"] = output

    model.get_decoder().norm.register_forward_hook(hook)
    return box


def _conversation() -> tuple[list[dict[str, str]], str]:
    messages = [
        {"role": "system", "content": "You act in an environment."},
        {"role": "user", "content": "You see a red ball 2 steps forward."},
        {"role": "assistant", "content": '{"thought": "", "tool": "calculator", "args": {"expression": "1+1"}}'},
        {"role": "user", "content": "Result of calculator:\n2\n\nYou see a red ball 2 steps forward."},
    ]
    return messages, '{"thought": "go", "action": "go forward"}'


def test_sft_gradient_on_environment_and_tool_tokens_is_exactly_zero(tiny: Path, tmp_path: Path) -> None:
    """Through TRL's own collator and loss: the positions that predict prompt tokens (environment text, the tool's
    output, the earlier reply shown as context) get zero gradient; the reply's tokens do get one."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from pistar.train.model import load_policy, load_tokenizer
    from pistar.train.sft import tokenized

    tok = load_tokenizer(str(tiny))
    messages, reply = _conversation()
    data, dropped = tokenized(Dataset.from_list([{"messages": messages, "completion": reply}]), tok, 4096)
    assert dropped == 0
    model, _, _ = load_policy(TrainConfig(model=str(tiny), lora=False))
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    batch = trainer.data_collator([data[0]])
    box = _final_hidden_grad(model)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grad = box["hidden"].grad[0].abs().sum(-1)  # per position
    ids, start = tokenize_example(tok, messages, reply)
    # Position t predicts token t+1: positions < start-1 predict prompt tokens.
    assert float(grad[: start - 1].sum()) == 0.0
    assert bool((grad[start - 1 : len(ids) - 1] > 0).all())
    assert "Result of calculator" in tok.decode(ids[:start])  # the tool output really was in the masked part


def test_an_episode_kept_in_its_prompt_trains_as_one_sequence_with_the_loss_of_its_calls(
    tiny: Path, tmp_path: Path
) -> None:
    """A teacher that keeps its whole episode in the prompt: its calls merge into one sequence per episode, whose
    labelled tokens and summed log-likelihood are exactly those of one example per call."""
    from pistar.train.model import load_policy, load_tokenizer
    from pistar.train.sft import load_dataset_dir, tokenized

    asyncio.run(evaluate(suite("babyai/GoToLocal", 3, 12), AgentSpec(kind="teacher", history=12), tmp_path / "t"))
    build([tmp_path / "t"], tmp_path / "ds", Filters(success=True), pairs=False, validation=0.0)
    rows = load_dataset_dir(str(tmp_path / "ds"), "sft")["train"]
    tok = load_tokenizer(str(tiny))
    merged, dropped = tokenized(rows, tok, 4096)
    assert dropped == 0 and len(merged) == len(set(rows["episode"])) == 3 and len(rows) > 6
    model, _, _ = load_policy(TrainConfig(model=str(tiny), lora=False))

    def loglik(ids: list[int], labels: list[int]) -> tuple[float, int]:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
        target = torch.tensor(labels[1:])
        keep = target != -100
        return float(logp[keep].gather(-1, target[keep, None]).sum()), int(keep.sum())

    apart = [tokenize_example(tok, r["messages"], r["completion"]) for r in rows]
    apart_ll = [loglik(ids, [-100] * start + ids[start:]) for ids, start in apart]
    merged_ll = [loglik(r["input_ids"], r["labels"]) for r in merged]
    assert sum(n for _, n in merged_ll) == sum(n for _, n in apart_ll)
    assert sum(len(r["input_ids"]) for r in merged) < 0.5 * sum(len(ids) for ids, _ in apart)
    assert math.isclose(sum(x for x, _ in merged_ll), sum(x for x, _ in apart_ll), rel_tol=1e-4)


def test_rl_turn_loss_gives_prompt_tokens_zero_gradient(tiny: Path) -> None:
    from pistar.train.model import load_policy, load_tokenizer

    tok = load_tokenizer(str(tiny))
    messages, reply = _conversation()
    ids, start = tokenize_example(tok, messages, reply)
    model, _, _ = load_policy(TrainConfig(model=str(tiny), lora=False))
    box = _final_hidden_grad(model)
    logp, _, _ = completion_logprobs(model, ids[:start], ids[start:])
    loss, _ = clipped_surrogate(logp, logp.detach(), torch.tensor(1.0), 0.2)
    loss.sum().backward()
    grad = box["hidden"].grad[0].abs().sum(-1)
    assert float(grad[: start - 1].sum()) == 0.0 and bool((grad[start - 1 : -1] > 0).all())


def batched_equals_one_pass_each(model: Any, pairs: list[tuple[list[int], list[int]]]) -> tuple[int, int]:
    """Asserts `batch_logprobs` gives every pair the log-probs, entropies, value state and gradient of a pass of its
    own; returns the tokens embedded by the separate passes and by the batched one."""
    embedded: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda _m, i, _o: embedded.append(i[0].numel()))

    def grads(outputs: list[tuple[Any, Any, Any]]) -> list[Any]:
        model.zero_grad()
        sum(logp.sum() + h.sum() for logp, _, h in outputs).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    alone = [completion_logprobs(model, p, c, hidden=True) for p, c in pairs]
    tokens_alone, embedded[:] = sum(embedded), []
    batched = batch_logprobs(model, pairs, hidden=True)
    tokens_batched = sum(embedded)
    hook.remove()
    for (logp, entropy, h), (logp_b, entropy_b, h_b), (_, completion) in zip(alone, batched, pairs, strict=True):
        assert logp.shape == (len(completion),)
        torch.testing.assert_close(logp_b, logp, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(entropy_b, entropy, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(h_b, h, atol=1e-5, rtol=1e-4)
    for g_b, g in zip(grads(batched), grads(alone), strict=True):
        torch.testing.assert_close(g_b, g, atol=1e-5, rtol=1e-3)
    return tokens_alone, tokens_batched


def test_batched_turns_share_their_prompt_prefix_and_match_one_pass_each(tiny: Path) -> None:
    """The batched pass (common prefix once, right-padded rows) gives each turn the log-probs, entropies, value
    state and gradient of a pass of its own, while embedding fewer tokens than the separate passes."""
    from pistar.train.model import load_policy, load_tokenizer

    tok = load_tokenizer(str(tiny))
    model, _, _ = load_policy(TrainConfig(model=str(tiny), lora=False))
    system = {"role": "system", "content": "You act in a grid world. " * 12}
    pairs = []
    for see, reply in [("a red ball", "go forward"), ("a wall 1 step forward", "turn left"), ("a key", "pick up it")]:
        ids, start = tokenize_example(tok, [system, {"role": "user", "content": f"You see {see}."}], reply)
        pairs.append((ids[:start], ids[start:]))
    tokens_alone, tokens_batched = batched_equals_one_pass_each(model, pairs)
    assert tokens_batched < tokens_alone * 0.6  # the ~70-token system prompt ran once, not three times


def test_turns_that_extend_each_other_are_read_off_one_row(tiny: Path) -> None:
    """With the history in the prompt, turn k+1 starts with turn k's prompt and reply: the batched pass runs the
    longest turn of that run once and reads the others' log-probs, entropies, value states and gradients off it,
    equal to a pass of their own; the update shuffles whole stretches of an episode."""
    from pistar.train.model import load_policy, load_tokenizer

    tok = load_tokenizer(str(tiny))
    model, _, _ = load_policy(TrainConfig(model=str(tiny), lora=False))
    chat = [{"role": "system", "content": "You act in a grid world. " * 12}]
    pairs = []
    for see, reply in [("a red ball", "go forward"), ("a wall 1 step forward", "turn left"), ("a key", "pick up")]:
        chat.append({"role": "user", "content": f"You see {see}."})
        ids, start = tokenize_example(tok, chat, reply)
        pairs.append((ids[:start], ids[start:]))
        chat.append({"role": "assistant", "content": reply})
    other = tokenize_example(tok, chat[:1] + [{"role": "user", "content": "You see a box."}], "turn right")
    pairs.append((other[0][: other[1]], other[0][other[1] :]))
    assert nested([p + c for p, c in pairs]) == [[0, 1, 2], [3]]  # the chat's turns extend each other token for token
    tokens_alone, tokens_batched = batched_equals_one_pass_each(model, pairs)
    longest = len(pairs[2][0]) + len(pairs[2][1])
    assert tokens_batched < longest + 60 < tokens_alone / 2  # one pass over the chat, one short row for the box
    turns = [Turn(p, c) for p, c in pairs]
    box = len(pairs[3][0]) + len(pairs[3][1])
    assert [len(chunk) for chunk in by_prompt(turns, longest + box)] == [4]  # two rows fit the token budget
    assert [[turns.index(t) for t in chunk] for chunk in by_prompt(turns, longest)] == [[0, 1, 2], [3]]


def test_activation_checkpointing_recomputes_layers_and_gives_the_same_logprobs_and_gradients(tiny: Path) -> None:
    """`gradient_checkpointing=true` in RL: the decoder layers run again in backward (their activations were not
    kept), and the batched turns get the log-probs and LoRA gradients of the pass that kept everything."""
    from pistar.train.model import checkpoint_activations, load_policy, load_tokenizer

    tok = load_tokenizer(str(tiny))
    model, _, _ = load_policy(TrainConfig(model=str(tiny), lora=True))
    model.train()
    system = {"role": "system", "content": "You act in a grid world. " * 12}
    pairs = []
    for see, reply in [("a red ball", "go forward"), ("a wall 1 step forward", "turn left")]:
        ids, start = tokenize_example(tok, [system, {"role": "user", "content": f"You see {see}."}], reply)
        pairs.append((ids[:start], ids[start:]))
    mlp = model.get_base_model().get_decoder().layers[0].mlp  # runs again when its layer is recomputed
    calls: list[tuple[int, ...]] = []
    forward = mlp.forward

    def counted(x: Any) -> Any:  # not a forward hook: the recompute calls forward without __call__'s hooks
        calls.append(tuple(x.shape[:2]))
        return forward(x)

    mlp.forward = counted

    def run() -> tuple[list[Any], list[Any], list[tuple[int, ...]]]:
        model.zero_grad()
        calls.clear()
        out = batch_logprobs(model, pairs)
        sum(logp.sum() for logp, _, _ in out).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return [logp.detach() for logp, _, _ in out], grads, list(calls)

    logps, grads, forwards = run()
    checkpoint_activations(model)
    logps_ckpt, grads_ckpt, forwards_ckpt = run()
    assert forwards[0][0] == 1 and forwards[1][0] == 2  # the shared prompt prefix once, then the two rows after it
    assert forwards_ckpt[0] == forwards_ckpt[1] and forwards_ckpt[0][0] == 2  # whole rows, recomputed in backward
    assert len(grads) == len(grads_ckpt) > 0
    for a, b in zip(logps + grads, logps_ckpt + grads_ckpt, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-3)


def test_sft_loss_falls_and_the_model_loads_back_into_the_hf_backend(runs: dict, tiny: Path, tmp_path: Path) -> None:
    from pistar.models import load_model
    from pistar.train.sft import train_sft

    build([runs["teacher"]], tmp_path / "ds", Filters(success=True), pairs=False, validation=0.0)
    config = TrainConfig(
        model=str(tiny),
        data=str(tmp_path / "ds"),
        out=str(tmp_path / "sft"),
        lora=False,
        lr=3e-3,
        max_steps=16,
        grad_accum=1,
        logging_steps=4,
    )
    metrics = train_sft(config)
    losses = [e["loss"] for e in metrics["log"]]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5
    model = load_model(f"hf:{tmp_path / 'sft'}")
    c = asyncio.run(model.complete([{"role": "user", "content": "hi"}], max_tokens=4))
    assert c.completion_ids and len(c.completion_ids) <= 4


def _margin(model: Any, tok: Any, pairs: list[dict]) -> float:
    total = 0.0
    with torch.no_grad():
        for p in pairs:
            for sign, key in ((1, "chosen"), (-1, "rejected")):
                ids, start = tokenize_example(tok, p["prompt"], p[key][0]["content"])
                total += sign * float(completion_logprobs(model, ids[:start], ids[start:])[0].sum())
    return total / len(pairs)


def test_dpo_raises_the_chosen_reply_over_the_rejected(runs: dict, tiny: Path, tmp_path: Path) -> None:
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    from pistar.train.dpo import train_dpo
    from pistar.train.model import load_tokenizer

    build([runs["random"]], tmp_path / "ds", Filters(success=True), correct=True, history=1, validation=0.0)
    pairs = list(load_from_disk(str(tmp_path / "ds" / "dpo"))["train"])[:8]
    tok = load_tokenizer(str(tiny))
    before = _margin(AutoModelForCausalLM.from_pretrained(tiny), tok, pairs)
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(pairs)}).save_to_disk(str(tmp_path / "few" / "dpo"))
    config = TrainConfig(
        model=str(tiny),
        data=str(tmp_path / "few"),
        out=str(tmp_path / "dpo"),
        lora=False,
        lr=1e-2,
        max_steps=16,
        grad_accum=1,
        beta=0.1,
        logging_steps=4,
    )
    train_dpo(config)
    after = _margin(AutoModelForCausalLM.from_pretrained(tmp_path / "dpo"), tok, pairs)
    assert after > before + 1.0


def test_dpo_after_sft_is_anchored_to_the_sft_adapter_not_the_base(runs: dict, tiny: Path, tmp_path: Path) -> None:
    """DPO continuing an adapter compares with a frozen copy of it: at the first step policy and reference agree,
    so the loss is exactly log 2 (against the base it would not be: the adapter is far from zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pistar.train.dpo import train_dpo
    from pistar.train.model import load_tokenizer

    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny), lora)
    adapter.save_pretrained(tmp_path / "sft")
    load_tokenizer(str(tiny)).save_pretrained(tmp_path / "sft")
    build([runs["random"]], tmp_path / "ds", Filters(success=True), correct=True, history=1, validation=0.0)
    config = TrainConfig(
        model=str(tmp_path / "sft"), data=str(tmp_path / "ds"), out=str(tmp_path / "dpo"), max_examples=3,
        lr=1e-3, max_steps=2, grad_accum=1, logging_steps=1,
    )  # fmt: skip
    metrics = train_dpo(config)
    assert metrics["pairs"] == 3  # max_examples is honoured
    assert metrics["log"][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert (tmp_path / "dpo" / "adapter_config.json").exists() and not (tmp_path / "dpo" / "ref").exists()
    # With the NLL term on the chosen reply the first step's loss is log 2 plus that reply's NLL per token.
    nll = train_dpo(config.model_copy(update={"out": str(tmp_path / "rpo"), "dpo_nll": 1.0}))
    assert nll["log"][0]["loss"] > math.log(2) + 1.0


def test_grpo_advantages_match_hand_computed_values() -> None:
    assert grpo_advantages([1, 0, 0, 1]) == [1.0, -1.0, -1.0, 1.0]  # mean .5, population std .5
    a = grpo_advantages([3.0, 1.0, 2.0])  # mean 2, std sqrt(2/3)
    assert a == pytest.approx([1 / math.sqrt(2 / 3), -1 / math.sqrt(2 / 3), 0.0])
    assert grpo_advantages([0.5, 0.5, 0.5]) == [0.0, 0.0, 0.0]  # an all-equal group teaches nothing
    assert grpo_advantages([1.0, 0.0], scale=False) == [0.5, -0.5]


def test_gae_matches_hand_computed_values() -> None:
    # rewards 0, 0, 1; values .5, .6, .7; gamma .9, lambda .8; the episode ends after the last turn.
    # deltas: 0 + .9*.6 - .5 = .04 ; 0 + .9*.7 - .6 = .03 ; 1 + 0 - .7 = .3
    # A2 = .3 ; A1 = .03 + .72*.3 = .246 ; A0 = .04 + .72*.246 = .21712
    adv, ret = gae([0, 0, 1], [0.5, 0.6, 0.7], 0.9, 0.8)
    assert adv == pytest.approx([0.21712, 0.246, 0.3])
    assert ret == pytest.approx([0.71712, 0.846, 1.0])


def test_ppo_clipping_behaves_at_the_bounds() -> None:
    def check(ratio: float, advantage: float) -> tuple[float, float, float]:
        logp = torch.tensor([math.log(ratio)], requires_grad=True)
        loss, clipped = clipped_surrogate(logp, torch.tensor([0.0]), torch.tensor(advantage), 0.2)
        loss.sum().backward()
        return float(loss.detach()), float(logp.grad), float(clipped)

    # A > 0: above 1+eps the objective is capped (no gradient); below 1-eps it is not clipped.
    assert check(1.5, 1.0) == pytest.approx((-1.2, 0.0, 1.0))
    assert check(0.5, 1.0) == pytest.approx((-0.5, -0.5, 0.0))
    # A < 0: below 1-eps capped; above 1+eps the full penalty applies.
    assert check(0.5, -1.0) == pytest.approx((0.8, 0.0, 1.0))
    assert check(1.5, -1.0) == pytest.approx((1.5, 1.5, 0.0))
    # Inside the bounds, the plain ratio objective.
    assert check(1.1, 2.0) == pytest.approx((-2.2, -2.2, 0.0))
    # The value loss takes the worse of the new and the clipped error: a value that moved past the clip range
    # towards the return is still penalised as if clipped.
    v = torch.tensor(1.0, requires_grad=True)
    loss = value_loss(v, torch.tensor(0.0), torch.tensor(1.0), 0.2)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.5 * 0.8**2) and float(v.grad) == 0.0


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_online_rl_through_the_agent_loop_resumes_and_reports_equal_groups(
    algo: str, tiny: Path, tmp_path: Path
) -> None:
    """Two iterations on real BabyAI episodes, killed after the first and resumed: the log continues, the
    reference starts equal to the policy (KL 0 at the first update with a fresh LoRA), turns are exact."""
    (tmp_path / "suite.yaml").write_text(json.dumps(suite("babyai/GoToLocal", 4, 2).to_dict()))
    config = TrainConfig(
        model=str(tiny),
        out=str(tmp_path / algo),
        suite=str(tmp_path / "suite.yaml"),
        iterations=1,
        tasks_per_iter=1,
        group_size=3,
        max_tokens=24,
        lr=1e-2,
        history=0,
        kl_coef=0.1,
        minibatch=8,
        skip_equal_groups=False,
    )
    trainer = RLTrainer(config, algo)
    first = trainer.step()
    before = {k: v.clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter: policy == reference
    # Every model call of the 3 episodes is one turn with its exact tokens.
    assert first["turns"] == round(first["steps"] * 3) and first["tokens"] > 0
    assert first["groups"] == 1 and first["equal_groups"] in (0, 1)
    del trainer
    resumed = RLTrainer(config.model_copy(update={"iterations": 2}), algo)
    assert resumed.iteration == 1
    after = {k: v for k, v in resumed.model.named_parameters() if v.requires_grad}
    assert all(torch.equal(before[k], after[k]) for k in before)  # the checkpoint is what the first run left
    del resumed
    second = train_rl(config.model_copy(update={"iterations": 2}), algo)  # the CLI's path: resumes at iteration 1
    log = [json.loads(line) for line in (tmp_path / algo / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [0, 1] and [r["iteration"] for r in second] == [1]
    assert (tmp_path / algo / "adapter_config.json").exists() and (tmp_path / algo / "curve.png").stat().st_size > 0


@pytest.mark.slow
def test_embedded_rollouts_sample_the_policy_being_trained(tmp_path: Path) -> None:
    """rollout_model=embedded: the adapter, far from zero, is exported to GGUF and loaded into llama.cpp, whose
    log-probs of what it sampled agree with the trained model's own, and not with the base model's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pistar.models.hf import resolve_target
    from pistar.train.model import load_tokenizer

    require(SMALL)
    lora = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_target(SMALL)), lora)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)  # far from the base, still a language model
    adapter.save_pretrained(tmp_path / "start")
    load_tokenizer(SMALL).save_pretrained(tmp_path / "start")
    (tmp_path / "start" / "pistar.json").write_text(json.dumps({"base": SMALL}))
    (tmp_path / "suite.yaml").write_text(json.dumps(suite("babyai/GoToLocal", 2, 3).to_dict()))
    config = TrainConfig(
        model=str(tmp_path / "start"), out=str(tmp_path / "grpo"), suite=str(tmp_path / "suite.yaml"),
        tasks_per_iter=1, group_size=2, max_tokens=24, history=0, rollout_model="embedded",
    )  # fmt: skip
    trainer = RLTrainer(config, "grpo")
    groups = asyncio.run(trainer.rollouts(0))
    assert [len(g) for g in groups] == [2]
    calls = [call for g in groups for traj in g for _, call in trainer._trainable(traj)]
    turns = [turn for g in groups for traj in g for turn, _ in trainer._turns(traj)]
    assert len(turns) == len(calls) >= 4 and all(c.completion_logprobs for c in calls)
    served = torch.tensor([lp for c in calls for lp in c.completion_logprobs])
    trained = torch.cat([logp for logp, _, _ in trainer._logprobs(turns)])
    with trainer.model.disable_adapter():
        base = torch.cat([logp for logp, _, _ in trainer._logprobs(turns)])
    near, far = (served - trained).abs().mean(), (served - base).abs().mean()
    assert near < 0.15 and far > 4 * near, (near, far)
    assert (tmp_path / "grpo" / "rollout_adapter" / "adapter.gguf").exists()


def test_grpo_spends_no_update_on_a_group_whose_returns_are_all_equal(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(json.dumps(suite("babyai/GoToLocal", 1, 2).to_dict()))
    config = TrainConfig(
        model=str(tiny), out=str(tmp_path / "g"), suite=str(tmp_path / "suite.yaml"), iterations=1,
        tasks_per_iter=1, group_size=2, max_tokens=24, lr=1e-2, history=0, kl_coef=0.1,
    )  # fmt: skip
    trainer = RLTrainer(config, "grpo")
    before = {k: v.clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    seen: list[str] = []
    trainer.on_progress = seen.append  # what the CLI's progress bar shows within an iteration
    record = trainer.step()
    assert seen == ["iteration 1/1: episode 1/2", "iteration 1/1: episode 2/2", "iteration 1/1: update"]
    # The random tiny model does not reach the ball in 2 steps: both episodes return 0.
    assert record["equal_groups"] == record["groups"] == 1 and record["success"] == 0
    assert record["turns"] == 0 and record["skipped_turns"] == round(record["steps"] * 2) > 0
    assert record["kl"] is None and record["loss"] is None  # nothing was measured, so nothing is claimed
    assert all(torch.equal(before[k], v) for k, v in trainer.model.named_parameters() if v.requires_grad)
    # Kept (for its KL term), the same rollouts (seeded by iteration) give the update every one of those turns.
    keep = RLTrainer(config.model_copy(update={"out": str(tmp_path / "k"), "skip_equal_groups": False}), "grpo")
    again = keep.step()
    assert again["turns"] == record["skipped_turns"] and again["skipped_turns"] == 0


class FakeVLLM:
    """vLLM's OpenAI server as far as RL rollouts use it (runtime LoRA loading, token ids in logprobs), checking
    each request against that contract. A GPU server cannot run here; this pins what we send and parse."""

    def __init__(self, tokenizer: Any):
        import http.server
        import threading

        self.loaded: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.errors: list[str] = []
        reply = '{"thought": "", "action": "turn left"}'
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/load_lora_adapter":
                    if not (Path(body["lora_path"]) / "adapter_config.json").exists():
                        fake.errors.append(f"no adapter at {body['lora_path']}")
                    fake.loaded[body["lora_name"]] = body["lora_path"]
                    return self._send({"status": "ok"})
                if self.path == "/v1/unload_lora_adapter":
                    fake.loaded.pop(body["lora_name"], None)
                    return self._send({"status": "ok"})
                fake.requests.append(body)
                if body["model"] not in fake.loaded or not body.get("return_tokens_as_token_ids"):
                    fake.errors.append(f"bad request: model {body['model']}, {sorted(body)}")
                content = [{"token": f"token_id:{i}", "logprob": -0.5, "bytes": None, "top_logprobs": []} for i in ids]
                self._send(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "logprobs": {"content": content},
                                "message": {"role": "assistant", "content": reply},
                            }
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": len(ids), "total_tokens": 100 + len(ids)},
                    }
                )

            def _send(self, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.ids = ids
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_rollouts_on_a_vllm_server_load_each_new_adapter_and_train_on_its_token_ids(tiny: Path, tmp_path: Path) -> None:
    from pistar.train.model import load_tokenizer

    server = FakeVLLM(load_tokenizer(str(tiny)))
    try:
        (tmp_path / "suite.yaml").write_text(json.dumps(suite("babyai/GoToLocal", 2, 2).to_dict()))
        config = TrainConfig(
            model=str(tiny),
            out=str(tmp_path / "grpo"),
            suite=str(tmp_path / "suite.yaml"),
            iterations=2,
            tasks_per_iter=1,
            group_size=2,
            history=0,
            rollout_model=f"openai:base@{server.url}",
            skip_equal_groups=False,  # the stand-in always says "turn left": every group is equal
        )
        trainer = RLTrainer(config, "grpo")
        records = [trainer.step(), trainer.step()]
    finally:
        server.server.shutdown()
    assert server.errors == []
    # One adapter per iteration, the previous one unloaded; every request named the adapter then loaded.
    assert list(server.loaded) == ["pistar-grpo-1"]
    assert [r["model"] for r in server.requests] == ["pistar-grpo-0"] * 4 + ["pistar-grpo-1"] * 4
    # The update trained on exactly the ids the server generated: 2 steps x 2 episodes per iteration.
    assert all(r["turns"] == 4 and r["tokens"] == 4 * len(server.ids) for r in records)


def test_a_model_judge_filters_episodes_by_its_verdict(runs: dict, tmp_path: Path) -> None:
    from conftest import ScriptedModel

    good = ScriptedModel(['{"verdict": "good", "reason": "fine"}'])
    bad = ScriptedModel(['{"verdict": "bad", "reason": "loops"}', '{"verdict": "good", "reason": "fine"}'])
    kept = build([runs["teacher"]], tmp_path / "a", Filters(judge=good), pairs=False)
    some = build([runs["teacher"]], tmp_path / "b", Filters(judge=bad), pairs=False)
    assert kept["kept"] == 6 and len(good.seen) == 6
    assert some["kept"] == 5 and some["dropped"] == {"judged bad": 1}
    # The judge saw the task and the actions taken, not just a bare id.
    prompt = bad.seen[0][0]["content"]
    assert "go to" in prompt and "1. " in prompt and "success=True" in prompt
