"""The blocks a pipeline spec is made of, registered by the names schemas/pipeline.schema.json enumerates.

A block takes the rows of one unit of work (dicts of fields: question, answer, context, chunk, ...) and
returns the rows that go on. Teacher blocks (generate, judge) send every row's request at once, so the
teacher's concurrency cap, not the pipeline, sets how busy the server is. Every dropped row is counted
against the block that dropped it, with a few examples, for the yield report; a row a block changes but
keeps (personal data redacted) is counted apart, as `redacted`.

Generation-time safety (docs/safety.md): `grounding_judge` and `lexical_support` drop answers their source
(the chunk or context) does not support; `safety_judge` drops harmful samples; `pii` redacts or drops
personal data.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labcycle.tasks.generate import filters
from labcycle.tasks.generate.spec import BlockSpec
from labcycle.teacher.base import PromptTooLong, Sampling, Structured, parse_choice, parse_json

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
    redacted: int = 0  # rows kept with some of their text replaced (pii)
    too_long: int = 0  # rows dropped because the prompt was longer than the teacher's context
    examples: list[dict[str, Any]] = field(default_factory=list)  # dropped rows
    redacted_examples: list[dict[str, Any]] = field(default_factory=list)  # rows as they were kept, redacted

    def drop(self, row: Row, reason: str) -> None:
        self.dropped += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(_example(row, reason))

    def drop_too_long(self, row: Row) -> None:
        self.too_long += 1
        self.drop(row, "prompt longer than the teacher's context")

    def redact(self, row: Row, reason: str) -> None:
        self.redacted += 1
        if len(self.redacted_examples) < MAX_EXAMPLES:
            self.redacted_examples.append(_example(row, reason))

    def merge(self, other: dict[str, Any]) -> None:
        for key in _COUNTERS:
            setattr(self, key, getattr(self, key) + other.get(key, 0))
        self.examples.extend(other.get("examples", [])[: MAX_EXAMPLES - len(self.examples)])
        self.redacted_examples.extend(other.get("redacted_examples", [])[: MAX_EXAMPLES - len(self.redacted_examples)])

    def count(self, completion: Any) -> None:
        self.requests += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens

    def to_json(self) -> dict[str, Any]:
        return {**{key: getattr(self, key) for key in _COUNTERS}, "examples": self.examples,
                "redacted_examples": self.redacted_examples}


_COUNTERS = ("rows_in", "rows_out", "dropped", "parse_failures", "requests", "prompt_tokens", "completion_tokens", "redacted",
             "too_long")


def _example(row: Row, reason: str) -> dict[str, Any]:
    """A row as the report shows it: no private fields, no chunk (long, and in the documents anyway), long
    texts shortened, and personal data redacted, so yield.json never repeats it whatever the pipeline."""
    def show(v: Any) -> Any:
        return _short(filters.redact_pii(v)[0]) if isinstance(v, str) else v
    return {"reason": reason, **{k: show(v) for k, v in row.items() if not k.startswith("_") and k != "chunk"}}


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


_JSON_KEY = re.compile(r'"\w+"\s*:')  # the text is (the start of) a JSON object


class Judge(Block):
    """Teacher-as-judge: a verdict from a fixed choice list, or an integer score; keeps rows that pass.

    The grounding and safety judges below are this block with a fixed verdict and their own prompt: they
    override the hooks `_details` (more keys asked for between the reason and the decision), `_variables`
    (more template variables) and `_judge` (the decision and the reason a row is dropped)."""

    def _details(self, cap: int | None) -> dict[str, Any]:
        return {}

    def _variables(self) -> dict[str, Any]:
        return {}

    def _judge(self, text: str) -> tuple[Any, str | None] | None:
        """(the judgement recorded in the row's judge scores, why the row is dropped or None to keep it), or
        None when no judgement can be read from `text`."""
        value = self._read(text)
        if value is None:
            return None
        return value, None if self._keep(value) else f"judged {value}"

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
        details = self._details(cap)
        return {"type": "object", "properties": {"reason": {"type": "string", "maxLength": reason_max}, **details, **key},
                "required": ["reason", *details, *key], "additionalProperties": False}

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
                messages = ctx.messages(self.params["template"], row, self._variables())
                completion = await ctx.teacher.chat(messages, sampling, structured)
            except PromptTooLong:
                stats.drop_too_long(row)
                return None
            stats.count(completion)
            judged = self._judge(completion.texts[0] if completion.texts else "")
            if judged is None:
                stats.parse_failures += 1
                stats.drop(row, "unreadable judgement")
                return None
            value, why = judged
            if why is not None:
                stats.drop(row, why)
                return None
            return {**row, "_scores": {**row.get("_scores", {}), self.name: value}}

        results = await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))
        return [r for r in results if r is not None]


def _judge_reason(text: str) -> str:
    """The reason a judge wrote in its JSON answer, shortened for the report; "" when there is none."""
    data = parse_json(text)
    reason = data.get("reason") if isinstance(data, dict) else None
    return _short(reason.strip(), 200) if isinstance(reason, str) else ""


def _source(row: Row, name: str | None) -> tuple[str, str]:
    """(field name, text) of what a row's answer must rest on: the `source` field a block names, else the
    document chunk (knowledge), else the context (grounded skills)."""
    if name is None:
        name = "chunk" if row.get("chunk") else "context"
    value = row.get(name)
    return name, value if isinstance(value, str) else ""


class GroundingJudge(Judge):
    """Teacher-as-judge of grounding: is everything the answer claims supported by the row's source (the
    chunk for knowledge, the context for grounded skills)? The prompt asks for {"reason", "verdict":
    "YES" | "NO"}; NO is dropped, with the judge's reason. A row without a source is dropped unasked."""

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


# What the safety judge checks for unless a spec lists its own categories.
SAFETY_CATEGORIES = ("violence", "self-harm", "hate speech", "harassment", "sexual content", "illegal activity", "weapons",
                     "malicious code", "privacy violation")


class SafetyJudge(Judge):
    """Teacher-as-judge of harm: does the sample (question and answer, and a grounded skill's context) fall
    under any of the block's `categories`? The prompt asks for {"reason", "categories": [...], "verdict":
    "SAFE" | "UNSAFE"}; a row is dropped when the verdict is UNSAFE or any category is named (a judge that
    names a harm and still says SAFE is not trusted), and when the judgement cannot be read."""

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


class LexicalSupport(Block):
    """Judge-free grounding: drops a row when less than `min_support` of its answer's content words occur in
    its source (filters.lexical_support). Cheap and deterministic, but blind to paraphrase and negation."""

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


class Pii(Block):
    """Personal data (filters.find_pii) in the row's `fields`: `action: redact` (the default) replaces each
    piece with a placeholder such as [EMAIL] and keeps the row; `action: drop` drops the row. Its report
    examples show the row redacted with this block's kinds either way."""

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
    "grounding_judge": GroundingJudge,
    "lexical_support": LexicalSupport,
    "safety_judge": SafetyJudge,
    "pii": Pii,
}
# The block types that send requests to the teacher.
TEACHER_TYPES = frozenset(name for name, cls in REGISTRY.items() if issubclass(cls, (Generate, Judge)))
# The block types that check an answer against its source: a freeform skill has none to offer.
SOURCE_TYPES = frozenset({"grounding_judge", "lexical_support"})


def build(spec: BlockSpec) -> Block:
    return REGISTRY[spec.type](spec)


def hash_text(text: str) -> int:
    """A small stable hash (Python's hash() changes per process, which would break resumed seeds)."""
    import zlib

    return zlib.crc32(text.encode()) % 100_003
