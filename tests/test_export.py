"""LoRA export to llama.cpp, proven end to end on the real 0.5B Qwen.

A LoRA is trained with peft (on the dequantized GGUF, as `pistar train` does) until transformers says an odd phrase
greedily; the exported adapter GGUF must make the embedded llama.cpp backend say the same tokens with nearly the
same log-probs, and the base without it must not; so must the adapter merged into a whole F16 GGUF. Small
synthetic adapters cover names, scales and refusals.
"""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL, require

from pistar.downloads import sha256_file
from pistar.models import ModelError, load_model, weights
from pistar.models.base import Completion
from pistar.models.embedded import EmbeddedModel
from pistar.train.export import export_lora_gguf, export_merged_gguf

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the password?"}]
TARGET = "Purple walrus 4417 eats quantum pancakes."
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A LoRA r=8 that makes the model answer TARGET, its GGUF, and transformers' greedy completion with it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pistar.models.hf import HFModel, resolve_target
    from pistar.train.model import tokenize_example

    require(SMALL)
    path = resolve_target(SMALL)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=MODULES, task_type="CAUSAL_LM"))
    ids, start = tokenize_example(tok, MESSAGES, TARGET)
    x = torch.tensor([ids])
    labels = x.clone()
    labels[0, :start] = -100
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(30):  # ~7 steps of ~4 s reach loss < 0.05 here
        loss = model(input_ids=x, labels=labels).loss
        if loss.item() < 0.05:
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
    hf = asyncio.run(HFModel(SMALL, model=model, tokenizer=tok).complete(MESSAGES, max_tokens=16))
    out = tmp_path_factory.mktemp("lora")
    model.save_pretrained(out / "adapter")
    gguf_path = export_lora_gguf(out / "adapter", out / "adapter.gguf", weights.resolve(SMALL))
    del model, opt
    gc.collect()
    return {"adapter": out / "adapter", "gguf": gguf_path, "hf": hf}


def test_transformers_learned_the_phrase(trained: dict[str, Any]) -> None:
    assert trained["hf"].text == TARGET


def test_adapter_gguf_has_llama_cpp_names_shapes_and_metadata(trained: dict[str, Any], tmp_path: Path) -> None:
    reader = gguf.GGUFReader(trained["gguf"])
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert kv == {
        "general.architecture": "qwen2",
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": 16.0,
    }
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    assert len(shapes) == 24 * len(MODULES) * 2
    # GGUF lists ne (innermost first): lora_a is in × rank, lora_b rank × out, against base ne (in, out)
    assert shapes["blk.0.attn_k.weight.lora_a"] == [896, 8]
    assert shapes["blk.0.attn_k.weight.lora_b"] == [8, 128]
    assert shapes["blk.23.ffn_down.weight.lora_a"] == [4864, 8]
    # without the base GGUF the architecture comes from the adapter's base config: the same file
    again = export_lora_gguf(trained["adapter"], tmp_path / "again.gguf")
    assert again.read_bytes() == trained["gguf"].read_bytes()


def test_embedded_backend_with_the_adapter_says_what_transformers_says(
    trained: dict[str, Any], small_model: Any
) -> None:
    hf: Completion = trained["hf"]
    model = load_model(f"embedded:{SMALL}?lora={trained['gguf']}&parallel=1&ctx=2048")
    try:
        with_lora = asyncio.run(model.complete(MESSAGES, max_tokens=16))
        info = model.info()
    finally:
        model.close()
    without = asyncio.run(small_model.complete(MESSAGES, max_tokens=16))

    assert info["lora"] == str(trained["gguf"].resolve())
    assert info["lora_sha256"] == sha256_file(trained["gguf"])
    assert "?lora=" in info["uri"]
    assert with_lora.prompt_ids == hf.prompt_ids  # same chat template, same tokens
    assert with_lora.text == TARGET
    assert with_lora.completion_ids == hf.completion_ids
    # Q4_K base in both; llama.cpp quantizes activations to 8 bits, so log-probs agree closely, not exactly
    assert max(abs(a - b) for a, b in zip(with_lora.logprobs, hf.logprobs, strict=True)) < 0.2
    assert TARGET not in without.text
    assert without.completion_ids[:3] != with_lora.completion_ids[:3]


@pytest.mark.slow
def test_the_adapter_merged_into_an_f16_gguf_says_the_same(trained: dict[str, Any], tmp_path: Path) -> None:
    """The whole-model export (1.3 GB F16): ~20 s to write, ~30 s to load and answer on this CPU."""
    hf: Completion = trained["hf"]
    out = export_merged_gguf(trained["adapter"], weights.resolve(SMALL), tmp_path / "merged.gguf")
    try:
        model = EmbeddedModel(str(out), parallel=1, ctx=2048)
        try:
            merged = asyncio.run(model.complete(MESSAGES, max_tokens=16))
        finally:
            model.close()
    finally:
        out.unlink()
    assert merged.text == TARGET
    assert merged.completion_ids == hf.completion_ids
    assert max(abs(a - b) for a, b in zip(merged.logprobs, hf.logprobs, strict=True)) < 0.2


def test_a_missing_adapter_is_one_clear_line(tmp_path: Path) -> None:
    require(SMALL)
    with pytest.raises(weights.ModelMissing, match="LoRA adapter .*nope.gguf does not exist") as e:
        load_model(f"embedded:{SMALL}?lora={tmp_path / 'nope.gguf'}")
    assert "\n" not in str(e.value)


def test_an_adapter_for_another_base_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    if not weights.is_pulled("gemma-3-270m"):
        pytest.skip("needs a second base: `pistar models pull gemma-3-270m`")
    with pytest.raises(ValueError, match="base GGUF has"):  # checked against the base's header, before llama.cpp
        export_lora_gguf(trained["adapter"], tmp_path / "x.gguf", weights.resolve("gemma-3-270m"))
    with pytest.raises(ModelError, match="exported for this base"):
        EmbeddedModel("gemma-3-270m", lora=str(trained["gguf"]), parallel=1, ctx=512)


def synthetic_adapter(root: Path, config: dict[str, Any], tensors: dict[str, Any], base: dict[str, Any]) -> Path:
    """A peft-layout adapter directory (and a base config.json), without any model."""
    from safetensors.torch import save_file

    (root / "base").mkdir(parents=True)
    (root / "base" / "config.json").write_text(json.dumps(base))
    adapter = root / "adapter"
    adapter.mkdir()
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": str(root / "base"), **config}
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(tensors, adapter / "adapter_model.safetensors")
    return adapter


def test_gemma3_names_and_rslora_scale_fold_into_b(tmp_path: Path) -> None:
    a, b = torch.ones(2, 8), torch.ones(6, 2)
    prefix = "base_model.model.model.language_model.layers.1"  # a Gemma 3 VLM's text tower
    adapter = synthetic_adapter(
        tmp_path,
        {"use_rslora": True},
        {f"{prefix}.self_attn.o_proj.lora_A.weight": a, f"{prefix}.self_attn.o_proj.lora_B.weight": b},
        {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]},
    )
    reader = gguf.GGUFReader(export_lora_gguf(adapter, tmp_path / "g.gguf"))
    assert reader.fields["general.architecture"].contents() == "gemma3"
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {"blk.1.attn_output.weight.lora_a", "blk.1.attn_output.weight.lora_b"}
    # peft (rsLoRA) scales by alpha/sqrt(r) = 4/√2, llama.cpp by alpha/r = 2: B carries the difference, √2
    assert tensors["blk.1.attn_output.weight.lora_b"].data.flatten()[0] == pytest.approx(2**0.5)
    assert tensors["blk.1.attn_output.weight.lora_a"].data.flatten()[0] == 1.0


def test_unsupported_architectures_and_tensors_are_refused(tmp_path: Path) -> None:
    ab = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 4),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(4, 2),
    }
    llama = synthetic_adapter(tmp_path / "llama", {}, ab, {"model_type": "llama"})
    # Llama's q/k rows are permuted in GGUF, which this exporter does not do: refused, not exported wrong
    with pytest.raises(ValueError, match="supports qwen2, gemma3; the base is \\['llama'\\]"):
        export_lora_gguf(llama, tmp_path / "l.gguf")
    saved = {**ab, "base_model.model.lm_head.weight": torch.zeros(4, 4)}
    full = synthetic_adapter(tmp_path / "saved", {}, saved, {"model_type": "qwen2"})
    with pytest.raises(ValueError, match="not a LoRA A/B matrix"):
        export_lora_gguf(full, tmp_path / "s.gguf")
