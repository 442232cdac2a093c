"""The run manifest's leaves as the stages after the taxonomy read them: each leaf's qna.yaml and, for
knowledge, its chunks (RUN/documents/<leaf id>/chunks.jsonl). Generation asks the teacher with them; the
evaluation asks base and candidate their seed questions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.io import read_jsonl
from labcycle.run_folder import RunFolder
from labcycle.yaml_reader import read_yaml


@dataclass
class LeafInput:
    id: str
    kind: str  # knowledge | freeform_skill | grounded_skill
    hash: str  # the leaf's content hash (qna.yaml + documents), from the manifest
    qna: dict[str, Any]
    chunks: list[dict[str, Any]] = field(default_factory=list)  # knowledge: {source, start, end, text}


def read_leaves(manifest_path: Path, taxonomy_root: Path | None = None) -> list[LeafInput]:
    """The manifest's leaves, read from the taxonomy root it names or from `taxonomy_root` (a copy of the
    leaves elsewhere, e.g. on a GPU worker: flows/remote.py)."""
    if not manifest_path.is_file():
        raise LabcycleError("run manifest not found; run the taxonomy stage first (labcycle run)", where=str(manifest_path))
    manifest = json.loads(manifest_path.read_text())
    root = Path(taxonomy_root) if taxonomy_root else Path(manifest["taxonomy"]["root"])
    run_dir = manifest_path.parent
    leaves = []
    for entry in manifest["leaves"]:
        kind = entry["kind"]
        parsed = read_yaml(root / entry["path"])
        if parsed.problems or not isinstance(parsed.data, dict):
            raise LabcycleError("the leaf changed since it was validated; run the taxonomy stage again", where=entry["id"])
        chunks_file = RunFolder(run_dir).documents / entry["id"] / "chunks.jsonl"
        chunks = read_jsonl(chunks_file) if kind == "knowledge" and chunks_file.exists() else []
        leaves.append(LeafInput(id=entry["id"], kind=kind, hash=entry["hash"], qna=parsed.data, chunks=chunks))
    return leaves


def seed_examples(leaf: LeafInput) -> list[dict[str, str]]:
    """The leaf's seed Q&A as {context, question, answer} (knowledge: one entry per Q&A of a context)."""
    out = []
    for seed in leaf.qna.get("seed_examples", []):
        if leaf.kind == "knowledge":
            for qa in seed.get("questions_and_answers", []):
                out.append({"context": seed["context"], "question": qa["question"], "answer": qa["answer"]})
        else:
            out.append({"context": seed.get("context", ""), "question": seed["question"], "answer": seed["answer"]})
    return out


__all__ = ["LeafInput", "read_leaves", "seed_examples"]
