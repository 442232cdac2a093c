"""The judge: the teacher grades an answer against the reference on 1-10, MT-Bench-branch style.

The request asks for JSON {"reason", "score"} with structured outputs where the teacher supports them,
and the answer is read by a tolerant parser, so a teacher that ignores the constraint (or writes noise)
still yields a score or a counted failure: an unreadable judgement is never fatal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from labcycle.teacher.base import PromptTooLong, Sampling, Structured, Teacher, parse_json

SCORE_MIN, SCORE_MAX = 1, 10
_JSON_KEY = re.compile(r'"\w+"\s*:')  # the text is (the start of) a JSON object
_SCORE_KEY = re.compile(r'"score"\s*:\s*(-?\d+(?:\.\d+)?)')
_FREE_SCORE = re.compile(r"(?<!\w)(?<!\d\.)(10|[1-9])(?:\s*/\s*10)?(?!\w|\.\d)")


@dataclass(frozen=True)
class Judgement:
    score: int | None  # None: no usable judgement
    reason: str = ""
    error: str | None = None  # why score is None: "unreadable", "prompt too long"
    raw: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"score": self.score, "reason": self.reason}
        if self.error:
            out["error"] = self.error
            out["raw"] = self.raw[:300]
        return out


def reason_limit(max_tokens: int) -> int:
    """The judge's reason comes first, so it explains before it decides, and is capped at this many
    characters (about half the token budget, at most 300) so the verdict always fits before max_tokens."""
    return max(8, min(300, max_tokens // 2))


def judge_schema(max_tokens: int) -> dict[str, Any]:
    return {"type": "object",
            "properties": {"reason": {"type": "string", "maxLength": reason_limit(max_tokens)},
                           "score": {"type": "integer", "minimum": SCORE_MIN, "maximum": SCORE_MAX}},
            "required": ["reason", "score"], "additionalProperties": False}


def read_score(text: str) -> tuple[int | None, str]:
    """(score, reason) from a judge's text, score None when unreadable. A JSON object is read by its key
    only (a number inside its reason is not a score); free text falls back to the first 1-10 in it, as
    "7" or "7/10". Floats with an integral value count (7.0); out-of-range or fractional scores do not."""
    if not isinstance(text, str):
        return None, ""
    data = parse_json(text)
    reason = ""
    if isinstance(data, dict):
        raw = data.get("score")
        reason = data.get("reason") if isinstance(data.get("reason"), str) else ""
        if isinstance(raw, str) and raw.strip().isdigit():
            raw = int(raw.strip())
    elif _JSON_KEY.search(text):
        m = _SCORE_KEY.search(text)  # a JSON object cut off or malformed after its score
        raw = float(m.group(1)) if m else None
    else:
        m = _FREE_SCORE.search(text)
        raw = int(m.group(1)) if m else None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != int(raw):
        return None, reason
    score = int(raw)
    return (score, reason) if SCORE_MIN <= score <= SCORE_MAX else (None, reason)


# The grading judge (judge*.j2) and the safety judge (safety_judge*.j2, see safety.py).
TEMPLATES = ("judge_system.j2", "judge.j2", "safety_judge_system.j2", "safety_judge.j2")


@cache
def _templates() -> Any:
    import jinja2

    folder = files("labcycle.tasks.evaluate").joinpath("prompts")
    sources = {name: folder.joinpath(name).read_text(encoding="utf-8") for name in TEMPLATES}
    return jinja2.Environment(loader=jinja2.DictLoader(sources), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, autoescape=False)


def render_messages(system: str, user: str, **variables: str) -> list[dict[str, str]]:
    """A system and a user turn from two of the prompts/ templates."""
    env = _templates()
    return [{"role": "system", "content": env.get_template(system).render(**variables).strip()},
            {"role": "user", "content": env.get_template(user).render(**variables).strip()}]


def judge_messages(question: str, reference: str, answer: str, context: str = "") -> list[dict[str, str]]:
    return render_messages("judge_system.j2", "judge.j2", question=question, reference=reference, answer=answer,
                           context=context)


async def ask_judge(judge: Teacher, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int) -> str | None:
    """The judge's reply, greedy, constrained to `schema` where the judge has structured outputs; None when
    the prompt does not fit the judge's context. Other failures (the judge unreachable after its retries,
    a wrong model name) propagate: they are not the candidate's fault and would make every judgement fail."""
    structured = Structured(json_schema=schema) if judge.supports_structured else None
    try:
        completion = await judge.chat(messages, Sampling(temperature=0.0, max_tokens=max_tokens), structured)
    except PromptTooLong:
        return None
    return completion.texts[0] if completion.texts else ""


async def judge_answer(judge: Teacher, question: str, reference: str, answer: str, context: str = "", *,
                       max_tokens: int = 256) -> Judgement:
    """One judgement; a prompt too long for the judge or an unreadable reply is a Judgement with an error."""
    text = await ask_judge(judge, judge_messages(question, reference, answer, context), judge_schema(max_tokens),
                           max_tokens)
    if text is None:
        return Judgement(score=None, error="prompt too long for the judge")
    score, reason = read_score(text)
    if score is None:
        return Judgement(score=None, reason=reason, error="unreadable judgement", raw=text)
    return Judgement(score=score, reason=reason)


__all__ = ["Judgement", "ask_judge", "judge_answer", "judge_messages", "judge_schema", "read_score", "reason_limit",
           "render_messages"]
