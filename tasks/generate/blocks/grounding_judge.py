"""The `grounding_judge` block: the teacher judges whether an answer rests on its source (docs/safety.md)."""

from __future__ import annotations

from typing import Any

from labcycle.tasks.generate.blocks.base import BlockStats, Row, UnitContext, _judge_reason, _source
from labcycle.tasks.generate.blocks.judge import Judge
from labcycle.tasks.generate.spec import BlockSpec


class GroundingJudge(Judge):
    """Teacher-as-judge of grounding: is everything the answer claims supported by the row's source (the
    chunk for knowledge, the context for grounded skills)? The prompt asks for {"reason", "verdict":
    "YES" | "NO"}; NO is dropped, with the judge's reason. A row without a source is dropped unasked."""

    inputs = ("{template}", "{source}", "_scores")
    outputs = ("_scores",)

    def __init__(self, spec: BlockSpec):
        super().__init__(spec)
        self.params = {**self.params, "verdict": {"choices": ["YES", "NO"], "keep": ["YES"]}}

    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        checkable = []
        for row in rows:
            name, text = _source(row, self.params.get("source"))
            if text.strip():
                checkable.append(row)
            else:
                stats.drop(row, f"no {name} to check the answer against")
        return await super().apply(checkable, ctx, stats)

    def _judge(self, text: str) -> tuple[Any, str | None] | None:
        judged = super()._judge(text)
        if judged is None or judged[1] is None:
            return judged
        return judged[0], f"not supported by its source: {_judge_reason(text) or 'no reason given'}"
