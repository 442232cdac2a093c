"""The `lexical_support` block: judge-free grounding by shared content words (docs/safety.md)."""

from __future__ import annotations

from labcycle.tasks.generate import filters
from labcycle.tasks.generate.blocks.base import Block, BlockStats, Row, UnitContext, _source


class LexicalSupport(Block):
    """Judge-free grounding: drops a row when less than `min_support` of its answer's content words occur in
    its source (filters.lexical_support). Cheap and deterministic, but blind to paraphrase and negation."""

    inputs = ("{field}", "{source}")
    outputs = ()

    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        field_, least = self.params.get("field", "answer"), self.params.get("min_support", 0.5)
        out = []
        for row in rows:
            name, source = _source(row, self.params.get("source"))
            if not source.strip():
                stats.drop(row, f"no {name} to check the {field_} against")
                continue
            share, missing = filters.lexical_support(row[field_], source)
            if share < least:
                stats.drop(row, f"{share:.0%} of the {field_}'s content words are in the {name}, below {least:.0%};"
                                f" missing: {', '.join(missing[:8])}")
            else:
                out.append(row)
        return out
