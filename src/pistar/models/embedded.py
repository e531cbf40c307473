"""The embedded backend: llama.cpp inside this process (xllamacpp), on the CPU, with no network.

xllamacpp starts llama.cpp's own server on a loopback port. We talk to its native endpoints rather than the
OpenAI ones because they let us record exactly what training needs: we render the chat template, tokenize the
prompt ourselves and send token ids, and get the generated token ids and their log-probs back. The same server
is what `pistar serve` exposes to other tools.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from pistar.downloads import sha256_file
from pistar.models import weights
from pistar.models.base import Completion, ContextOverflow, Model, ModelError, text_only


class EmbeddedModel(Model):
    vision = False

    def __init__(
        self,
        model: str = weights.DEFAULT_MODEL,
        *,
        ctx: int = 16384,
        parallel: int = 4,
        threads: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        verify: bool = False,
        lora: str | None = None,
    ):
        import xllamacpp

        path = Path(model) if model.endswith(".gguf") else weights.resolve(model)
        if not path.exists():
            raise weights.ModelMissing(f"model file {path} does not exist")
        self.path = path
        self.name = model
        self.uri = f"embedded:{model}"
        if model in weights.CATALOG:
            self.sha256 = weights.CATALOG[model].sha256
            if verify and sha256_file(path) != self.sha256:
                raise weights.ModelMissing(
                    f"{path} is corrupt (sha256 mismatch): run `pistar models pull {model} --force`"
                )
        self.lora: Path | None = None
        self.lora_sha256: str | None = None
        if lora:
            # A LoRA GGUF (pistar.train.export) applied on top of the base at full scale; recorded by hash
            # so an eval run says exactly which adapter it measured.
            self.lora = Path(lora).expanduser().resolve()
            if not self.lora.is_file():
                raise weights.ModelMissing(f"LoRA adapter {self.lora} does not exist")
            self.lora_sha256 = sha256_file(self.lora)
            self.uri += f"?lora={quote(str(self.lora), safe='/')}"  # load_model(uri) gives this model back
        threads = threads or max(1, min(os.cpu_count() or 1, 8))
        p = xllamacpp.CommonParams()
        p.model.path = str(path)
        p.n_ctx = ctx
        p.n_parallel = parallel
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.warmup = False
        p.verbosity = -1
        p.hostnames = [host]
        p.port = port
        if self.lora is not None:
            p.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(self.lora), 1.0)]
        self.slot_ctx = ctx // parallel
        self.parallel = parallel
        try:
            self._server = xllamacpp.Server(p)
        except RuntimeError as e:
            if self.lora is None:
                raise
            raise ModelError(
                f"llama.cpp could not start {path.name} with LoRA {self.lora} ({e}): "
                "was the adapter exported for this base model?"
            ) from None
        self.base_url = self._server.listening_address
        self._client: httpx.AsyncClient | None = None

    def info(self) -> dict[str, Any]:
        if self.lora is None:
            return super().info()
        return {**super().info(), "lora": str(self.lora), "lora_sha256": self.lora_sha256}

    def _http(self) -> httpx.AsyncClient:
        # One client per event loop: the CLI and the tests each run their own asyncio.run().
        loop = asyncio.get_running_loop()
        if self._client is None or getattr(self, "_loop", None) is not loop:
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(600.0))
            self._loop = loop
        return self._client

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        r = await self._http().post(path, json=payload)
        if r.status_code != 200:
            try:
                detail = r.json().get("error", {}).get("message", r.text)
            except ValueError:
                detail = r.text
            raise ModelError(f"llama.cpp {path} failed ({r.status_code}): {detail[:300]}")
        return r.json()

    async def tokenize(self, text: str) -> list[int]:
        return (await self._post("/tokenize", {"content": text, "add_special": True, "parse_special": True}))["tokens"]

    async def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt exactly as the model's chat template lays it out, ending with the assistant header."""
        return (await self._post("/apply-template", {"messages": text_only(messages)}))["prompt"]

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Completion:
        t0 = time.perf_counter()
        prompt_ids = await self.tokenize(await self.render(messages))
        if len(prompt_ids) + max_tokens > self.slot_ctx:
            raise ContextOverflow(
                f"prompt of {len(prompt_ids)} tokens + {max_tokens} to generate exceeds the context of "
                f"{self.slot_ctx} per slot: raise ctx= in the model URI or keep less history"
            )
        payload: dict[str, Any] = {
            "prompt": prompt_ids,
            "n_predict": max_tokens,
            "temperature": temperature,
            "seed": seed if seed is not None else -1,
            "n_probs": 1,
            "return_tokens": True,
            "cache_prompt": True,
        }
        if schema is not None:
            payload["json_schema"] = schema
        r = await self._post("/completion", payload)
        ids = r.get("tokens") or []
        probs = r.get("completion_probabilities") or []
        logprobs = [p["logprob"] for p in probs] if len(probs) == len(ids) else None
        return Completion(
            text=r.get("content", ""),
            prompt_ids=prompt_ids,
            completion_ids=ids,
            logprobs=logprobs,
            prompt_tokens=len(prompt_ids),
            completion_tokens=r.get("tokens_predicted", len(ids)),
            finish_reason="length" if r.get("stop_type") == "limit" else "stop",
            latency_s=time.perf_counter() - t0,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def close(self) -> None:
        """Stop llama.cpp's server and free the weights."""
        self._client = None
        server, self._server = getattr(self, "_server", None), None
        del server
