"""The `length` block: rows whose field is too short or too long (in words) are dropped."""

from __future__ import annotations

from labcycle.tasks.generate import filters
from labcycle.tasks.generate.blocks.base import Block, BlockStats, Row, UnitContext


class Length(Block):
    inputs = ("{field}",)
    outputs = ()

    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        lo, hi = self.params.get("min_words", 0), self.params.get("max_words")
        out = []
        for row in rows:
            if filters.length_ok(row[self.params["field"]], lo, hi):
                out.append(row)
            else:
                stats.drop(row, f"{len(row[self.params['field']].split())} words, outside [{lo}, {hi or '∞'}]")
        return out
