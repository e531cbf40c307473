"""Model backends behind one interface, chosen by a URI.

embedded[:NAME|:/path/model.gguf][?ctx=16384&parallel=4&threads=2]   llama.cpp in-process (default)
    [&lora=/path/adapter.gguf]                                        a LoRA from pistar.train.export on top
openai:MODEL[@BASE_URL][?vision=1&structured=json_schema|guided_json|none&concurrency=16&timeout=120&token_ids=1]
hf:PATH_OR_NAME[?device=cpu&dtype=float32]                             local transformers model
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from pistar.models.base import Completion, ContextOverflow, Model, ModelError
from pistar.models.weights import DEFAULT_MODEL, ModelMissing

DEFAULT_URI = f"embedded:{DEFAULT_MODEL}"


def parse_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    """Split `scheme:target?k=v` into its parts; a bad URI is a one-line ValueError saying the forms."""
    body, _, query = uri.partition("?")
    scheme, _, target = body.partition(":")
    if scheme not in ("embedded", "openai", "hf"):
        raise ValueError(
            f"bad model URI {uri!r}: expected embedded[:NAME|:PATH.gguf], openai:MODEL[@BASE_URL] or hf:PATH"
        )
    try:
        options = dict(parse_qsl(query, strict_parsing=bool(query)))
    except ValueError:
        raise ValueError(f"bad model URI {uri!r}: options must look like ?key=value&key=value") from None
    return scheme, target, options


def load_model(uri: str = DEFAULT_URI) -> Model:
    scheme, target, opt = parse_uri(uri)
    ints = {k: int(v) for k, v in opt.items() if k in ("ctx", "parallel", "threads", "concurrency", "port")}
    if scheme == "embedded":
        from pistar.models.embedded import EmbeddedModel

        return EmbeddedModel(target or DEFAULT_MODEL, lora=opt.get("lora"), **ints)
    if scheme == "openai":
        from pistar.models.openai import OpenAIModel

        model, _, base_url = target.partition("@")
        return OpenAIModel(
            model,
            base_url=base_url or None,
            vision=opt.get("vision", "0") in ("1", "true", "yes"),
            structured=opt.get("structured", "json_schema"),
            concurrency=ints.get("concurrency", 16),
            timeout=float(opt.get("timeout", 120)),
            token_ids=opt.get("token_ids", "0") in ("1", "true", "yes"),
        )
    from pistar.models.hf import HFModel

    return HFModel(target, device=opt.get("device", "cpu"), dtype=opt.get("dtype", "float32"))


__all__ = [
    "Completion",
    "ContextOverflow",
    "DEFAULT_URI",
    "Model",
    "ModelError",
    "ModelMissing",
    "load_model",
    "parse_uri",
]
