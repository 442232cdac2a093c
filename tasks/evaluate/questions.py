"""The branch questions: every changed leaf's seed examples, plus an optional held-out slice of
generated samples that never entered training.

A question carries the messages both models are asked, the reference answer, and the context the judge
sees. Knowledge is asked closed-book (the seed's context goes to the judge only): what phase 1 should
have taught is the knowledge itself, not reading it off a page. Grounded skills get their context in
the prompt, as their training samples did (context, blank line, question); freeform skills get the
question alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.leaves import LeafInput, seed_examples


@dataclass(frozen=True)
class Question:
    id: str  # "<leaf id>#seed-<i>" or "<leaf id>#held-out-<i>"
    leaf_id: str
    kind: str
    source: str  # "seed" | "held_out"
    messages: tuple[dict[str, str], ...] = field(hash=False)  # what base and candidate are asked
    question: str = ""  # the last user turn, for the judge
    reference: str = ""
    context: str = ""  # shown to the judge; empty when there is none

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "leaf_id": self.leaf_id, "kind": self.kind, "source": self.source,
                "question": self.question, "reference": self.reference, "context": self.context}


def _user_turn(kind: str, question: str, context: str) -> str:
    # The same layout as the generated grounded-skill records (tasks/generate/runner.to_record).
    return f"{context}\n\n{question}" if kind == "grounded_skill" and context else question


def seed_questions(leaf: LeafInput) -> list[Question]:
    out = []
    for i, ex in enumerate(seed_examples(leaf)):
        q, a, ctx = str(ex["question"]).strip(), str(ex["answer"]).strip(), str(ex.get("context") or "").strip()
        out.append(Question(id=f"{leaf.id}#seed-{i}", leaf_id=leaf.id, kind=leaf.kind, source="seed",
                            messages=({"role": "user", "content": _user_turn(leaf.kind, q, ctx)},),
                            question=q, reference=a, context=ctx))
    return out


def _leaf_of(row: dict[str, Any]) -> Any:
    meta = row.get("metadata")
    return row.get("leaf_id") or (meta.get("leaf_id") if isinstance(meta, dict) else None)


def held_out_questions(path: Path, leaves: dict[str, LeafInput], per_leaf: int | None) -> tuple[list[Question], dict[str, int]]:
    """Questions from a held-out JSONL of chat records (`messages` and `leaf_id`, or the generated records'
    `metadata.leaf_id`): the last user turn (with what precedes it) is asked, the last assistant turn is
    the reference. Rows of leaves not under evaluation are skipped and counted; a malformed row is an
    error naming its line. At most `per_leaf` rows per leaf, in file order."""
    path = Path(path)
    if not path.is_file():
        raise LabcycleError("held-out file not found; pass a JSONL of chat records or leave held_out unset", where=str(path))
    out: list[Question] = []
    counts = {"rows": 0, "used": 0, "other_leaves": 0, "over_limit": 0}
    taken: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            counts["rows"] += 1
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LabcycleError(f"not a JSON object ({exc.msg})", where=where) from None
            except RecursionError:
                raise LabcycleError("JSON nested too deeply to read; each line is one flat object", where=where) from None
            messages = row.get("messages") if isinstance(row, dict) else None
            leaf_id = _leaf_of(row) if isinstance(row, dict) else None
            if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                         and m.get("role") in ("system", "user", "assistant") for m in messages):
                raise LabcycleError("a held-out row needs `messages`: a list of {role, content} chat turns", where=where)
            if not isinstance(leaf_id, str):
                raise LabcycleError("a held-out row needs `leaf_id` (or `metadata.leaf_id`) naming its leaf", where=where)
            last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last_assistant is None or not any(m["role"] == "user" for m in messages[:last_assistant]):
                raise LabcycleError("a held-out row needs a user turn followed by an assistant turn (the reference)", where=where)
            if leaf_id not in leaves:
                counts["other_leaves"] += 1
                continue
            if per_leaf is not None and taken.get(leaf_id, 0) >= per_leaf:
                counts["over_limit"] += 1
                continue
            n = taken[leaf_id] = taken.get(leaf_id, 0) + 1
            asked = tuple({"role": m["role"], "content": m["content"]} for m in messages[:last_assistant])
            question = next(m["content"] for m in reversed(asked) if m["role"] == "user")
            meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
            context = meta.get("context") if isinstance(meta.get("context"), str) else ""
            leaf = leaves[leaf_id]
            out.append(Question(id=f"{leaf_id}#held-out-{n - 1}", leaf_id=leaf_id, kind=leaf.kind, source="held_out",
                                messages=asked, question=question, reference=messages[last_assistant]["content"],
                                context=context))
            counts["used"] += 1
    return out, counts


__all__ = ["Question", "held_out_questions", "seed_questions"]
