"""Regression evaluation: what the candidate must not forget, scored by log-likelihood, candidate vs base.

multiple_choice: the answer is the choice whose continuation (target_delimiter + choice) has the highest
summed log-likelihood after the context: `accuracy`; `acc_norm` divides each sum by the choice's length in
characters first (the harness's length normalisation: the choice alone, without target_delimiter), so long
choices are not penalised.
loglikelihood_rolling: `perplexity` = exp(total negative log-likelihood / tokens scored) over all documents
(token-level; base and candidate share one tokenizer, so their perplexities compare), with word
perplexity (per whitespace word) beside it.

Each side is scored through its own LoglikClient: base and an adapter share one (one server, one
tokenizer, so texts are tokenised once); a whole-model candidate has its own server, which tokenises for
it. A candidate with another tokenizer scores other tokens: its `candidate_tokens` then differs from
`tokens`, and only word perplexity compares.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from labcycle.tasks.evaluate.loglik import LoglikClient
from labcycle.tasks.evaluate.suite import Suite

# Base and candidate are scored one after the other, never in one batch (see branch.answer_all).
SIDES = ("base", "candidate")
T = TypeVar("T")


async def _per_client(clients: dict[str, LoglikClient], work: Callable[[LoglikClient], Awaitable[T]]) -> dict[str, T]:
    """work(client) once per distinct client, by side: sides that share a server share its tokenisation."""
    done: dict[int, T] = {}
    for side in SIDES:
        client = clients[side]
        if id(client) not in done:
            done[id(client)] = await work(client)
    return {side: done[id(clients[side])] for side in SIDES}


async def _multiple_choice(clients: dict[str, LoglikClient], suite: Suite, models: dict[str, str]) -> dict[str, Any]:
    docs = suite.docs

    async def split(client: LoglikClient) -> list[list[tuple[list[int], int]]]:
        return await asyncio.gather(*(asyncio.gather(*(client.split(d.context, suite.target_delimiter + c)
                                                       for c in d.choices)) for d in docs))

    # Tokenise once per server, then score every document's choices in one request per model.
    pairs = await _per_client(clients, split)
    result: dict[str, Any] = {"metric": "accuracy", "higher_is_better": True, "items": len(docs)}
    per_doc: list[dict[str, Any]] = [{"where": d.where, "gold": d.gold} for d in docs]
    for side in SIDES:
        lls = await asyncio.gather(*(clients[side].continuation_logprobs(models[side], list(p)) for p in pairs[side]))
        correct = correct_norm = 0
        for d, ll, row in zip(docs, lls, per_doc):
            pick = max(range(len(ll)), key=lambda i: ll[i])
            lengths = [len(c) or 1 for c in d.choices]
            pick_norm = max(range(len(ll)), key=lambda i: ll[i] / lengths[i])
            correct += pick == d.gold
            correct_norm += pick_norm == d.gold
            row[side] = {"pick": pick, "loglikelihoods": [round(x, 4) for x in ll]}
        result[side] = correct / len(docs)
        result.setdefault("acc_norm", {})[side] = correct_norm / len(docs)
    result["details"] = per_doc
    return result


async def _rolling(clients: dict[str, LoglikClient], suite: Suite, models: dict[str, str]) -> dict[str, Any]:
    async def windows_of(client: LoglikClient) -> list[list[tuple[list[int], int]]]:
        return await asyncio.gather(*(client.rolling_windows(d.text) for d in suite.docs))

    windows = await _per_client(clients, windows_of)
    words = sum(len(d.text.split()) for d in suite.docs)
    tokens = {side: sum(len(ids) - start for ws in windows[side] for ids, start in ws) for side in SIDES}
    result: dict[str, Any] = {"metric": "perplexity", "higher_is_better": False, "items": len(suite.docs),
                              "tokens": tokens["base"], "words": words}
    if tokens["candidate"] != tokens["base"]:
        result["candidate_tokens"] = tokens["candidate"]
    per_doc: list[dict[str, Any]] = [{"where": d.where} for d in suite.docs]
    for side in SIDES:
        lls = await asyncio.gather(*(clients[side].continuation_logprobs(models[side], ws) if ws else _zero()
                                     for ws in windows[side]))
        total = sum(sum(x) for x in lls)
        for row, x in zip(per_doc, lls):
            row[side] = round(sum(x), 4)
        result[side] = math.exp(-total / tokens[side]) if tokens[side] else math.nan
        result.setdefault("word_perplexity", {})[side] = math.exp(-total / words) if words else math.nan
    result["details"] = per_doc
    return result


async def _zero() -> list[float]:
    return []


async def evaluate_suite(clients: dict[str, LoglikClient], suite: Suite, models: dict[str, str]) -> dict[str, Any]:
    """One suite's report entry (metric, higher_is_better, items, base, candidate, extras; `details` per
    document, which the stage moves out of the report). `clients` and `models`: each side's scorer and
    served name."""
    start = time.monotonic()
    if suite.output_type == "multiple_choice":
        result = await _multiple_choice(clients, suite, models)
    else:
        result = await _rolling(clients, suite, models)
    result["file"] = str(suite.path)
    result["seconds"] = round(time.monotonic() - start, 2)
    return result


async def evaluate_regression(clients: dict[str, LoglikClient], suites: Sequence[Suite],
                              models: dict[str, str]) -> dict[str, Any]:
    """The report's "regression" block: {"suites": {name: entry}}."""
    await _per_client(clients, LoglikClient.prefix_length)  # also learns max_model_len before any window is cut
    results = {}
    for suite in suites:  # one suite at a time: each already fills the server
        results[suite.name] = await evaluate_suite(clients, suite, models)
    return {"suites": results}


__all__ = ["evaluate_regression", "evaluate_suite"]
