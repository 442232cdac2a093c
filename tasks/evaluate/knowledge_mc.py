"""The knowledge multiple-choice suite (`evaluation.knowledge_mc`), in the spirit of `ilab model evaluate`'s
MMLU branch: multiple-choice questions built from the changed knowledge leaves, scored by log-likelihood,
base vs candidate, with no judge and no teacher.

Each seed question of a knowledge leaf becomes one MMLU-style item: the question, closed-book, with its own
answer as the right choice and up to three other seed answers of the same leaf as distractors (same topic,
same style, so the choice turns on the fact, not on the form), in an order drawn from the question's id.
The model picks the letter (A-D) with the highest log-likelihood after "Answer:", as MMLU is scored, so long
and short answers compare fairly. A leaf whose seeds have fewer than two distinct answers gives no item.

The items are written as a suite of the harness's format (YAML + JSONL) into the evaluation's folder, so
both regression backends score them like any other suite; the entry is `regression.suites.knowledge_mc`
(metric accuracy; the gate's `regression/knowledge_mc` rule, with `regression.suites.knowledge_mc` in the
policy for its own threshold), with a per-leaf breakdown under `leaves`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labcycle.tasks.evaluate.questions import Question

NAME = "knowledge_mc"
LETTERS = ("A", "B", "C", "D")
_YAML = f"""\
# Written by labcycle (tasks/evaluate/knowledge_mc.py): the changed knowledge leaves' seed questions as
# MMLU-style multiple choice, each answer against other answers of its leaf; scored by log-likelihood.
task: {NAME}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {NAME}.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: letters
doc_to_target: answer
target_delimiter: " "
metadata:
  version: 1
"""


@dataclass(frozen=True)
class Item:
    leaf_id: str
    id: str  # the seed question's id
    question: str
    options: tuple[str, ...]
    gold: int

    def prompt(self, topic: str) -> str:
        lines = [f"The following are multiple choice questions (with answers) about {topic}.", "", self.question.strip()]
        lines += [f"{LETTERS[i]}. {o.strip()}" for i, o in enumerate(self.options)]
        return "\n".join(lines) + "\nAnswer:"

    def row(self) -> dict[str, Any]:
        return {"leaf_id": self.leaf_id, "id": self.id, "prompt": self.prompt(topic(self.leaf_id)),
                "letters": list(LETTERS[:len(self.options)]), "answer": self.gold}


def topic(leaf_id: str) -> str:
    parts = [p for p in leaf_id.split("/") if p and p != "knowledge"]
    return " ".join(parts[-2:]).replace("_", " ") or leaf_id


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def build_items(questions: Sequence[Question]) -> list[Item]:
    """The items of every knowledge leaf's seed questions, in question order."""
    by_leaf: dict[str, list[Question]] = {}
    for q in questions:
        if q.kind == "knowledge" and q.source == "seed" and q.reference.strip():
            by_leaf.setdefault(q.leaf_id, []).append(q)
    items = []
    for leaf_id, qs in by_leaf.items():
        answers = list(dict.fromkeys(q.reference.strip() for q in qs))
        for q in qs:
            others = [a for a in answers if _key(a) != _key(q.reference)]
            if not others:
                continue
            rng = random.Random(int(hashlib.sha256(q.id.encode()).hexdigest()[:16], 16))
            options = [q.reference.strip(), *rng.sample(others, min(len(LETTERS) - 1, len(others)))]
            rng.shuffle(options)
            items.append(Item(leaf_id=leaf_id, id=q.id, question=q.question, options=tuple(options),
                              gold=options.index(q.reference.strip())))
    return items


def write_suite(items: Sequence[Item], folder: Path) -> Path | None:
    """The suite YAML (and its JSONL) in `folder`; None when there is no item."""
    from labcycle.io import write_text_atomic

    if not items:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / f"{NAME}.jsonl", "".join(json.dumps(i.row(), ensure_ascii=False) + "\n" for i in items))
    write_text_atomic(folder / f"{NAME}.yaml", _YAML)
    return folder / f"{NAME}.yaml"


@dataclass(frozen=True)
class LeafScore:
    items: int
    base: float
    candidate: float


def per_leaf(items: Sequence[Item], details: Sequence[dict[str, Any]]) -> dict[str, LeafScore]:
    """Each leaf's accuracy, base and candidate, from the suite entry's per-document details (document order)."""
    hits: dict[str, dict[str, int]] = {}
    for item, row in zip(items, details):
        h = hits.setdefault(item.leaf_id, {"items": 0, "base": 0, "candidate": 0})
        h["items"] += 1
        for side in ("base", "candidate"):
            h[side] += int(row[side]["pick"] == row["gold"])
    return {leaf: LeafScore(h["items"], h["base"] / h["items"], h["candidate"] / h["items"]) for leaf, h in hits.items()}


__all__ = ["Item", "LeafScore", "NAME", "build_items", "per_leaf", "topic", "write_suite"]
