"""Chat datasets: JSONL, Parquet or save_to_disk folders of `messages` rows, every row checked so a bad row
is named by file and line before any work. The mix stage reads user datasets with it, the tuning stage the
mixed sets.

Data mixed by InstructLab reads as it is. Its phase-1 (knowledge) sets mark samples to be trained on in full,
the user's turn as well as the assistant's, with `unmask: true`; older releases wrote such a sample as one
`pretraining` turn, "<|user|>\n...\n<|assistant|>\n...". Both come out as ordinary turns with `unmask` set,
and the tuning stage puts the loss on every token of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError

ROLES = ("system", "user", "assistant")
MESSAGES_HELP = ("each row needs `messages`: a list of {role, content} turns (role system, user or assistant; "
                 "content non-empty text) with at least one user and one assistant turn; `unmask`, if given, is "
                 "true or false")
LEGACY_ROLE = "pretraining"
_LEGACY_MARK = re.compile(r"<\|(system|user|assistant)\|>\n")


class _LegacyProblem(ValueError):
    pass


def _legacy_turns(content: str) -> list[dict[str, str]] | None:
    """The turns of a legacy `pretraining` turn's "<|user|>\nQ\n<|assistant|>\nA" text; None if it has none."""
    parts = _LEGACY_MARK.split(content)
    if len(parts) < 3 or parts[0].strip():
        return None
    turns = []
    for role, text in zip(parts[1::2], parts[2::2]):
        turns.append({"role": role, "content": text[:-1] if text.endswith("\n") else text})
    return turns


def _expand_legacy(row: dict[str, Any]) -> dict[str, Any]:
    """A row with `pretraining` turns as the same row in ordinary turns with `unmask: true`; others as they are."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not any(isinstance(m, dict) and m.get("role") == LEGACY_ROLE for m in messages):
        return row
    out: list[Any] = []
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") == LEGACY_ROLE:
            turns = _legacy_turns(m["content"]) if isinstance(m.get("content"), str) else None
            if turns is None:
                raise _LegacyProblem(f"messages[{i}] is a `pretraining` turn without the \"<|user|>\\n\" and "
                                     "\"<|assistant|>\\n\" sections InstructLab writes in it")
            out.extend(turns)
        else:
            out.append(m)
    return {**row, "messages": out, "unmask": True}


def messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "`messages` is missing or not a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"messages[{i}].role is not one of system, user, assistant (or InstructLab's legacy pretraining)"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return f"messages[{i}].content is not non-empty text"
    roles = {m["role"] for m in messages}
    if "user" not in roles or "assistant" not in roles:
        return "`messages` has no user turn or no assistant turn"
    return None


def jsonl_rows(path: Path) -> list[tuple[str, Any]]:
    """(file:line, parsed value) for each non-blank line."""
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append((f"{path}:{n}", json.loads(line)))
                except ValueError as exc:
                    raise LabcycleError(f"not valid JSON ({exc}); each line must be one JSON object", where=f"{path}:{n}")
    return out


def _rows_of_saved(path: Path) -> list[tuple[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise LabcycleError(f"not a folder written by datasets' save_to_disk ({exc.__class__.__name__}); pass one, "
                            "or a .jsonl or .parquet file", where=str(path))
    if isinstance(ds, DatasetDict):
        if len(ds) != 1 and "train" not in ds:
            raise LabcycleError(f"this dataset has splits {sorted(ds)}; save the one to train on alone", where=str(path))
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    return [(f"{path}, row {i} (from 0)", row) for i, row in enumerate(ds)]


def load_chat_dataset(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file, a Parquet file or a save_to_disk folder, each with a checked `messages` list
    (turns reduced to {role, content}); other columns are kept as they are."""
    path = Path(path)
    if not path.exists():
        raise LabcycleError("dataset not found; fix its `path` (relative paths resolve against the recipe's folder)",
                            where=str(path))
    if path.is_dir():
        rows = _rows_of_saved(path)
    elif not path.is_file():  # a FIFO would wait for a writer forever, /dev/zero never ends
        raise LabcycleError("not a regular file (a FIFO, a device or a socket); point `path` at a .jsonl or .parquet "
                            "file", where=str(path))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as exc:
            raise LabcycleError(f"cannot read it as Parquet ({exc}); pass a valid .parquet file", where=str(path))
        rows = [(f"{path}, row {i} (from 0)", row) for i, row in enumerate(table.to_pylist())]
    elif path.suffix == ".jsonl":
        rows = jsonl_rows(path)
    else:
        raise LabcycleError("unsupported dataset format; use a .jsonl or .parquet file, or a folder written by "
                            "datasets' save_to_disk", where=str(path))
    out = []
    for where, row in rows:
        problem = None if isinstance(row, dict) else "the row is not an object"
        if problem is None:
            try:
                row = _expand_legacy(row)
            except _LegacyProblem as exc:
                problem = str(exc)
        if problem is None:
            problem = messages_problem(row.get("messages"))
        if problem is None and row.get("unmask") not in (None, True, False):
            problem = f"`unmask` is {row['unmask']!r}, not true or false"
        if problem:
            raise LabcycleError(f"{problem}; {MESSAGES_HELP}", where=where)
        out.append({**row, "messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]],
                    "unmask": row.get("unmask") is True})
    return out


__all__ = ["MESSAGES_HELP", "jsonl_rows", "load_chat_dataset", "messages_problem"]
