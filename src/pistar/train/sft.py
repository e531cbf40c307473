"""Supervised fine-tuning on agent trajectories (TRL's SFTTrainer), full or LoRA.

Each example is one model call: the prompt the agent saw (system prompt, environment and tool text, earlier turns)
and the reply. We tokenize with the chat template ourselves and set every prompt token's label to -100, so the loss
and its gradient come only from the model's own tokens, never from what the environment or a tool wrote. The
calls of an agent that keeps its episode in the prompt are trained as one sequence per episode (`chains`).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

from pistar.train.model import TrainConfig, load_policy, nested, save_policy, tokenize_example


def tokenized(dataset: Any, tokenizer: Any, max_length: int) -> tuple[Any, int]:
    """input_ids + labels (prompt masked), one sequence per chain of calls that extend each other (see `chains`);
    a call longer than max_length is dropped, not cut (a cut prompt loses the task, a cut reply teaches an
    unfinished JSON) — the count is returned so it is reported."""
    from datasets import Dataset

    rows = dataset.to_list()
    encoded = [tokenize_example(tokenizer, r["messages"], r["completion"]) for r in rows]
    fits = [i for i, (ids, _) in enumerate(encoded) if len(ids) <= max_length]
    sequences = []
    for chain in chains([rows[i] for i in fits], [encoded[i] for i in fits]):
        ids = chain[-1][0]
        labels = [-100] * len(ids)
        for turn, start in chain:
            labels[start : len(turn)] = turn[start:]
        sequences.append({"input_ids": ids, "labels": labels})
    return Dataset.from_list(sequences), len(rows) - len(fits)


def chains(rows: list[dict[str, Any]], encoded: list[tuple[list[int], int]]) -> list[list[tuple[list[int], int]]]:
    """Calls of one episode and role whose token ids each extend the one before (an agent keeping its history in
    the prompt) become one sequence that trains every reply once. The loss is that of one example per call, since
    each reply sees exactly the context of its own call, but the shared history is computed once: an episode of
    n turns costs its length, not n prompts. A call that extends nothing starts a sequence of its own (`nested`)."""
    groups: dict[Any, list[tuple[list[int], int]]] = {}
    for i, (row, enc) in enumerate(zip(rows, encoded, strict=True)):
        key = (row["episode"], row.get("role")) if row.get("episode") is not None else i
        groups.setdefault(key, []).append(enc)
    return [[calls[i] for i in run] for calls in groups.values() for run in nested([ids for ids, _ in calls])]


def trl_args(config: TrainConfig, cls: Any, out: Path, **extra: Any) -> Any:
    """TRL/transformers arguments shared by SFT and DPO: CPU unless a device is asked, no hub, no checkpoints."""
    # transformers renamed gradient_checkpointing (kept as a deprecated alias) to activation_checkpointing.
    new = "activation_checkpointing" in cls.__dataclass_fields__
    extra["activation_checkpointing" if new else "gradient_checkpointing"] = config.gradient_checkpointing
    return cls(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        logging_steps=config.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=config.device == "cpu",
        bf16=config.dtype == "bfloat16",
        seed=config.seed,
        disable_tqdm=False,
        **extra,
    )


def subset(train: Any, n: int, seed: int, balance: bool) -> list[int]:
    """n random rows; balanced: round-robin over the actions the replies take (the move, the tool, "answer"; the
    reply itself on data built before the action column; the chosen reply of a preference pair), as evenly as the
    data allows, so an action taken once per episode (pick up, submit) is not drowned by the moves."""
    order = random.Random(seed).sample(range(len(train)), len(train))
    if not balance:
        return order[:n]
    columns = train.column_names
    if "action" in columns or "completion" in columns:
        keys = list(train["action"] if "action" in columns else train["completion"])
    else:
        keys = [c[-1]["content"] for c in train["chosen"]]
    groups: dict[str, list[int]] = {}
    for i in order:
        groups.setdefault(keys[i], []).append(i)
    picked: list[int] = []
    for row in itertools.zip_longest(*groups.values()):
        picked += [i for i in row if i is not None]
    return picked[:n]


def train_sft(config: TrainConfig) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    out = Path(config.out)
    data = load_dataset_dir(config.data, "sft")
    model, tokenizer, base = load_policy(config)
    train = data["train"]
    if config.max_examples is not None and config.max_examples < len(train):
        train = train.select(subset(train, config.max_examples, config.seed, config.balance))
    examples = len(train)
    train, dropped = tokenized(train, tokenizer, config.max_length)
    if len(train) == 0:
        raise ValueError(f"{config.data}: no training example fits max_length={config.max_length}")
    evalset = tokenized(data["validation"], tokenizer, config.max_length)[0] if "validation" in data else None
    args = trl_args(config, SFTConfig, out, max_length=None, eval_strategy="no")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    metrics: dict[str, Any] = {"examples": examples - dropped, "sequences": len(train), "dropped_too_long": dropped}
    if evalset is not None and len(evalset):
        metrics["eval_loss"] = trainer.evaluate(evalset)["eval_loss"]
    metrics["log"] = [e for e in trainer.state.log_history if "loss" in e]
    save_policy(trainer.model, tokenizer, base, out, {"stage": "sft", "metrics": metrics})
    return metrics


def load_dataset_dir(path: str, kind: str) -> Any:
    """`OUT/sft` or `OUT/dpo` of a `pistar data build` (or the dataset directory itself)."""
    from datasets import load_from_disk

    p = Path(path)
    target = p / kind if (p / kind).exists() else p
    if not (target / "dataset_dict.json").exists():
        raise FileNotFoundError(f"{path}: no {kind} dataset here: build one with `pistar data build RUN --out {path}`")
    return load_from_disk(str(target))
