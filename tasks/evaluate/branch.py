"""Branch evaluation: what this cycle taught. Base and candidate answer every question greedily; each
answer is scored against the reference by token F1 and ROUGE-L, and by the judge when there is one.

Pairwise fairness: a question whose judgement failed for either model has no judge score for both, and a
question either model could not be asked (prompt longer than the server's context) is left out of every
metric for both. Both are counted per leaf. Means: per leaf over its questions, per kind and overall over
leaves, so a leaf with many seed Q&A (knowledge) does not outweigh the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.tasks.evaluate.judge import Judgement, judge_answer
from labcycle.tasks.evaluate.metrics import mean, rouge_l, token_f1
from labcycle.tasks.evaluate.questions import Question
from labcycle.teacher.base import PromptTooLong, Sampling, Teacher

SIDES = ("base", "candidate")
METRICS = ("judge", "token_f1", "rouge_l")
KINDS = ("knowledge", "freeform_skill", "grounded_skill")


@dataclass(frozen=True)
class BranchSettings:
    max_tokens: int = 256  # per answer, greedy
    judge_max_tokens: int = 256


async def _answer(model: Teacher, messages: Sequence[dict[str, str]], max_tokens: int) -> str | None:
    try:
        completion = await model.chat(list(messages), Sampling(temperature=0.0, max_tokens=max_tokens))
    except PromptTooLong:
        return None
    return (completion.texts[0] if completion.texts else "").strip()


async def answer_prompts(prompts: Sequence[Sequence[dict[str, str]]], models: dict[str, Teacher],
                         max_tokens: int) -> list[dict[str, str | None]]:
    """Each prompt's (chat messages') greedy answer by each side (None: it did not fit that model's context).

    One side after the other, never both in one batch: vLLM 0.32 on CPU applies the adapter to base
    requests that share a batch with adapter requests (checked: the base then answers as the candidate
    does). Each side alone still fills the server, so this costs nothing measurable on a GPU either. For
    the same reason callers never run two of these (or a judge on the same server) at once."""
    by_side = {}
    for side in SIDES:
        by_side[side] = await asyncio.gather(*(_answer(models[side], m, max_tokens) for m in prompts))
    return [{side: by_side[side][i] for side in SIDES} for i in range(len(prompts))]


async def answer_all(questions: Sequence[Question], models: dict[str, Teacher], max_tokens: int) -> list[dict[str, str | None]]:
    """Each question's answer by each side (None: the prompt did not fit that model's context)."""
    return await answer_prompts([q.messages for q in questions], models, max_tokens)


async def judge_all(judge: Teacher, questions: Sequence[Question], answers: Sequence[dict[str, str | None]],
                    max_tokens: int) -> list[dict[str, Judgement] | None]:
    async def one(q: Question, a: dict[str, str | None]) -> dict[str, Judgement] | None:
        if any(a[side] is None for side in SIDES):
            return None
        results = await asyncio.gather(*(judge_answer(judge, q.question, q.reference, a[side] or "", q.context,
                                                      max_tokens=max_tokens) for side in SIDES))
        return dict(zip(SIDES, results))

    return list(await asyncio.gather(*(one(q, a) for q, a in zip(questions, answers))))


def score_records(questions: Sequence[Question], answers: Sequence[dict[str, str | None]],
                  judgements: Sequence[dict[str, Judgement] | None] | None) -> list[dict[str, Any]]:
    """One record per question (the rows of answers.jsonl): answers, per-side scores, judgements."""
    records = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        rec: dict[str, Any] = {**q.to_json(), "answers": a}
        if any(a[side] is None for side in SIDES):
            rec["skipped"] = "prompt longer than the model's context"
            records.append(rec)
            continue
        j = judgements[i] if judgements is not None else None
        pair_judged = j is not None and all(j[side].score is not None for side in SIDES)
        rec["scores"] = {side: {"judge": j[side].score if pair_judged else None,  # type: ignore[index]
                                "token_f1": token_f1(a[side] or "", q.reference),
                                "rouge_l": rouge_l(a[side] or "", q.reference)} for side in SIDES}
        if j is not None:
            rec["judgements"] = {side: j[side].to_json() for side in SIDES}
            rec["judge_failed"] = not pair_judged
        records.append(rec)
    return records


def _side_means(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    return {side: {m: mean(r["scores"][side][m] for r in records) for m in METRICS} for side in SIDES}


def _over_leaves(leaves: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"leaves": len(leaves),
            **{side: {m: mean(leaf[side][m] for leaf in leaves) for m in METRICS} for side in SIDES}}


def aggregate(records: Sequence[dict[str, Any]], kinds: dict[str, str], judge_requested: bool) -> dict[str, Any]:
    """The report's "branch" block. `kinds` maps every evaluated leaf id to its kind (in report order)."""
    leaves: dict[str, dict[str, Any]] = {}
    for leaf_id, kind in kinds.items():
        mine = [r for r in records if r["leaf_id"] == leaf_id]
        scored = [r for r in mine if "scores" in r]
        if not scored:
            raise LabcycleError("no question of this leaf fits the served model's context, so it cannot be "
                                "evaluated; raise evaluation.max_model_len (or shorten its seed contexts)", where=leaf_id)
        failed = sum(1 for r in scored if r.get("judge_failed"))
        leaves[leaf_id] = {
            "kind": kind,
            "questions": len(scored),
            **_side_means(scored),
            "judged": sum(1 for r in scored if r["scores"]["base"]["judge"] is not None),
            "judge_failures": failed,
            "skipped": len(mine) - len(scored),
            "sources": {s: sum(1 for r in scored if r["source"] == s) for s in ("seed", "held_out")},
        }
    judged = sum(leaf["judged"] for leaf in leaves.values())
    by_kind = {k: _over_leaves([leaf for leaf in leaves.values() if leaf["kind"] == k])
               for k in KINDS if any(leaf["kind"] == k for leaf in leaves.values())}
    return {
        # A judge that could not read a single pair is no judge: the gate then uses its fallback metric.
        "judge_available": judge_requested and judged > 0,
        "leaves": leaves,
        "overall": _over_leaves(list(leaves.values())),
        "by_kind": by_kind,
        "judge": {"requested": judge_requested, "judged_pairs": judged,
                  "failed_pairs": sum(leaf["judge_failures"] for leaf in leaves.values()),
                  "failures": _failure_reasons(records)},
        "skipped_questions": sum(leaf["skipped"] for leaf in leaves.values()),
    }


def _failure_reasons(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        for j in (r.get("judgements") or {}).values():
            if j.get("error"):
                counts[j["error"]] = counts.get(j["error"], 0) + 1
    return counts


async def evaluate_branch(questions: Sequence[Question], kinds: dict[str, str], models: dict[str, Teacher],
                          judge: Teacher | None, settings: BranchSettings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the report's branch block, the per-question records)."""
    answers = await answer_all(questions, models, settings.max_tokens)
    judgements = await judge_all(judge, questions, answers, settings.judge_max_tokens) if judge is not None else None
    records = score_records(questions, answers, judgements)
    return aggregate(records, kinds, judge is not None), records


__all__ = ["BranchSettings", "SIDES", "aggregate", "answer_all", "answer_prompts", "evaluate_branch", "judge_all", "score_records"]
