"""The blocks a pipeline spec is made of, registered by the names schemas/pipeline.schema.json enumerates.

A block takes the rows of one unit of work (dicts of fields: question, answer, context, chunk, ...) and
returns the rows that go on. Teacher blocks (generate, judge) send every row's request at once, so the
teacher's concurrency cap, not the pipeline, sets how busy the server is. Every dropped row is counted
against the block that dropped it, with a few examples, for the yield report.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labcycle.tasks.generate import filters
from labcycle.tasks.generate.spec import BlockSpec
from labcycle.tasks.teacher.base import PromptTooLong, Sampling, Structured, parse_choice, parse_json

Row = dict[str, Any]
MAX_EXAMPLES = 3  # dropped rows kept per block for the report


@dataclass
class BlockStats:
    rows_in: int = 0
    rows_out: int = 0
    dropped: int = 0
    parse_failures: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def drop(self, row: Row, reason: str) -> None:
        self.dropped += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"reason": reason, **{k: _short(v) for k, v in row.items() if not k.startswith("_") and k != "chunk"}})

    def merge(self, other: dict[str, Any]) -> None:
        for key in _COUNTERS:
            setattr(self, key, getattr(self, key) + other.get(key, 0))
        self.examples.extend(other.get("examples", [])[: MAX_EXAMPLES - len(self.examples)])

    def count(self, completion: Any) -> None:
        self.requests += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens

    def to_json(self) -> dict[str, Any]:
        return {**{key: getattr(self, key) for key in _COUNTERS}, "examples": self.examples}


_COUNTERS = ("rows_in", "rows_out", "dropped", "parse_failures", "requests", "prompt_tokens", "completion_tokens")


def _short(value: Any, limit: int = 300) -> Any:
    return value[:limit] + "…" if isinstance(value, str) and len(value) > limit else value


@dataclass
class UnitContext:
    """What the blocks of one unit of work share: the teacher, the leaf, the unit's seed examples."""

    teacher: Any
    render: Callable[[str, dict[str, Any]], str]  # (template name, variables) -> text
    leaf: dict[str, Any]
    examples: list[dict[str, Any]]
    seed: int  # the unit's sampling seed: a resumed unit asks exactly what it asked before
    seed_texts: list[str]  # every seed question/answer/context, for dedup and leakage checks
    dedup: dict[str, filters.NearDuplicateIndex]  # per dedup block, shared by all units of the leaf
    stats: dict[str, BlockStats]
    max_tokens_cap: int | None = None

    def variables(self, row: Row) -> dict[str, Any]:
        return {"leaf": self.leaf, "examples": self.examples, **{k: v for k, v in row.items() if not k.startswith("_")}}

    def messages(self, template: str, row: Row, extra: dict[str, Any] | None = None) -> list[dict[str, str]]:
        variables = {**self.variables(row), **(extra or {})}
        out = []
        system = self.render("system.j2", variables)
        if system is not None and system.strip():
            out.append({"role": "system", "content": system.strip()})
        out.append({"role": "user", "content": self.render(template, variables).strip()})
        return out

    def sampling(self, params: dict[str, Any], defaults: dict[str, Any], salt: int) -> Sampling:
        s = {**defaults, **params.get("sampling", {})}
        max_tokens = s.get("max_tokens", 512)
        if self.max_tokens_cap:
            max_tokens = min(max_tokens, self.max_tokens_cap)
        return Sampling(temperature=s.get("temperature", 0.7), top_p=s.get("top_p", 1.0), max_tokens=max_tokens,
                        n=s.get("n", 1), seed=(self.seed * 1_000_003 + salt) % 2**31)


class Block:
    def __init__(self, spec: BlockSpec):
        self.name = spec.name
        self.params = spec.params

    async def run(self, rows: list[Row], ctx: UnitContext) -> list[Row]:
        stats = ctx.stats.setdefault(self.name, BlockStats())
        stats.rows_in += len(rows)
        out = await self.apply(rows, ctx, stats)
        stats.rows_out += len(out)
        return out

    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        raise NotImplementedError


# Upper bounds on generated JSON strings: long enough for any real question or answer, short enough that a
# constrained answer always closes its JSON before max_tokens.
_MAX_CHARS = {"question": 1000, "answer": 4000, "context": 4000}


class Generate(Block):
    """Ask the teacher for new content per row; `parse` turns each sample into zero or more rows.

    A `json_list` block also asks for that shape with structured outputs (where the teacher supports them),
    so even a weak teacher returns parseable lists; the tolerant parser covers teachers that don't.
    """

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
                stats.drop(row, "prompt longer than the teacher's context")
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


_JSON_KEY = re.compile(r'"\w+"\s*:')  # the text is (the start of) a JSON object


class Judge(Block):
    """Teacher-as-judge: a verdict from a fixed choice list, or an integer score; keeps rows that pass."""

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
        return {"type": "object", "properties": {"reason": {"type": "string", "maxLength": reason_max}, **key},
                "required": ["reason", *key], "additionalProperties": False}

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
                completion = await ctx.teacher.chat(ctx.messages(self.params["template"], row), sampling, structured)
            except PromptTooLong:
                stats.drop(row, "prompt longer than the teacher's context")
                return None
            stats.count(completion)
            value = self._read(completion.texts[0] if completion.texts else "")
            if value is None:
                stats.parse_failures += 1
                stats.drop(row, "unreadable judgement")
                return None
            if not self._keep(value):
                stats.drop(row, f"judged {value}")
                return None
            return {**row, "_scores": {**row.get("_scores", {}), self.name: value}}

        results = await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))
        return [r for r in results if r is not None]


class Dedup(Block):
    """Drops rows whose field nearly repeats a seed example or a row already kept for this leaf."""

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


class Length(Block):
    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        lo, hi = self.params.get("min_words", 0), self.params.get("max_words")
        out = []
        for row in rows:
            if filters.length_ok(row[self.params["field"]], lo, hi):
                out.append(row)
            else:
                stats.drop(row, f"{len(row[self.params['field']].split())} words, outside [{lo}, {hi or '∞'}]")
        return out


class Refusal(Block):
    async def apply(self, rows: list[Row], ctx: UnitContext, stats: BlockStats) -> list[Row]:
        out = []
        for row in rows:
            if filters.is_refusal(row[self.params["field"]]):
                stats.drop(row, "refusal or assistant boilerplate")
            else:
                out.append(row)
        return out


class SeedLeakage(Block):
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


REGISTRY: dict[str, type[Block]] = {
    "generate": Generate,
    "judge": Judge,
    "dedup": Dedup,
    "length": Length,
    "refusal": Refusal,
    "seed_leakage": SeedLeakage,
}


def build(spec: BlockSpec) -> Block:
    return REGISTRY[spec.type](spec)


def hash_text(text: str) -> int:
    """A small stable hash (Python's hash() changes per process, which would break resumed seeds)."""
    import zlib

    return zlib.crc32(text.encode()) % 100_003
