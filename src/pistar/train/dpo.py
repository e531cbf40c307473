"""Direct preference optimisation on pairs from trajectories (TRL's DPOTrainer), full or LoRA.

Pairs come from `pistar data build`: a success and a failure of the same task where they first chose differently,
or an expert's correction against the agent's action. With LoRA the reference costs no second model: a fresh
adapter is compared with the base (the adapter switched off); an adapter from an earlier stage (DPO after SFT) is
compared with a frozen copy of itself, which TRL adds as the adapter "ref" and which is not saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pistar.train.model import TrainConfig, load_policy, save_policy
from pistar.train.sft import load_dataset_dir, subset, trl_args


def train_dpo(config: TrainConfig) -> dict[str, Any]:
    from trl import DPOConfig, DPOTrainer

    out = Path(config.out)
    data = load_dataset_dir(config.data, "dpo")
    columns = ["prompt", "chosen", "rejected"]
    train = data["train"].select_columns(columns)
    if config.max_examples is not None and config.max_examples < len(train):
        train = train.select(subset(train, config.max_examples, config.seed, config.balance))
    model, tokenizer, base = load_policy(config)
    # DPO alone may lower the chosen reply along with the rejected one (on lopsided pairs it lowered an action
    # everywhere); TRL's "sft" loss beside "sigmoid" keeps the chosen reply likely.
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, config.dpo_nll]} if config.dpo_nll > 0 else {}
    args = trl_args(config, DPOConfig, out, beta=config.beta, max_length=config.max_length, **losses)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    metrics: dict[str, Any] = {"pairs": len(train)}
    if "validation" in data and len(data["validation"]):
        metrics |= {k: v for k, v in trainer.evaluate(data["validation"].select_columns(columns)).items()}
    metrics["log"] = [e for e in trainer.state.log_history if "loss" in e]
    if "ref" in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter("ref")  # the frozen reference, not part of the result
    save_policy(trainer.model, tokenizer, base, out, {"stage": "dpo", "metrics": metrics})
    return metrics
