"""What every block shares: the row type, the per-block counters of the yield report (BlockStats), the
unit of work's context (UnitContext), the Block base class, and the helpers several blocks use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labcycle.tasks.generate import filters
from labcycle.tasks.generate.spec import BlockSpec
from labcycle.teacher.base import Sampling, parse_json

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
    """One step of a pipeline, registered by its type name (the module it lives in is named the same).

    `inputs` names the row keys the block reads and `outputs` the keys it adds or changes; a filter that
    only drops rows has no outputs. A plain name is that key; `{param}` stands for the key or keys the
    spec's parameter `param` names (its default when the spec leaves it out), and `{template}` for the
    row fields the block's prompt template reads."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

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


def hash_text(text: str) -> int:
    """A small stable hash (Python's hash() changes per process, which would break resumed seeds)."""
    import zlib

    return zlib.crc32(text.encode()) % 100_003
