"""The `judge` block: the teacher as judge, a verdict or a score per row. The grounding and safety
judges (grounding_judge.py, safety_judge.py) build on it."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from labcycle.tasks.generate.blocks.base import Block, BlockStats, Row, UnitContext, hash_text
from labcycle.teacher.base import PromptTooLong, Structured, parse_choice, parse_json

_JSON_KEY = re.compile(r'"\w+"\s*:')  # the text is (the start of) a JSON object


class Judge(Block):
    """Teacher-as-judge: a verdict from a fixed choice list, or an integer score; keeps rows that pass.

    The grounding and safety judges are this block with a fixed verdict and their own prompt: they
    override the hooks `_details` (more keys asked for between the reason and the decision), `_variables`
    (more template variables) and `_judge` (the decision and the reason a row is dropped)."""

    inputs = ("{template}", "_scores")
    outputs = ("_scores",)

    def _details(self, cap: int | None) -> dict[str, Any]:
        return {}

    def _variables(self) -> dict[str, Any]:
        return {}

    def _judge(self, text: str) -> tuple[Any, str | None] | None:
        """(the judgement recorded in the row's judge scores, why the row is dropped or None to keep it), or
        None when no judgement can be read from `text`."""
        value = self._read(text)
        if value is None:
            return None
        return value, None if self._keep(value) else f"judged {value}"

    def _schema(self, cap: int | None = None) -> dict[str, Any]:
        if "verdict" in self.params:
            key: dict[str, Any] = {"verdict": {"type": "string", "enum": self.params["verdict"]["choices"]}}
        else:
            s = self.params["score"]
            key = {"score": {"type": "integer", "minimum": s["min"], "maximum": s["max"]}}
        # The reason comes first, as the prompts ask: a judge that explains before it decides judges better.
        # Its length is capped so the decision always fits in the judge's max_tokens; with max_tokens capped
        # (smoke runs on tiny models) it gets half the cap, as Generate's strings do, or a random model fills
        # the cap inside the reason and never writes the decision.
        reason_max = min(300, max(8, cap // 2)) if cap else 300
        details = self._details(cap)
        return {"type": "object", "properties": {"reason": {"type": "string", "maxLength": reason_max}, **details, **key},
                "required": ["reason", *details, *key], "additionalProperties": False}

    def _read(self, text: str) -> Any:
        """The judgement in `text`, else None. A JSON object is read by its key only; free text (a teacher
        without structured outputs) falls back to the first choice or number in it. A JSON answer cut off
        before its decision (max_tokens) is unreadable: a choice or number inside its reason is not one."""
        data = parse_json(text)
        jsonish = isinstance(data, dict) or _JSON_KEY.search(text) is not None
        if "verdict" in self.params:
            choices = self.params["verdict"]["choices"]
            if isinstance(data, dict):
                raw = data.get("verdict")
                if isinstance(raw, str) and raw in choices:
                    return raw
                return parse_choice(raw, choices) if isinstance(raw, str) else None
            m = re.search(r'"verdict"\s*:\s*"([^"]*)"', text)
            if m:
                return parse_choice(m.group(1), choices)
            return None if jsonish else parse_choice(text, choices)
        s = self.params["score"]
        if isinstance(data, dict):
            raw = data.get("score")
        else:
            m = re.search(r'"score"\s*:\s*(-?\d+)', text) or (None if jsonish else re.search(r"(-?\d+)", text))
            raw = int(m.group(1)) if m else None
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not s["min"] <= raw <= s["max"]:
            return None
        return int(raw)

    def _keep(self, value: Any) -> bool:
        if "verdict" in self.params:
            return value in self.params["verdict"]["keep"]
        return value >= self.params["score"]["keep_at_least"]

    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        structured = Structured(json_schema=self._schema(ctx.max_tokens_cap))

        async def one(i: int, row: Row) -> Row | None:
            sampling = ctx.sampling(self.params, {"temperature": 0.0, "max_tokens": 256}, salt=hash_text(self.name) + i)
            try:
                messages = ctx.messages(self.params["template"], row, self._variables())
                completion = await ctx.teacher.chat(messages, sampling, structured)
            except PromptTooLong:
                stats.drop_too_long(row)
                return None
            stats.count(completion)
            judged = self._judge(completion.texts[0] if completion.texts else "")
            if judged is None:
                stats.parse_failures += 1
                stats.drop(row, "unreadable judgement")
                return None
            value, why = judged
            if why is not None:
                stats.drop(row, why)
                return None
            return {**row, "_scores": {**row.get("_scores", {}), self.name: value}}

        results = await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))
        return [r for r in results if r is not None]
