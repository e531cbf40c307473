"""Trained models back to llama.cpp: a LoRA adapter GGUF that the embedded backend loads beside its base GGUF.

llama.cpp applies an adapter as W·x + (alpha / rank)·B·(A·x) on the quantized base weights it already has, so a
LoRA trained on the dequantized GGUF runs at llama.cpp speed with nothing re-quantized. The layout is the one of
llama.cpp's convert_lora_to_gguf.py: `<base tensor>.lora_a` (rank × in) and `.lora_b` (out × rank), exactly as peft
stores them, named by gguf's TensorNameMap. Qwen2 and Gemma 3 keep HF's projection layout in GGUF (Llama permutes
q/k, these don't), so no tensor needs reordering; other architectures are refused rather than exported wrong.
`export_merged_gguf` instead writes a whole F16 Qwen2 model, for when no adapter is wanted at run time.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

# HF model_type / architecture class -> gguf architecture name (general.architecture)
ARCHITECTURES = {
    "qwen2": "qwen2",
    "Qwen2ForCausalLM": "qwen2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
}
SUPPORTED = ("qwen2", "gemma3")


def export_lora_gguf(adapter_dir: Path, out: Path, base_gguf: Path | None = None) -> Path:
    """Write `out`, a llama.cpp LoRA GGUF (F32) of the peft adapter in `adapter_dir`; with `base_gguf`, its
    architecture is taken from there and every tensor is checked against it, so a mismatch fails here and not
    inside llama.cpp."""
    import gguf

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = _read_header(Path(base_gguf)) if base_gguf else None
    arch = base[0]["general.architecture"][0] if base else _architecture(adapter_dir, cfg)
    if arch not in SUPPORTED:
        raise ValueError(f"{adapter_dir}: LoRA export supports {', '.join(SUPPORTED)}; the base is {arch!r}")
    loras = _lora_tensors(adapter_dir, cfg)
    layers = [int(i) for i in re.findall(r"\.layers\.(\d+)\.", " ".join(loras))]
    n_blocks = int(base[0][f"{arch}.block_count"][0]) if base else max(layers, default=0) + 1
    names = gguf.TensorNameMap(gguf.MODEL_ARCH[arch.upper()], n_blocks)

    alpha = float(cfg["lora_alpha"])
    tensors: dict[str, Any] = {}
    for module, (a, b, scale) in sorted(loras.items()):
        name = names.get_name(module)
        if name is None:
            raise ValueError(f"{adapter_dir}: module {module!r} has no llama.cpp tensor in {arch}")
        name += ".weight"
        if base is not None and (shape := base[1].get(name)) != (a.shape[1], b.shape[0]):
            found = "missing" if shape is None else f"in×out {shape}"
            raise ValueError(f"{name}: LoRA is in×out {(a.shape[1], b.shape[0])}, base GGUF has {found}")
        # llama.cpp scales every pair by alpha / rank; where peft's scale differs (rsLoRA, alpha_pattern) B says so
        tensors[name + ".lora_a"] = a
        tensors[name + ".lora_b"] = b * (scale / (alpha / a.shape[0]))

    writer = gguf.GGUFWriter(_partial(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, data in tensors.items():
        writer.add_tensor(name, data.astype("float32"))
    return _finish(writer, out)


def export_merged_gguf(model_dir: Path, base_gguf: Path, out: Path) -> Path:
    """Write `out`, a whole-model F16 GGUF of a Qwen2 checkpoint: a full fine-tune's directory, or a LoRA adapter
    merged into the base it was trained on. Metadata and tokenizer are the base GGUF's, so the chat template and
    vocabulary are exactly those the embedded backend already uses."""
    import gguf
    import numpy as np

    model_dir = Path(model_dir)
    kv, base_tensors = _read_header(Path(base_gguf), arrays=True)
    arch = kv["general.architecture"][0]
    if arch != "qwen2":
        raise ValueError(f"{base_gguf}: merged export supports qwen2 bases, not {arch!r}; export a LoRA instead")
    state = _merged_state(model_dir)
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.QWEN2, int(kv["qwen2.block_count"][0]))

    writer = gguf.GGUFWriter(_partial(out), arch)
    for key, (value, kind, item) in kv.items():
        if key not in ("general.architecture", "general.file_type", "general.quantization_version"):
            writer.add_key_value(
                key, value, gguf.GGUFValueType(kind), None if item is None else gguf.GGUFValueType(item)
            )
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, tensor in state.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None or name not in base_tensors:
            raise ValueError(f"{model_dir}: tensor {key!r} has no counterpart in {base_gguf}")
        if base_tensors[name] != tuple(reversed(tensor.shape)):
            raise ValueError(f"{name}: {tuple(tensor.shape)} does not fit the base's {base_tensors[name]}")
        writer.add_tensor(name, tensor.astype(np.float16 if tensor.ndim == 2 else np.float32))  # norms, biases: F32
    return _finish(writer, out)


def _lora_tensors(adapter_dir: Path, cfg: dict[str, Any]) -> dict[str, tuple[Any, Any, float]]:
    """HF module name -> (A (rank × in), B (out × rank), peft's scale), as float32 numpy arrays."""
    from safetensors.torch import load_file

    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
        raise ValueError(f"{adapter_dir}: only plain LoRA exports to llama.cpp (not {cfg.get('peft_type')}/DoRA)")
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in load_file(adapter_dir / "adapter_model.safetensors").items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight", key)
        if m is None:
            raise ValueError(f"{adapter_dir}: tensor {key!r} is not a LoRA A/B matrix (embeddings or modules_to_save?)")
        module = re.sub(r"^(model\.)?language_model\.", r"\1", m[1])  # a VLM's text tower: the names of the LM
        pairs.setdefault(module, {})[m[2]] = tensor.float().numpy()
    out = {}
    for module, ab in pairs.items():
        rank = ab["A"].shape[0]
        patterns = (cfg.get("alpha_pattern") or {}).items()
        alpha = next((v for p, v in patterns if re.match(rf"(.*\.)?{p}$", module)), cfg["lora_alpha"])
        out[module] = (ab["A"], ab["B"], alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank))
    return out


def _merged_state(model_dir: Path) -> dict[str, Any]:
    """HF tensor name -> float32 numpy array of a full checkpoint, or of an adapter's base with W += scale·B·A."""
    from safetensors.torch import load_file

    adapter = (model_dir / "adapter_config.json").exists()
    if adapter:
        from pistar.models.hf import resolve_target
        from pistar.train.model import adapter_base

        source = resolve_target(adapter_base(model_dir))
    else:
        source = model_dir
    state = {}
    for file in sorted(source.glob("*.safetensors")):
        state.update({k: v.float().numpy() for k, v in load_file(file).items()})
    if adapter:
        cfg = json.loads((model_dir / "adapter_config.json").read_text())
        for module, (a, b, scale) in _lora_tensors(model_dir, cfg).items():
            state[module + ".weight"] = state[module + ".weight"] + scale * (b @ a)
    return state


def _partial(out: Path) -> Path:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return Path(out).with_name(Path(out).name + ".partial")


def _finish(writer: Any, out: Path) -> Path:
    """Write everything, then move the file into place: a killed export leaves no half GGUF under `out`."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _partial(out).replace(out)
    return Path(out)


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _read_header(path: Path, arrays: bool = False) -> tuple[dict[str, tuple[Any, int, int | None]], dict[str, Any]]:
    """A GGUF's metadata (key -> (value, type, array item type)) and tensor shapes (name -> ne, i.e. (in, out)).

    Reads the header only, arrays (the vocabulary) only when asked: gguf.GGUFReader takes ~13 s on Qwen's here.
    """
    with open(path, "rb") as f:

        def read(fmt: str) -> tuple[Any, ...]:
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def string() -> str:
            return f.read(read("Q")[0]).decode("utf-8", "replace")

        def value(kind: int) -> tuple[Any, int, int | None]:
            if kind == 8:
                return string(), kind, None
            if kind != 9:
                return read(_SCALARS[kind])[0], kind, None
            item, n = read("IQ")
            if item in _SCALARS and not arrays:
                f.seek(n * struct.calcsize(_SCALARS[item]), 1)
                return None, kind, item
            if item in _SCALARS:
                return list(read(f"{n}{_SCALARS[item]}")), kind, item
            items = [value(item)[0] for _ in range(n)]
            return (items if arrays else None), kind, item

        magic, _version, n_tensors, n_kv = read("4sIQQ")
        if magic != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        kv = {string(): value(read("I")[0]) for _ in range(n_kv)}
        tensors = {}
        for _ in range(n_tensors):
            name = string()
            tensors[name] = read(f"{read('I')[0]}Q")
            read("IQ")  # type, offset
    return kv, tensors


def _architecture(adapter_dir: Path, cfg: dict[str, Any]) -> str:
    """The gguf architecture of the adapter's base, from what peft recorded or the base model's config.json."""
    candidates = [(cfg.get("auto_mapping") or {}).get("base_model_class")]
    base = Path(str(cfg.get("base_model_name_or_path") or "")).expanduser()
    for config in (adapter_dir / "config.json", base / "config.json"):
        if config.is_file():
            hf = json.loads(config.read_text())
            candidates += [hf.get("model_type"), *(hf.get("architectures") or [])]
    for c in candidates:
        if c in ARCHITECTURES:
            return ARCHITECTURES[c]
    found = [c for c in candidates if c] or "no base config.json"
    raise ValueError(
        f"{adapter_dir}: LoRA export supports {', '.join(SUPPORTED)}; the base is {found} (or pass base_gguf)"
    )
