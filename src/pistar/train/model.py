"""The model being trained: one config for every trainer, loading (full or LoRA), tokenizing, saving.

A training target is whatever the hf backend accepts (a catalog name, a .gguf, a model directory) or an adapter a
previous stage wrote (SFT → GRPO continues the same LoRA). What a trainer saves is again something `run` and
`eval` accept: `--model hf:OUT` (a LoRA adapter directory or a full model), and, for a LoRA on a catalog model,
`OUT/adapter.gguf` for the embedded backend at llama.cpp speed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pistar import configs

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TrainConfig(BaseModel):
    """Every knob of `pistar train`; YAML file and/or `key=value` overrides (see `pistar.configs`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "qwen2.5-coder-0.5b"  # hf target, or a LoRA directory from an earlier stage
    data: str = ""  # a `pistar data` output directory (sft, dpo)
    out: str = "runs/train"
    lora: bool = True
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] | str = "all-linear"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"  # cpu, cuda, auto
    seed: int = 0
    lr: float = Field(1e-4, gt=0)
    epochs: float = 1.0
    max_steps: int = -1  # optimizer steps; -1: from epochs
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(4, ge=1)
    max_length: int = Field(2048, ge=16)
    gradient_checkpointing: bool = False  # memory for recompute: 7% slower SFT, ~0.6× the RL update peak on CPU
    max_examples: int | None = None  # a random subset of the training split (a quick run on a slow machine)
    balance: bool = False  # draw that subset evenly over the actions, so a rare one (pick up, submit) is not drowned
    logging_steps: int = 5
    beta: float = 0.1  # DPO temperature
    dpo_nll: float = 0.0  # DPO: weight of an NLL term on the chosen reply (RPO), so it cannot lose likelihood too
    # online RL (grpo, ppo)
    suite: str = ""  # a suite name or YAML: the training tasks and their seeds
    iterations: int = Field(10, ge=1)
    tasks_per_iter: int = Field(2, ge=1)  # seeds per iteration
    group_size: int = Field(4, ge=1)  # episodes per seed (GRPO's group)
    temperature: float = 1.0
    history: int = 2  # the agent's prompt window during rollouts
    max_tokens: int = 48  # per reply during rollouts
    constrained: bool = True  # rollouts decode under the action space's JSON schema
    kl_coef: float = 0.04
    clip: float = 0.2
    ppo_epochs: int = Field(1, ge=1)
    minibatch: int = Field(8, ge=1)  # turns per optimizer step (at most)
    micro_tokens: int = Field(4096, ge=1)  # tokens per forward pass (turns that extend each other: one row)
    scale_rewards: bool = True  # GRPO: divide by the group's std (False: Dr. GRPO)
    skip_equal_groups: bool = True  # GRPO: a group with equal returns has zero advantage; don't spend an update on it
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.5
    value_clip: float = 0.2
    invalid_penalty: float = 0.0  # added to the episode return per invalid reply
    rollout_model: str = "policy"  # policy (in-process), embedded (llama.cpp + the LoRA as GGUF), openai:... (vLLM)


def load_train_config(spec: str | None, **overrides: Any) -> TrainConfig:
    config = configs.load_config(spec, TrainConfig, "train config") if spec else TrainConfig()
    return config.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def adapter_base(path: str | Path) -> str:
    """The target an adapter was trained on, as pistar wrote it (a catalog name, a .gguf or a directory)."""
    meta = Path(path) / "pistar.json"
    if meta.exists():
        return json.loads(meta.read_text())["base"]
    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


def load_tokenizer(target: str) -> Any:
    from transformers import AutoTokenizer

    from pistar.models.hf import resolve_target

    path = resolve_target(adapter_base(target)) if is_adapter(target) else resolve_target(target)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(config: TrainConfig, trainable: bool = True) -> tuple[Any, Any, str]:
    """(model, tokenizer, base target). With `lora`, the model is a peft model whose adapter is trained: a fresh
    one, or the adapter given as `model` (then the trained adapter continues it and stays on the same base)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pistar.models.hf import resolve_target

    base = adapter_base(config.model) if is_adapter(config.model) else config.model
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_target(base), dtype=getattr(torch, config.dtype))
    tokenizer = load_tokenizer(config.model)
    if is_adapter(config.model):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, config.model, is_trainable=trainable)
    elif config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    if config.device != "cpu":
        model = model.to("cuda" if config.device == "auto" and torch.cuda.is_available() else config.device)
    return model, tokenizer, base


def checkpoint_activations(model: Any) -> None:
    """Keep only each layer's input and recompute the rest in the backward pass: on CPU an RL row holding a whole
    episode (thousands of tokens) otherwise keeps every layer's activations until backward."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = getattr(causal, "activation_checkpointing_enable", None) or causal.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def save_policy(model: Any, tokenizer: Any, base: str, out: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write what `--model hf:OUT` loads; a LoRA on a catalog model also gets `adapter.gguf` for the embedded
    backend when the exporter is available."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {"base": base, **(extra or {})}
    if is_adapter(out):
        meta["gguf"] = _export_gguf(out, base)
    (out / "pistar.json").write_text(json.dumps(meta, indent=2))
    return out


def embeddable(base: str) -> bool:
    """Whether a LoRA on `base` runs in the embedded backend: a catalog model whose GGUF is on disk."""
    from pistar.models import weights

    return base in weights.CATALOG and weights.is_pulled(base)


def _export_gguf(adapter: Path, base: str) -> str | None:
    from pistar.models import weights

    if not embeddable(base):
        return None
    try:
        from pistar.train.export import export_lora_gguf
    except ImportError:
        return None
    return str(export_lora_gguf(adapter, adapter / "adapter.gguf", weights.resolve(base)))


def nested(seqs: list[list[int]]) -> list[list[int]]:
    """Indices of `seqs` in runs where each sequence starts with the one before: the turns of an agent that keeps
    its history in the prompt, whose call k+1 begins with call k's prompt and reply token for token. Sorted, a
    sequence is followed by those that extend it, so one pass over a run's last sequence serves the whole run."""
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    runs: list[list[int]] = []
    for i in order:
        if runs and seqs[i][: len(seqs[runs[-1][-1]])] == seqs[runs[-1][-1]]:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def tokenize_example(tokenizer: Any, messages: list[dict[str, Any]], completion: str) -> tuple[list[int], int]:
    """Token ids of prompt + reply as the chat template renders them, and where the reply starts.

    The reply's tokens include the template's end-of-turn marker, so the model learns to stop.
    """
    prompt = _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": completion}], tokenize=True))
    if full[: len(prompt)] != prompt:  # a template that rewrites earlier turns: fall back to appending
        full = prompt + tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return full, len(prompt)


def _ids(encoded: Any) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def tiny_qwen2(out: Path, base: str = "qwen2.5-coder-0.5b") -> Path:
    """A random 2-layer Qwen2 (hidden 16) with `base`'s real tokenizer and chat template: every code path of a real
    model at almost no compute, for the tests and the benches. Generation stops at the tokenizer's end of turn."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = load_tokenizer(base)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
