"""The `refusal` block: refusals and assistant boilerplate are dropped."""

from __future__ import annotations

from labcycle.tasks.generate import filters
from labcycle.tasks.generate.blocks.base import Block, BlockStats, Row, UnitContext


class Refusal(Block):
    inputs = ("{field}",)
    outputs = ()

    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        out = []
        for row in rows:
            if filters.is_refusal(row[self.params["field"]]):
                stats.drop(row, "refusal or assistant boilerplate")
            else:
                out.append(row)
        return out
