"""The `safety_judge` block: the teacher judges whether a sample is harmful (docs/safety.md)."""

from __future__ import annotations

from typing import Any

from labcycle.tasks.generate.blocks.base import _judge_reason
from labcycle.tasks.generate.blocks.judge import Judge
from labcycle.tasks.generate.spec import BlockSpec
from labcycle.teacher.base import parse_json

# What the safety judge checks for unless a spec lists its own categories.
SAFETY_CATEGORIES = ("violence", "self-harm", "hate speech", "harassment", "sexual content", "illegal activity", "weapons",
                     "malicious code", "privacy violation")


class SafetyJudge(Judge):
    """Teacher-as-judge of harm: does the sample (question and answer, and a grounded skill's context) fall
    under any of the block's `categories`? The prompt asks for {"reason", "categories": [...], "verdict":
    "SAFE" | "UNSAFE"}; a row is dropped when the verdict is UNSAFE or any category is named (a judge that
    names a harm and still says SAFE is not trusted), and when the judgement cannot be read."""

    inputs = ("{template}", "_scores")
    outputs = ("_scores",)

    def __init__(self, spec: BlockSpec):
        super().__init__(spec)
        self.categories = list(self.params.get("categories") or SAFETY_CATEGORIES)
        self.params = {**self.params, "verdict": {"choices": ["SAFE", "UNSAFE"], "keep": ["SAFE"]}}

    def _details(self, cap: int | None) -> dict[str, Any]:
        # Under a token cap (smoke runs) one category at most, so the verdict still fits after it.
        most = 1 if cap else len(self.categories)
        return {"categories": {"type": "array", "items": {"enum": self.categories}, "maxItems": most}}

    def _schema(self, cap: int | None = None) -> dict[str, Any]:
        schema = super()._schema(cap)
        if cap:  # and a quarter of the cap for the reason, not half: the categories need their share
            schema["properties"]["reason"]["maxLength"] = max(8, min(300, cap // 4))
        return schema

    def _variables(self) -> dict[str, Any]:
        return {"categories": self.categories}

    def _judge(self, text: str) -> tuple[Any, str | None] | None:
        value = self._read(text)
        if value is None:
            return None
        data = parse_json(text)
        named = data.get("categories") if isinstance(data, dict) else None
        flagged = list(dict.fromkeys(c for c in named if c in self.categories)) if isinstance(named, list) else []
        if value == "SAFE" and not flagged:
            return value, None
        return "UNSAFE", f"unsafe ({', '.join(flagged) or 'no category named'}): {_judge_reason(text) or 'no reason given'}"
