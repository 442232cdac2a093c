"""The `dedup` block: near-duplicates of a seed or of a row already kept are dropped."""

from __future__ import annotations

from labcycle.tasks.generate import filters
from labcycle.tasks.generate.blocks.base import Block, BlockStats, Row, UnitContext


class Dedup(Block):
    """Drops rows whose field nearly repeats a seed example or a row already kept for this leaf."""

    inputs = ("{field}",)
    outputs = ()

    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        index = ctx.dedup.get(self.name)
        if index is None:
            index = ctx.dedup[self.name] = filters.NearDuplicateIndex(threshold=self.params.get("threshold", 0.8))
            for i, text in enumerate(ctx.seed_texts):
                index.add(f"seed:{i}", text)
        out = []
        for i, row in enumerate(rows):
            text = row[self.params["field"]]
            hit = index.find(text)
            if hit is not None:
                stats.drop(row, f"near-duplicate of {hit[0]} (Jaccard {hit[1]:.2f})")
                continue
            index.add(f"{ctx.seed}:{self.name}:{i}", text)
            out.append(row)
        return out
