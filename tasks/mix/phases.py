"""The two phase sets: knowledge Q&A and their RAFT-style grounded copies (phase 1); skills samples and a
replay of phase 1 (phase 2); user datasets by weight; min_share upsampling.

Every random choice draws from its own random.Random seeded from (recipe seed, purpose, name), over
inputs sorted by leaf id and record id, so the same inputs and seed give the same rows in the same order.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import PurePath
from typing import Any

from labcycle.tasks.mix.recipe import PHASES, Grounded, Recipe, SkillsMix, UserDataset

SKILL_KINDS = ("freeform_skill", "grounded_skill")
Row = dict[str, Any]


@dataclass(frozen=True)
class Fit:
    """The length a training sample may have: `length(messages)` in the unit of `max_length` (the recipe's
    tokenizer with its chat template, else words: card.length_counter)."""
    length: Callable[[list[dict[str, Any]]], int]
    max_length: int


def _rng(seed: int, *purpose: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(json.dumps([seed, *purpose]).encode()).digest()[:8], "big"))


def _half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def _shared_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """A generated record's metadata as it may leave the machine: a teacher named by a local folder is named by
    the folder's name alone."""
    teacher = meta.get("teacher_model")
    if isinstance(teacher, str) and PurePath(teacher).is_absolute():
        meta = {**meta, "teacher_model": PurePath(teacher).name}
    return meta


def _row(rec: dict[str, Any], source: str, **changes: Any) -> Row:
    """A generated record as a mixed row; `metadata` is kept as JSON text, the form InstructLab's mixer writes
    (and the one type a dataset column can hold for every kind of sample)."""
    row = {"id": rec["id"], "messages": rec["messages"], "source": source, "leaf_id": rec["metadata"]["leaf_id"],
           "unmask": False, "metadata": json.dumps(_shared_metadata(rec["metadata"]), ensure_ascii=False)}
    return {**row, **changes}


# The columns of a user dataset row a mixed row keeps as its own; the others go into its metadata, as
# InstructLab's mixer moves them (it keeps id, messages, metadata and unmask).
_OWN_COLUMNS = ("messages", "unmask", "metadata")


def user_metadata(row: dict[str, Any]) -> str:
    """A user dataset row's metadata as JSON text: its `metadata` (an object, or JSON text of one) with the
    row's other columns (its own id among them) added."""
    meta = row.get("metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = {"metadata": meta}
    meta = dict(meta) if isinstance(meta, dict) else ({} if meta is None else {"metadata": meta})
    for k, v in row.items():
        if k not in _OWN_COLUMNS:
            meta[k] = v
    return json.dumps(meta, ensure_ascii=False, default=str)


def with_system_prompt(messages: list[dict[str, Any]], prompt: str | None) -> list[dict[str, Any]]:
    """The turns with `prompt` as the system turn, as InstructLab's mixer sets it: every system turn there is
    gets the prompt's text, else one is put first. None: the turns as they are."""
    if prompt is None:
        return messages
    if any(m["role"] == "system" for m in messages):
        return [{**m, "content": prompt} if m["role"] == "system" else m for m in messages]
    return [{"role": "system", "content": prompt}, *messages]


def _copies(rows: list[Row], target: int, rng: random.Random, tag: str) -> list[Row]:
    """`target` rows from `rows`: whole repeats, then a random part for the remainder; copy k > 1 gets #<tag>k."""
    def copy(row: Row, k: int) -> Row:
        return row if k == 1 else {**row, "id": f"{row['id']}#{tag}{k}"}

    whole, rest = divmod(target, len(rows)) if rows else (0, 0)
    out = [copy(row, k) for k in range(1, whole + 1) for row in rows]
    return out + [copy(rows[i], whole + 1) for i in sorted(rng.sample(range(len(rows)), rest))]


def _grounded(records: list[dict[str, Any]], g: Grounded, seed: int, fit: Fit | None = None) -> tuple[list[Row], int, int]:
    """The RAFT-style copies, and how many had distractors left out to fit `fit`'s max_length and how many
    are still longer (their source chunk alone is too long)."""
    pool = sorted({r["metadata"]["context"] for r in records if r["metadata"].get("context")})
    out, trimmed, too_long = [], 0, 0
    for rec in records:
        rng = _rng(seed, "grounded", rec["id"])
        source = rec["metadata"].get("context") or None
        others = [c for c in pool if c != source]
        # Without distractors the source chunk is the only document there is to show.
        with_source = rng.random() < g.source_probability or not others
        with_source = with_source and source is not None
        docs = rng.sample(others, min(len(others), g.documents_in_context - with_source))
        docs += [source] if with_source else []
        if not docs:
            continue
        rng.shuffle(docs)
        messages = _with_documents(rec["messages"], docs)
        if fit is not None and fit.length(messages) > fit.max_length:
            # A copy over max_length would be left out of training whole (its answer would be cut off), so it
            # shows fewer distractors instead: the longest goes first (the last shown of equal ones), never the
            # source chunk.
            while fit.length(messages) > fit.max_length and any(d != source for d in docs) and len(docs) > 1:
                docs.pop(max((len(d), i) for i, d in enumerate(docs) if d != source)[1])
                messages = _with_documents(rec["messages"], docs)
            trimmed += 1
            too_long += fit.length(messages) > fit.max_length
        out.append(_row(rec, "knowledge_grounded", id=f"{rec['id']}#grounded", messages=messages))
    return out, trimmed, too_long


def _with_documents(messages: list[dict[str, Any]], docs: list[str]) -> list[dict[str, Any]]:
    messages = [dict(m) for m in messages]
    user = next(m for m in messages if m["role"] == "user")
    shown = "\n\n".join(f"Document {i}:\n{d}" for i, d in enumerate(docs, 1))
    user["content"] = f"{shown}\n\nQuestion: {user['content']}"
    return messages


def _skills(records: list[dict[str, Any]], s: SkillsMix, seed: int, warnings: list[str]) -> list[Row]:
    by_leaf: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_leaf.setdefault(rec["metadata"]["leaf_id"], []).append(rec)
    out = []
    for leaf in sorted(by_leaf):
        recs, n = by_leaf[leaf], s.size_for(leaf)
        if n is not None and n < len(recs):
            recs = [recs[i] for i in sorted(_rng(seed, "skills", leaf).sample(range(len(recs)), n))]
        out += [_row(r, "skills") for r in recs]
    for leaf in sorted(set(s.leaves) - set(by_leaf)):
        warnings.append(f"skills.leaves names {leaf!r}, which has no generated skills samples; check the leaf id")
    return out


def upsample_targets(sizes: dict[str, int], min_share: float) -> dict[str, int]:
    """New sizes for the non-empty sources whose share is below min_share (the others are left out).

    With S the small sources and B the size of the rest, each small source grows to the smallest m with
    m >= min_share * (B + |S| m); growing them can push another source below the share, so S is grown
    until no source is left below it. Exact fractions keep 3% of 100 at 3, not 4."""
    live = {k: n for k, n in sizes.items() if n > 0}
    share = Fraction(repr(min_share))
    small = {k for k, n in live.items() if n < share * sum(live.values())}
    while small:
        rest = sum(n for k, n in live.items() if k not in small)
        if rest == 0 or len(small) * share >= 1:
            # The share cannot be met for all of them; the best that can be done is equal sizes.
            return {k: max(live.values()) for k, n in live.items() if n < max(live.values())}
        m = math.ceil(share * rest / (1 - len(small) * share))
        grown = {k for k, n in live.items() if k not in small and n < share * (rest + len(small) * m)}
        if not grown:
            return {k: max(m, live[k]) for k in small if live[k] < m}
        small |= grown
    return {}


def _phase(sources: dict[str, list[Row]], recipe: Recipe, phase: str) -> tuple[list[Row], dict[str, Any]]:
    """The phase's rows (in source order) after min_share upsampling, and what upsampling did."""
    targets = upsample_targets({k: len(v) for k, v in sources.items()}, recipe.min_share)
    rows, upsampled = [], {}
    for name, src in sources.items():
        if name in targets:
            upsampled[name] = {"from": len(src), "to": targets[name]}
            src = _copies(src, targets[name], _rng(recipe.seed, "upsample", phase, name), "up")
        rows += src
    return rows, upsampled


def phase_sets(records: list[dict[str, Any]], user: list[tuple[UserDataset, list[Row]]], recipe: Recipe,
               warnings: dict[str, list[str]], fit: Fit | None = None) -> dict[str, dict[str, Any]]:
    """Per phase: `rows` in source order, `shuffled` (the file order), sizes `before` upsampling, `upsampled`
    ({source: {from, to}}) and the user `datasets` it holds; problems worth a look go to `warnings`.
    fit: grounded copies longer than its max_length show fewer distractor documents (None: as drawn)."""
    knowledge = [r for r in records if r["metadata"]["kind"] == "knowledge"]
    grounded: list[Row] = []
    if recipe.knowledge.grounded.enabled:
        grounded, trimmed, too_long = _grounded(knowledge, recipe.knowledge.grounded, recipe.seed, fit)
        if trimmed and fit is not None:
            warnings["knowledge"].append(
                f"{trimmed} of {len(grounded)} grounded copies were longer than max_length ({fit.max_length}) with "
                f"{recipe.knowledge.grounded.documents_in_context} documents in context, and show fewer distractors"
                + (f"; {too_long} are longer even so (their source chunk is): lower chunking.max_words or raise "
                   "max_length" if too_long else ""))
    sources: dict[str, dict[str, list[Row]]] = {
        "knowledge": {
            "knowledge_qa": [_row(r, "knowledge_qa", unmask=recipe.knowledge.unmask) for r in knowledge]
                            if recipe.knowledge.qa else [],
            "knowledge_grounded": grounded,
        },
        "skills": {"skills": _skills([r for r in records if r["metadata"]["kind"] in SKILL_KINDS], recipe.skills,
                                     recipe.seed, warnings["skills"]), "replay": []},
    }
    datasets = []
    for d, rows in user:
        base = [{"id": f"{d.source}:{i}", "messages": r["messages"], "source": d.source, "leaf_id": None, "unmask": r["unmask"], "metadata": user_metadata(r)}
                for i, r in enumerate(rows)]
        target = _half_up(Fraction(repr(d.weight)) * len(base))
        sources[d.phase][d.source] = _copies(base, target, _rng(recipe.seed, "weight", d.phase, d.source), "w")
        datasets.append({"name": d.source, "phase": d.phase, "path": d.path, "rows": len(base), "weight": d.weight,
                         "samples": target})
    out = {}
    for phase in PHASES:
        if phase == "skills":
            first = out["knowledge"]["rows"]
            count = min(len(first), _half_up(Fraction(repr(recipe.skills.replay_fraction)) * len(first)))
            picked = sorted(_rng(recipe.seed, "replay").sample(range(len(first)), count))
            sources["skills"]["replay"] = [{**first[i], "id": f"{first[i]['id']}#replay", "source": "replay"} for i in picked]
        rows, upsampled = _phase(sources[phase], recipe, phase)
        before = {k: len(v) for k, v in sources[phase].items()}
        final = Counter(r["source"] for r in rows)
        if any(n < Fraction(repr(recipe.min_share)) * len(rows) for n in final.values()):
            warnings[phase].append(f"min_share {recipe.min_share} cannot hold for every source at once; the small "
                                   "sources were brought to the size of the largest")
        out[phase] = {"rows": rows, "before": before, "upsampled": upsampled,
                      "datasets": [d for d in datasets if d["phase"] == phase]}
    for phase in PHASES:
        # Trainers read in file order unless told otherwise; a seeded shuffle keeps sources interleaved.
        out[phase]["shuffled"] = list(out[phase]["rows"])
        _rng(recipe.seed, "order", phase).shuffle(out[phase]["shuffled"])
    return out
