"""The `pii` block: personal data redacted, or its rows dropped (docs/safety.md)."""

from __future__ import annotations

from labcycle.tasks.generate import filters
from labcycle.tasks.generate.blocks.base import Block, BlockStats, Row, UnitContext


class Pii(Block):
    """Personal data (filters.find_pii) in the row's `fields`: `action: redact` (the default) replaces each
    piece with a placeholder such as [EMAIL] and keeps the row; `action: drop` drops the row. Its report
    examples show the row redacted with this block's kinds either way."""

    inputs = ("{fields}",)
    outputs = ("{fields}",)

    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        fields = self.params.get("fields", ["question", "answer"])
        kinds = self.params.get("kinds", filters.DEFAULT_PII_KINDS)
        out = []
        for row in rows:
            clean, found = dict(row), []
            for f in fields:
                if isinstance(row.get(f), str):
                    clean[f], matches = filters.redact_pii(row[f], kinds)
                    if matches:
                        found.append(f"{', '.join(dict.fromkeys(m.kind for m in matches))} in {f}")
            if not found:
                out.append(row)
            elif self.params.get("action", "redact") == "drop":
                stats.drop(clean, "; ".join(found))
            else:
                stats.redact(clean, "; ".join(found))
                out.append(clean)
        return out
