"""Run a pipeline spec over one leaf: rounds of units until the target survives filtering, with a
journal so that a killed run resumes where it stopped.

A *unit* is one chunk (knowledge) or one draw of seed examples (skills) pushed through every block.
Units have deterministic ids (`r<round>-u<index>`) and sampling seeds derived from the leaf hash, so a
resumed unit asks the teacher exactly what it asked before. When a unit finishes, its kept records and
its per-block counts are appended to `journal.jsonl` as ONE line, written and fsync'ed at once: a unit
is either wholly in the journal or not at all, a torn last line (the process died mid-write) is cut
off at the next start, and no sample can be written twice. Resuming skips every journaled unit.

When the target is reached or the round budget is spent, `samples.jsonl` (chat records, valid under
schemas/record.schema.json) and `yield.json` (what each block removed, with examples) are written
atomically; `yield.json` marks the leaf complete, and a complete leaf is never generated again.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labcycle.io import write_json, write_jsonl
from labcycle.leaves import LeafInput, seed_examples
from labcycle.tasks.generate import blocks as block_types
from labcycle.tasks.generate.blocks import BlockStats, UnitContext
from labcycle.tasks.generate.spec import BlockSpec, PipelineSpec

JOURNAL = "journal.jsonl"
SAMPLES = "samples.jsonl"
YIELD = "yield.json"
# Units admitted per request slot of the teacher (see generate_leaf): enough that the teacher stays full
# through a round's tail of long multi-block chains.
UNITS_PER_REQUEST_SLOT = 8


@dataclass(frozen=True)
class GenerationSettings:
    samples_per_seed: int = 30  # the target is this times the leaf's seed examples
    max_rounds: int = 3  # rounds of units before giving up on the target
    max_units_per_round: int = 64
    max_tokens_cap: int | None = None  # caps every block's max_tokens (smoke runs on tiny models)
    # A later cycle's plan (tasks/gate/plan.py): another draw of sampling seeds, stricter scored judges.
    seed_offset: int = 0
    judge_strictness: int = 0  # added to every scored judge's keep_at_least, up to its scale's maximum

    def to_json(self) -> dict[str, Any]:
        data = {"samples_per_seed": self.samples_per_seed, "max_rounds": self.max_rounds,
                "max_units_per_round": self.max_units_per_round, "max_tokens_cap": self.max_tokens_cap}
        # Only when set, so that the first cycle's cache keys stay what they were before plans existed.
        if self.seed_offset:
            data["seed_offset"] = self.seed_offset
        if self.judge_strictness:
            data["judge_strictness"] = self.judge_strictness
        return data


@dataclass
class LeafResult:
    leaf_id: str
    target: int
    kept: int
    units: int
    rounds: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    resumed_units: int
    wall_s: float
    work_dir: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- the journal --------------------------------------------------------------------------------------


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Finished units; a torn last line from a crash is dropped and cut from the file."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    entries, good = [], 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good != len(raw):
        with path.open("r+b") as f:
            f.truncate(good)
    return entries


def append_journal(path: Path, entry: dict[str, Any]) -> None:
    line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# --- seeds and templates ------------------------------------------------------------------------------


def leaf_variables(leaf: LeafInput) -> dict[str, Any]:
    q = leaf.qna
    return {"id": leaf.id, "kind": leaf.kind, "domain": q.get("domain", ""), "task_description": q.get("task_description", ""),
            "document_outline": q.get("document_outline", ""), "created_by": q.get("created_by", "")}


def make_renderer(spec: PipelineSpec) -> Callable[[str, dict[str, Any]], str | None]:
    import jinja2

    env = jinja2.Environment(loader=jinja2.DictLoader(spec.templates), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)

    def render(name: str, variables: dict[str, Any]) -> str | None:
        if name not in spec.templates:
            return None
        return env.get_template(name).render(**variables)

    return render


def unit_seed(leaf_hash: str, unit: str, offset: int = 0) -> int:
    import hashlib

    salt = f":{offset}" if offset else ""
    return int.from_bytes(hashlib.sha256(f"{leaf_hash}:{unit}{salt}".encode()).digest()[:4], "big") % 2**31


def stricter(block: BlockSpec, strictness: int) -> BlockSpec:
    """A scored judge keeping `strictness` points more (never above its scale); other blocks as they are."""
    score = block.params.get("score") if block.type == "judge" else None
    if not strictness or not score:
        return block
    keep = min(score["max"], score["keep_at_least"] + strictness)
    return BlockSpec(block.name, block.type, {**block.params, "score": {**score, "keep_at_least": keep}})


# --- records ------------------------------------------------------------------------------------------


def to_record(leaf: LeafInput, spec: PipelineSpec, teacher_model: str, unit: str, round_: int, k: int, seed: int, row: dict[str, Any]) -> dict[str, Any]:
    user = row["question"]
    if leaf.kind == "grounded_skill" and row.get("context"):
        user = f"{row['context']}\n\n{row['question']}"
    return {
        "id": f"{leaf.hash[:12]}-{unit}-{k}",
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": row["answer"]}],
        "metadata": {
            "leaf_id": leaf.id,
            "kind": leaf.kind,
            "leaf_hash": leaf.hash,
            "source_chunk": row.get("_source"),
            "context": row.get("context") if leaf.kind != "knowledge" else row.get("chunk"),
            "judge_scores": row.get("_scores", {}),
            "teacher_model": teacher_model,
            "pipeline": spec.name,
            "pipeline_hash": spec.digest,
            "template_hashes": spec.template_hashes(),
            "sampling_seed": seed,
            "round": round_,
            "unit": unit,
        },
    }


# --- the run ------------------------------------------------------------------------------------------


def _advice(target: int, kept: int, stats: dict[str, BlockStats]) -> str | None:
    if kept >= target:
        return None
    too_long = sum(s.too_long for s in stats.values())
    if too_long and too_long * 2 >= sum(s.dropped for s in stats.values()):
        # Better seeds or more rounds cannot fix a prompt the teacher cannot read.
        return (f"{kept} of {target} samples: {too_long} prompts were longer than the teacher's context; serve the "
                "teacher with a longer context (vLLM --max-model-len; generation.teacher.max_model_len for the "
                "in-process engine) or lower chunking.max_words (chunking.max_tokens with a tokenizer)")
    worst = max(stats.items(), key=lambda kv: kv[1].dropped, default=None)
    if worst is None or worst[1].dropped == 0:
        return f"{kept} of {target} samples: the teacher produced too little; raise generation.max_rounds or check the teacher"
    name, s = worst
    return (f"{kept} of {target} samples: block '{name}' removed the most ({s.dropped} of {s.rows_in} rows"
            f"{f', {s.parse_failures} unreadable' if s.parse_failures else ''}); see its examples, then improve the"
            " seeds or prompts, use a stronger teacher, or raise generation.max_rounds")


async def generate_leaf(leaf: LeafInput, spec: PipelineSpec, teacher: Any, settings: GenerationSettings, work_dir: Path,
                        progress: Callable[[str, int, int], None] | None = None) -> LeafResult:
    """Generate samples for one leaf into work_dir (journal, samples.jsonl, yield.json); resumable."""
    start = time.monotonic()
    if (done_report := read_complete(work_dir)) is not None:
        # A complete leaf is never generated again (its target was decided when it ran).
        return LeafResult(**{k: done_report[k] for k in LeafResult.__dataclass_fields__})
    work_dir.mkdir(parents=True, exist_ok=True)
    journal_path = work_dir / JOURNAL
    entries = read_journal(journal_path)
    done = {e["unit"]: e for e in entries}
    resumed = len(done)

    examples = seed_examples(leaf)
    n_seeds = len(leaf.qna.get("seed_examples", [])) or 1
    target = settings.samples_per_seed * n_seeds
    seed_texts = [t for ex in examples for t in (ex["question"], ex["answer"]) if t]
    render = make_renderer(spec)
    pipeline = [block_types.build(stricter(b, settings.judge_strictness)) for b in spec.blocks]
    dedup: dict[str, Any] = {}
    kept = sum(len(e["records"]) for e in entries)

    # Rebuild the near-duplicate indexes from what earlier units kept, so a resumed run dedups the same way.
    if entries:
        probe = UnitContext(teacher=None, render=render, leaf={}, examples=[], seed=0, seed_texts=seed_texts, dedup=dedup, stats={})
        for b in pipeline:
            if isinstance(b, block_types.Dedup):
                await b.run([], probe)
                for e in entries:
                    for i, r in enumerate(e.get("rows", [])):
                        dedup[b.name].add(f"{e['unit']}:{i}", r.get(b.params["field"], ""))

    lock = asyncio.Lock()
    # The teacher's request limit is the only limit on the teacher. Units are admitted well beyond it, so
    # that while one unit parses, filters or waits on its slowest request, others have requests queued to
    # take every free slot: with one unit per request slot, a round ends with a few long chains running
    # one request at a time and the rest of the teacher idle. The bound (a multiple of the request
    # limit) keeps what a killed run loses, and what a huge round holds in memory, to that many units.
    in_flight_units = asyncio.Semaphore(unit_admission(teacher))

    async def run_unit(unit: str, round_: int, chunk: dict[str, Any] | None) -> None:
        nonlocal kept
        async with in_flight_units:
            seed = unit_seed(leaf.hash, unit, settings.seed_offset)
            rnd = random.Random(seed)
            picks = rnd.sample(examples, min(spec.examples_per_prompt, len(examples)))
            stats: dict[str, BlockStats] = {}
            ctx = UnitContext(teacher=teacher, render=render, leaf=leaf_variables(leaf), examples=picks, seed=seed,
                              seed_texts=seed_texts, dedup=dedup, stats=stats, max_tokens_cap=settings.max_tokens_cap)
            rows: list[dict[str, Any]] = [{"chunk": chunk["text"], "_source": {k: chunk[k] for k in ("source", "start", "end")}} if chunk else {}]
            for b in pipeline:
                rows = await b.run(rows, ctx)
                if not rows:
                    break
            records = [to_record(leaf, spec, teacher.model, unit, round_, k, seed, row) for k, row in enumerate(rows)]
            entry = {"unit": unit, "round": round_, "records": records,
                     "rows": [{k: v for k, v in r.items() if not k.startswith("_") and k != "chunk"} for r in rows],
                     "stats": {name: s.to_json() for name, s in stats.items()}}
        # Journal outside the unit's slot (the next unit starts while this one is written), and in a thread:
        # an fsync takes milliseconds, and on the event loop it would stall every request in flight.
        async with lock:
            await asyncio.to_thread(append_journal, journal_path, entry)
            done[unit] = entry
            kept += len(records)
        if progress:
            progress(leaf.id, kept, target)

    rounds = max((e["round"] for e in entries), default=-1) + 1
    for round_ in range(settings.max_rounds):
        if kept >= target:
            break
        if spec.unit == "chunk":
            if not leaf.chunks:
                break
            # Each round takes the next chunks, wrapping around, so a capped round never starves later chunks.
            n, m = len(leaf.chunks), min(settings.max_units_per_round, len(leaf.chunks))
            units = [(f"r{round_}-u{i}", leaf.chunks[(round_ * m + i) % n]) for i in range(m)]
        else:
            finished = [e for e in done.values()]
            per_unit = (sum(len(e["records"]) for e in finished) / len(finished)) if finished else _optimistic_yield(spec)
            count = min(settings.max_units_per_round, math.ceil((target - kept) / max(per_unit, 0.25)))
            units = [(f"r{round_}-u{i}", None) for i in range(count)]
        todo = [(u, c) for u, c in units if u not in done]
        results = await asyncio.gather(*(run_unit(u, round_, c) for u, c in todo), return_exceptions=True)
        rounds = max(rounds, round_ + 1)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]  # every unit that finished is journaled: a re-run resumes from there

    # Final outputs, derived from the journal in unit order (deterministic whatever finished first).
    ordered = sorted(done.values(), key=lambda e: (e["round"], int(e["unit"].split("-u")[1])))
    records = [r for e in ordered for r in e["records"]]
    totals: dict[str, BlockStats] = {b.name: BlockStats() for b in pipeline}
    for e in ordered:
        for name, s in e["stats"].items():
            totals.setdefault(name, BlockStats()).merge(s)
    write_jsonl(work_dir / SAMPLES, records)
    result = LeafResult(
        leaf_id=leaf.id, target=target, kept=len(records), units=len(ordered), rounds=rounds,
        requests=sum(s.requests for s in totals.values()),
        prompt_tokens=sum(s.prompt_tokens for s in totals.values()),
        completion_tokens=sum(s.completion_tokens for s in totals.values()),
        resumed_units=resumed, wall_s=round(time.monotonic() - start, 3), work_dir=str(work_dir),
    )
    write_json(work_dir / YIELD, {
        **result.to_json(),
        "pipeline": spec.name,
        "below_target": len(records) < target,
        "advice": _advice(target, len(records), totals),
        "blocks": {name: s.to_json() for name, s in totals.items()},
    })
    return result


def unit_admission(teacher: Any) -> int:
    """Units of one leaf in progress at once: UNITS_PER_REQUEST_SLOT per request the teacher may have in flight."""
    return max(4, UNITS_PER_REQUEST_SLOT * getattr(teacher, "max_concurrency", 32))


def _optimistic_yield(spec: PipelineSpec) -> float:
    """Rows one unit could yield if nothing were filtered: the product of what each generate block asks."""
    total = 1.0
    for b in spec.blocks:
        if b.type == "generate":
            total *= b.params.get("num", 1) * b.params.get("sampling", {}).get("n", 1)
    return total


def read_complete(work_dir: Path) -> dict[str, Any] | None:
    """The yield report of a leaf that finished, else None."""
    path = work_dir / YIELD
    return json.loads(path.read_text()) if path.exists() else None
