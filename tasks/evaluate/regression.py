"""Regression evaluation: what the candidate must not forget, scored by log-likelihood, candidate vs base.

multiple_choice: the answer is the choice whose continuation (target_delimiter + choice) has the highest
summed log-likelihood after the context: `accuracy`; `acc_norm` divides each sum by the continuation's
length in characters first (the harness's length normalisation), so long choices are not penalised.
loglikelihood_rolling: `perplexity` = exp(total negative log-likelihood / tokens scored) over all documents
(token-level; base and candidate share one tokenizer, so their perplexities compare), with word
perplexity (per whitespace word) beside it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

from labcycle.tasks.evaluate.loglik import LoglikClient
from labcycle.tasks.evaluate.suite import Suite

# Base and candidate are scored one after the other, never in one batch (see branch.answer_all).
SIDES = ("base", "candidate")


async def _multiple_choice(client: LoglikClient, suite: Suite, models: dict[str, str]) -> dict[str, Any]:
    docs = suite.docs
    # Tokenise once (shared tokenizer), then score every document's choices in one request per model.
    pairs = await asyncio.gather(*(asyncio.gather(*(client.split(d.context, suite.target_delimiter + c) for c in d.choices))
                                   for d in docs))
    result: dict[str, Any] = {"metric": "accuracy", "higher_is_better": True, "items": len(docs)}
    per_doc: list[dict[str, Any]] = [{"where": d.where, "gold": d.gold} for d in docs]
    for side in SIDES:
        lls = await asyncio.gather(*(client.continuation_logprobs(models[side], list(p)) for p in pairs))
        correct = correct_norm = 0
        for d, ll, row in zip(docs, lls, per_doc):
            pick = max(range(len(ll)), key=lambda i: ll[i])
            lengths = [len(suite.target_delimiter + c) or 1 for c in d.choices]
            pick_norm = max(range(len(ll)), key=lambda i: ll[i] / lengths[i])
            correct += pick == d.gold
            correct_norm += pick_norm == d.gold
            row[side] = {"pick": pick, "loglikelihoods": [round(x, 4) for x in ll]}
        result[side] = correct / len(docs)
        result.setdefault("acc_norm", {})[side] = correct_norm / len(docs)
    result["details"] = per_doc
    return result


async def _rolling(client: LoglikClient, suite: Suite, models: dict[str, str]) -> dict[str, Any]:
    windows = await asyncio.gather(*(client.rolling_windows(d.text) for d in suite.docs))
    words = sum(len(d.text.split()) for d in suite.docs)
    tokens = sum(len(ids) - start for ws in windows for ids, start in ws)
    result: dict[str, Any] = {"metric": "perplexity", "higher_is_better": False, "items": len(suite.docs),
                              "tokens": tokens, "words": words}
    per_doc: list[dict[str, Any]] = [{"where": d.where} for d in suite.docs]
    for side in SIDES:
        lls = await asyncio.gather(*(client.continuation_logprobs(models[side], ws) if ws else _zero() for ws in windows))
        total = sum(sum(x) for x in lls)
        for row, x in zip(per_doc, lls):
            row[side] = round(sum(x), 4)
        result[side] = math.exp(-total / tokens) if tokens else math.nan
        result.setdefault("word_perplexity", {})[side] = math.exp(-total / words) if words else math.nan
    result["details"] = per_doc
    return result


async def _zero() -> list[float]:
    return []


async def evaluate_suite(client: LoglikClient, suite: Suite, models: dict[str, str]) -> dict[str, Any]:
    """One suite's report entry (metric, higher_is_better, items, base, candidate, extras; `details` per
    document, which the stage moves out of the report)."""
    start = time.monotonic()
    if suite.output_type == "multiple_choice":
        result = await _multiple_choice(client, suite, models)
    else:
        result = await _rolling(client, suite, models)
    result["file"] = str(suite.path)
    result["seconds"] = round(time.monotonic() - start, 2)
    return result


async def evaluate_regression(client: LoglikClient, suites: Sequence[Suite], models: dict[str, str]) -> dict[str, Any]:
    """The report's "regression" block: {"suites": {name: entry}}."""
    await client.prefix_length()  # also learns max_model_len before any window is cut
    results = {}
    for suite in suites:  # one suite at a time: each already fills the server
        results[suite.name] = await evaluate_suite(client, suite, models)
    return {"suites": results}


__all__ = ["evaluate_regression", "evaluate_suite"]
