"""The `generate` block: new content from the teacher, parsed into rows."""

from __future__ import annotations

import asyncio
from typing import Any

from labcycle.tasks.generate.blocks.base import Block, BlockStats, Row, UnitContext, hash_text
from labcycle.teacher.base import PromptTooLong, Structured, parse_json

# Upper bounds on generated JSON strings: long enough for any real question or answer, short enough that a
# constrained answer always closes its JSON before max_tokens.
_MAX_CHARS = {"question": 1000, "answer": 4000, "context": 4000}


class Generate(Block):
    """Ask the teacher for new content per row; `parse` turns each sample into zero or more rows.

    A `json_list` block also asks for that shape with structured outputs (where the teacher supports them),
    so even a weak teacher returns parseable lists; the tolerant parser covers teachers that don't.
    """

    inputs = ("{template}",)
    outputs = ("{fields}",)

    def _structured(self, fields: list[str], num: int, cap: int | None) -> Structured | None:
        if self.params["parse"] != "json_list":
            return None
        # With max_tokens capped (smoke runs on tiny models) every string must fit the cap's share, or a
        # random model never closes the JSON; real runs keep the generous bounds.
        share = max(8, cap // (num * len(fields) + 1)) if cap else None

        def text(f: str) -> dict[str, Any]:
            limit = _MAX_CHARS.get(f, 2000)
            return {"type": "string", "minLength": 1, "maxLength": min(limit, share) if share else limit}
        item = text(fields[0]) if len(fields) == 1 else {
            "type": "object", "properties": {f: text(f) for f in fields}, "required": fields, "additionalProperties": False}
        return Structured(json_schema={"type": "array", "minItems": 1, "maxItems": num, "items": item})

    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        fields = self.params["fields"]
        num = self.params.get("num", 1)
        structured = self._structured(fields, num, ctx.max_tokens_cap)

        async def one(i: int, row: Row) -> list[Row]:
            sampling = ctx.sampling(self.params, {"temperature": 0.7, "max_tokens": 512}, salt=hash_text(self.name) + i)
            try:
                completion = await ctx.teacher.chat(ctx.messages(self.params["template"], row, {"num": num}), sampling, structured)
            except PromptTooLong:
                stats.drop_too_long(row)
                return []
            stats.count(completion)
            produced: list[Row] = []
            for text in completion.texts:
                items = self._parse(text, fields)
                if items is None:
                    stats.parse_failures += 1
                    stats.drop({**row, "output": text}, "unparsable output")
                    continue
                produced.extend({**row, **item} for item in items)
            return produced

        results = await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))
        return [r for group in results for r in group]

    def _parse(self, text: str, fields: list[str]) -> list[Row] | None:
        if self.params["parse"] == "text":
            value = text.strip()
            return [{fields[0]: value}] if value else None
        data = parse_json(text)
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            return None
        items = []
        for item in data:
            if isinstance(item, str) and len(fields) == 1 and item.strip():
                items.append({fields[0]: item.strip()})
            elif isinstance(item, dict) and all(isinstance(item.get(f), str) and item[f].strip() for f in fields):
                items.append({f: item[f].strip() for f in fields})
        return items or None
