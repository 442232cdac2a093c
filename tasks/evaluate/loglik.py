"""Log-likelihoods from a vLLM OpenAI-compatible server: the scoring behind the regression suites.

A request sends token ids (so what is scored is exactly what was tokenised) with `prompt_logprobs: 1` and
`max_tokens: 1`; each prompt position then carries the log-probability of its own token given those
before it. vLLM 0.32 on CPU crashes its engine on `prompt_logprobs: 0`, hence 1 (the extra top-1 entry is
ignored). `echo` is not needed: it only asks for the same prompt logprobs in OpenAI's token-string form.

vLLM 0.32's CPU LoRA code applies the lm_head LoRA by request, not by token, to prompt logits, so a server
started with --enable-lora on CPU kills its engine when two requests with prompt logprobs (or one and any
other request) share a batch ("einsum(): subscript b has size ..."). With `score_concurrency=1` every
prompt goes alone, one at a time, and nothing else may use the server meanwhile; the stage does that on CPU
(its own server) and by default for an endpoint it did not start. GPU servers map LoRA by token and can
take full concurrency.

The boundary between context and continuation is found as lm-evaluation-harness does: trailing blanks
of the context move to the continuation, the server's /tokenize encodes context+continuation and the
context alone, and the continuation is every token after the context's length. Base and an adapter share
the tokenizer (an adapter does not change it), so tokenising once under the base name serves both; a
whole-model candidate has a client (and server) of its own, which tokenises for it (regression.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.teacher.openai_client import resolve_api_key, server_root
from labcycle.urls import redact


class LoglikClient:
    """Tokenize and score through one server; an async context manager (one HTTP connection pool)."""

    def __init__(self, base_url: str, tokenizer_model: str, *, max_concurrency: int = 8, score_concurrency: int = 1,
                 timeout_s: float = 600.0, retries: int = 3, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.root_url = server_root(self.base_url)
        self.tokenizer_model = tokenizer_model
        self.timeout_s = timeout_s
        self.retries = retries
        self._headers = {"Authorization": f"Bearer {resolve_api_key(api_key)}"}
        self.score_concurrency = score_concurrency
        self._sem = asyncio.Semaphore(max_concurrency)  # tokenize: the API server's tokenizer, never the engine
        self._score_sem = asyncio.Semaphore(score_concurrency)
        self._client: Any = None
        self.max_model_len: int | None = None
        self._prefix: int | None = None  # tokens the tokenizer puts before any text (BOS), 0 or more
        self.requests = 0

    async def __aenter__(self) -> LoglikClient:
        import httpx

        self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _post(self, url: str, body: dict[str, Any], sem: asyncio.Semaphore | None = None) -> dict[str, Any]:
        import httpx

        for attempt in range(self.retries + 1):
            async with sem or self._sem:
                self.requests += 1
                try:
                    resp = await self._client.post(url, json=body)
                except httpx.TransportError as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                else:
                    if resp.status_code < 400:
                        return resp.json()
                    detail = resp.text[:300]
                    if resp.status_code < 500 and resp.status_code not in (408, 429):
                        raise LabcycleError(f"the server refused a scoring request (HTTP {resp.status_code}: {detail})",
                                            where=redact(url))
                    reason = f"HTTP {resp.status_code}: {detail}"
            if attempt < self.retries:
                await asyncio.sleep(random.uniform(0, 0.5 * 2 ** attempt))
        raise LabcycleError(f"scoring requests keep failing ({reason}); check the server", where=redact(url), transient=True)

    # -- tokens ------------------------------------------------------------------------------------
    async def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        data = await self._post(self.root_url + "/tokenize", {"model": self.tokenizer_model, "prompt": text,
                                                              "add_special_tokens": add_special_tokens})
        self.max_model_len = int(data.get("max_model_len") or 0) or self.max_model_len
        return [int(t) for t in data["tokens"]]

    async def prefix_length(self) -> int:
        if self._prefix is None:
            self._prefix = len(await self.tokenize(""))
        return self._prefix

    def _limit(self) -> int:
        # The prompt and the one generated token must fit the model's context.
        return (self.max_model_len or 2048) - 1

    async def split(self, context: str, continuation: str) -> tuple[list[int], int]:
        """(token ids of context+continuation, index of the continuation's first token), cut from the left
        when too long for the model."""
        blanks = len(context) - len(context.rstrip())
        if blanks:
            context, continuation = context[:-blanks], context[-blanks:] + continuation
        whole, ctx = await asyncio.gather(self.tokenize(context + continuation), self.tokenize(context))
        start = len(ctx)
        if start == 0:
            raise LabcycleError("an empty context with a tokenizer that adds no BOS token: the continuation's first "
                                "token has nothing to be predicted from; give every document some context")
        if start >= len(whole):
            raise LabcycleError(f"the continuation {continuation!r} tokenises to nothing after its context")
        cut = max(0, len(whole) - self._limit())
        if cut >= start:
            raise LabcycleError(f"a continuation of {len(whole) - start} tokens does not fit the model's context of "
                                f"{self.max_model_len} tokens")
        return whole[cut:], start - cut

    async def rolling_windows(self, text: str) -> list[tuple[list[int], int]]:
        """Windows (prompt ids, first scored position) that score every token of `text` once, each with as much
        preceding text as fits. Without a BOS token the first token has no prediction and is not scored."""
        tokens = await self.tokenize(text)
        first = max(1, await self.prefix_length())
        limit, windows, s = self._limit(), [], first
        while s < len(tokens):
            e = min(len(tokens), s + limit - 1)
            start = max(0, e - limit)
            windows.append((tokens[start:e], s - start))
            s = e
        return windows

    # -- scores ------------------------------------------------------------------------------------
    async def prompt_logprobs(self, model: str, prompts: Sequence[Sequence[int]]) -> list[list[float | None]]:
        """Per prompt, the log-probability of each token given those before it (None for the first)."""
        if self.score_concurrency == 1 and len(prompts) > 1:
            # Several prompts in one request are several engine requests in one batch: send them one by one.
            return [row for p in prompts for row in await self.prompt_logprobs(model, [p])]
        body = {"model": model, "prompt": [list(p) for p in prompts], "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 1}
        data = await self._post(self.base_url + "/completions", body, self._score_sem)
        choices = sorted(data.get("choices") or [], key=lambda c: c["index"])
        if len(choices) != len(prompts):
            raise LabcycleError(f"the server answered {len(choices)} choices for {len(prompts)} prompts", where=redact(self.base_url))
        out = []
        for prompt, choice in zip(prompts, choices):
            entries = choice.get("prompt_logprobs")
            if not isinstance(entries, list) or len(entries) != len(prompt):
                raise LabcycleError("the server returned no prompt logprobs; labcycle needs a vLLM OpenAI-compatible "
                                    "server (the completions API with prompt_logprobs)", where=redact(self.base_url))
            row: list[float | None] = [None]
            for token, entry in zip(prompt[1:], entries[1:]):
                try:
                    row.append(float(entry[str(token)]["logprob"]))
                except (KeyError, TypeError, ValueError):
                    raise LabcycleError(f"the server's prompt logprobs lack token {token}; is it a vLLM server?",
                                        where=redact(self.base_url)) from None
            out.append(row)
        return out

    async def continuation_logprobs(self, model: str, pairs: Sequence[tuple[list[int], int]]) -> list[float]:
        """Sum of the continuation tokens' log-probabilities for each (ids, start) from split()."""
        rows = await self.prompt_logprobs(model, [ids for ids, _ in pairs])
        return [sum(lp for lp in row[start:] if lp is not None) for row, (_, start) in zip(rows, pairs)]


__all__ = ["LoglikClient"]
