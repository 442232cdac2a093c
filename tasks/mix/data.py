"""Reading the mix's inputs: the generation stage's samples.jsonl files, with every row's `messages` checked
so a bad row is named by file and line before any work. User chat datasets are read by
labcycle/chat_data.py, which the tuning stage reads the mixed sets with too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labcycle.chat_data import jsonl_rows, messages_problem
from labcycle.errors import LabcycleError

SAMPLES = "samples.jsonl"
KINDS = ("knowledge", "freeform_skill", "grounded_skill")
def sample_files(generated: Path) -> list[Path]:
    if not generated.is_dir():
        return []
    return sorted(generated.rglob(SAMPLES), key=lambda p: p.relative_to(generated).as_posix())


def read_generated(generated: Path) -> list[dict[str, Any]]:
    """Every record of every GENERATED/**/samples.jsonl, sorted by (leaf id, record id)."""
    if not generated.is_dir():
        raise LabcycleError("generated samples folder not found; pass the generation stage's output folder to "
                            "--generated", where=str(generated))
    records, seen = [], {}
    for f in sample_files(generated):
        for where, rec in jsonl_rows(f):
            meta = rec.get("metadata") if isinstance(rec, dict) else None
            problem = messages_problem(rec.get("messages")) if isinstance(rec, dict) else "the line is not an object"
            if not problem and not (isinstance(meta, dict) and isinstance(meta.get("leaf_id"), str)
                                    and meta.get("kind") in KINDS and isinstance(rec.get("id"), str)):
                problem = "id, metadata.leaf_id or metadata.kind is missing"
            if problem:
                raise LabcycleError(f"{problem}; samples.jsonl must hold records as the generation stage writes them "
                                    "(schemas/record.schema.json): generate this leaf again", where=where)
            if rec["id"] in seen:
                raise LabcycleError(f"sample id {rec['id']!r} is also in {seen[rec['id']]}; remove the copied leaf folder",
                                    where=where)
            seen[rec["id"]] = where
            records.append(rec)
    return sorted(records, key=lambda r: (r["metadata"]["leaf_id"], r["id"]))


