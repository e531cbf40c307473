"""Direct preference optimisation on pairs from trajectories (TRL's DPOTrainer), full or LoRA.

Pairs come from `pistar data build`: a success and a failure of the same task where they first chose differently,
or an expert's correction against the agent's action. With LoRA the reference model is the same network with the
adapter switched off, so DPO costs one model in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pistar.train.model import TrainConfig, load_policy, save_policy
from pistar.train.sft import load_dataset_dir, trl_args


def train_dpo(config: TrainConfig) -> dict[str, Any]:
    from trl import DPOConfig, DPOTrainer

    out = Path(config.out)
    data = load_dataset_dir(config.data, "dpo")
    columns = ["prompt", "chosen", "rejected"]
    train = data["train"].select_columns(columns)
    model, tokenizer, base = load_policy(config)
    args = trl_args(config, DPOConfig, out, beta=config.beta, max_length=config.max_length)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    metrics: dict[str, Any] = {"pairs": len(train)}
    if "validation" in data and len(data["validation"]):
        metrics |= {k: v for k, v in trainer.evaluate(data["validation"].select_columns(columns)).items()}
    metrics["log"] = [e for e in trainer.state.log_history if "loss" in e]
    save_policy(trainer.model, tokenizer, base, out, {"stage": "dpo", "metrics": metrics})
    return metrics
