"""A local Hugging Face transformers model: the class the trainers produce and the policy they train.

The target is a model directory, a .gguf file, or a catalog name (its GGUF is dequantized once and saved as an
ordinary transformers checkpoint in the cache, so later loads take seconds). Constrained decoding goes through
llguidance's token masks when it is installed; generation runs in a worker thread so the event loop stays free.
Vision-language checkpoints load through the image-text-to-text classes.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from pistar.models import weights
from pistar.models.base import Completion, Model, ModelError, text_only

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def converted_dir(name: str) -> Path:
    return weights.cache_dir().parent / "hf" / name


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF into a plain transformers checkpoint (safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks GGUF-loaded models as quantized, and then refuses to save them; they are plain floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(out)
    return out


def resolve_target(target: str) -> Path:
    """A loadable model directory; for a LoRA adapter directory, that of its base model."""
    if (Path(target) / "adapter_config.json").exists():
        from pistar.train.model import adapter_base

        return resolve_target(adapter_base(target))
    if target in weights.CATALOG:
        out = converted_dir(target)
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(weights.resolve(target), out)
        return out
    path = Path(target).expanduser()
    if path.suffix == ".gguf":
        out = converted_dir(path.stem)
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(path, out)
        return out
    if not path.exists():
        raise weights.ModelMissing(
            f"hf model {target!r} not found: give a local model directory, a .gguf file or one of "
            f"{', '.join(weights.CATALOG)} (nothing is downloaded at run time)"
        )
    return path


class HFModel(Model):
    def __init__(
        self, target: str, *, device: str = "cpu", dtype: str = "float32", model: Any = None, tokenizer: Any = None
    ):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

        self.uri = f"hf:{target}"
        self.device = device
        if model is None:
            path = resolve_target(target)
            config = AutoConfig.from_pretrained(path)
            torch_dtype = getattr(torch, dtype)
            if getattr(config, "vision_config", None) is not None:
                from transformers import AutoModelForImageTextToText

                model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype)
                tokenizer = AutoProcessor.from_pretrained(path)
                self.vision = True
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
                tokenizer = AutoTokenizer.from_pretrained(path)
            if (Path(target) / "adapter_config.json").exists():  # a LoRA from `pistar train`: merged for speed
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, target).merge_and_unload()
        self.model = model.to(device).eval()
        self.processor = tokenizer
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self._lock = threading.Lock()  # one generate at a time: torch already uses every core
        self._ll_tokenizer: Any = None
        self._prefixes: dict[tuple[int, ...], Any] = {}  # system prompt ids -> their keys and values

    def _system_cache(self, messages: list[dict[str, Any]], prompt_ids: list[int]) -> Any:
        """A copy of the keys and values of the system message, which every call of an agent repeats: computed
        once per instance, so each generate prefills only the rest of the prompt (most of an agent's prompt is its
        system message). The weights must not change while an instance lives; the RL trainer makes a new one for
        every iteration's rollouts."""
        import copy

        import torch

        if self.vision or len(messages) < 2 or messages[0].get("role") != "system":
            return None
        enc = self.tokenizer.apply_chat_template(messages[:1], tokenize=True)
        ids = tuple(enc["input_ids"] if hasattr(enc, "keys") else enc)
        if len(ids) >= len(prompt_ids) or tuple(prompt_ids[: len(ids)]) != ids:
            return None  # a template that renders the system message differently inside a conversation
        if ids not in self._prefixes:
            if len(self._prefixes) >= 4:
                self._prefixes.pop(next(iter(self._prefixes)))
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
            self._prefixes[ids] = out.cache
        return copy.deepcopy(self._prefixes[ids])

    def _constraint(self, schema: dict[str, Any]) -> Any:
        """A logits processor that masks every token the JSON schema forbids (llguidance), or None."""
        try:
            import llguidance
            import llguidance.hf
            import llguidance.torch as llt
        except ImportError:
            return None
        if self._ll_tokenizer is None:
            self._ll_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=self.model.config.get_text_config().vocab_size
            )
        matcher = llguidance.LLMatcher(self._ll_tokenizer, llguidance.LLMatcher.grammar_from_json_schema(schema))
        bitmask = llt.allocate_token_bitmask(1, self._ll_tokenizer.vocab_size)
        start: list[int] = []

        def process(input_ids: Any, scores: Any) -> Any:
            if not start:
                start.append(input_ids.shape[1])
            elif input_ids.shape[1] > start[0]:
                matcher.consume_token(int(input_ids[0, -1]))
            if matcher.is_stopped():
                eos = self.tokenizer.eos_token_id
                scores[:] = float("-inf")
                scores[0, eos] = 0.0
                return scores
            llt.fill_next_token_bitmask(matcher, bitmask, 0)
            llt.apply_token_bitmask_inplace(scores, bitmask.to(scores.device))
            return scores

        return process

    def _generate(
        self,
        messages: list[dict[str, Any]],
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        seed: int | None,
    ) -> Completion:
        import torch
        from transformers import LogitsProcessorList

        t0 = time.perf_counter()
        if not self.vision:
            messages = text_only(messages)
        enc = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        prompt_ids = enc["input_ids"][0].tolist()
        processors = LogitsProcessorList()
        if schema is not None and (p := self._constraint(schema)) is not None:
            processors.append(p)
        with self._lock, torch.no_grad():
            if seed is not None:  # under the lock: concurrent callers must not reseed each other's sampling
                torch.manual_seed(seed)
            out = self.model.generate(
                **enc,
                cache=self._system_cache(messages, prompt_ids),
                max_new_tokens=max_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                logits_processor=processors,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        ids = out.sequences[0, len(prompt_ids) :].tolist()
        logprobs = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.logits, ids, strict=False)]
        eos = self.tokenizer.eos_token_id
        ended = bool(ids) and ids[-1] in (eos if isinstance(eos, list) else [eos])
        return Completion(
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            prompt_ids=prompt_ids,
            completion_ids=ids,
            logprobs=logprobs,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(ids),
            finish_reason="stop" if ended else "length",
            latency_s=time.perf_counter() - t0,
        )

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Completion:
        try:
            return await asyncio.to_thread(self._generate, messages, schema, max_tokens, temperature, seed)
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{self.uri}: {type(e).__name__}: {e}") from None
