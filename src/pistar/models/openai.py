"""Any OpenAI-compatible server: vLLM, SGLang, Ollama, llama.cpp's server, hosted APIs.

Async with a bounded number of requests in flight (so one server stays busy without being flooded); retries with
exponential backoff and timeouts come from the official client. Structured output is asked for the way the server
understands it: `response_format` json_schema (OpenAI, vLLM, SGLang, llama.cpp, Ollama) or vLLM's older
`guided_json`.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pistar.models.base import Completion, ContextOverflow, Model, ModelError, text_only


class OpenAIModel(Model):
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        vision: bool = False,
        structured: str = "json_schema",
        concurrency: int = 16,
        timeout: float = 120.0,
        max_retries: int = 4,
        token_ids: bool = False,
    ):
        import openai

        if structured not in ("json_schema", "guided_json", "none"):
            raise ValueError(f"structured={structured!r}: expected json_schema, guided_json or none")
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.uri = f"openai:{model}@{self.base_url}"
        self.vision = vision
        self.structured = structured
        self.concurrency = concurrency
        # vLLM can name each generated token by its id ("token_id:123"): the exact completion ids RL trains on.
        self.token_ids = token_ids
        self._client_args = {
            "base_url": self.base_url,
            "api_key": api_key or os.environ.get("OPENAI_API_KEY") or "none",
            "timeout": timeout,
            "max_retries": max_retries,
        }
        self._openai = openai
        self._clients: dict[int, tuple[Any, asyncio.Semaphore]] = {}
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests seen in flight at once

    def _client(self) -> tuple[Any, asyncio.Semaphore]:
        key = id(asyncio.get_running_loop())
        if key not in self._clients:
            self._clients[key] = (self._openai.AsyncOpenAI(**self._client_args), asyncio.Semaphore(self.concurrency))
        return self._clients[key]

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Completion:
        if not self.vision:
            messages = text_only(messages)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "logprobs": True,
        }
        if seed is not None:
            kwargs["seed"] = seed
        extra: dict[str, Any] = {"return_tokens_as_token_ids": True} if self.token_ids else {}
        if schema is not None and self.structured == "json_schema":
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {"name": "action", "schema": schema}}
        elif schema is not None and self.structured == "guided_json":
            extra["guided_json"] = schema
        if extra:
            kwargs["extra_body"] = extra
        client, slots = self._client()
        t0 = time.perf_counter()
        async with slots:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                r = await client.chat.completions.create(**kwargs)
            except self._openai.APIError as e:  # a 400 naming the context: vLLM's, llama.cpp's and OpenAI's wording
                overflow = isinstance(e, self._openai.BadRequestError) and "context" in str(e).lower()
                error = ContextOverflow if overflow else ModelError
                raise error(f"{self.base_url} ({self.model}): {type(e).__name__}: {e}") from None
            finally:
                self.in_flight -= 1
        choice = r.choices[0]
        content = getattr(choice.logprobs, "content", None) or []
        usage = r.usage
        ids = None
        if self.token_ids and content:
            try:
                ids = [int(t.token.removeprefix("token_id:")) for t in content]
            except ValueError:
                raise ModelError(
                    f"{self.base_url}: token_ids=1 needs a vLLM server (return_tokens_as_token_ids); "
                    f"got the token {content[0].token!r}"
                ) from None
        return Completion(
            text=choice.message.content or "",
            completion_ids=ids,
            logprobs=[t.logprob for t in content] or None,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason or "",
            latency_s=time.perf_counter() - t0,
        )

    async def aclose(self) -> None:
        key = id(asyncio.get_running_loop())
        if key in self._clients:
            client, _ = self._clients.pop(key)
            await client.close()
