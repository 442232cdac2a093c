"""The `seed_leakage` block: rows that copy too much of a seed example are dropped."""

from __future__ import annotations

from labcycle.tasks.generate import filters
from labcycle.tasks.generate.blocks.base import Block, BlockStats, Row, UnitContext


class SeedLeakage(Block):
    inputs = ("{field}",)
    outputs = ()

    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        limit = self.params.get("max_share", 0.8)
        out = []
        for row in rows:
            share = filters.seed_leakage(row[self.params["field"]], ctx.seed_texts)
            if share > limit:
                stats.drop(row, f"{share:.0%} copied from a seed example")
            else:
                out.append(row)
        return out
