"""mix(): read the inputs, build both phase sets, write them with their cards and OUTPUT/mix.json."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

from labcycle.env import datasets_bars_off
from labcycle.errors import LabcycleError
from labcycle.io import write_json, write_jsonl, write_text_atomic
from labcycle.tasks.mix.card import length_counter, length_stats, render_card, sample_lengths
from labcycle.tasks.mix.data import load_chat_dataset, read_generated, sample_files
from labcycle.tasks.mix.phases import Fit, Row, phase_sets
from labcycle.tasks.mix.recipe import PHASES, Recipe

# Bumped whenever the same inputs and recipe would give different output, so older mixes are redone.
MIX_FORMAT = 2  # 2: grounded copies fit max_length
HELD_OUT = "held_out.jsonl"
MIX_JSON = "mix.json"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_dataset(rows: list[Row], folder: Path) -> None:
    """save_to_disk into a temporary sibling, then swap it in: a crash never leaves a half-written dataset."""
    from datasets import Dataset, Features, List, Value

    features = Features({"id": Value("string"), "messages": List({"role": Value("string"), "content": Value("string")}),
                         "source": Value("string"), "leaf_id": Value("string"), "unmask": Value("bool")})
    tmp, old = folder.parent / f".{folder.name}.tmp", folder.parent / f".{folder.name}.old"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    with datasets_bars_off():
        # An empty set needs its columns spelled out, and one explicit (empty) shard: saved with none,
        # load_from_disk cannot read it back.
        ds = Dataset.from_list(rows, features=features) if rows else Dataset.from_dict({k: [] for k in features}, features=features)
        ds.save_to_disk(str(tmp), num_shards=None if rows else 1)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def input_key(generated: Path, recipe: Recipe) -> str:
    """What a mix depends on: every samples.jsonl, the recipe, the user datasets' and the tokenizer's files."""
    h = hashlib.sha256(json.dumps({"format": MIX_FORMAT, "recipe": recipe.digest()}).encode())
    generated = Path(generated)
    for f in sample_files(generated):
        h.update(f"{f.relative_to(generated).as_posix()}\0{_sha256_file(f)}\0".encode())
    paths = [recipe.resolve(d.path) for d in recipe.datasets] + ([recipe.resolve(recipe.tokenizer)] if recipe.tokenizer else [])
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        # Model weights beside a tokenizer are big and do not change token counts.
        files = [f for f in files if f.suffix not in (".safetensors", ".bin", ".pt", ".pth", ".gguf")]
        h.update(f"{p}\0{len(files)}\0".encode())
        for f in files:
            h.update(f"{f.relative_to(p) if f != p else f.name}\0{_sha256_file(f)}\0".encode())
    return h.hexdigest()[:32]


def mix(generated: Path, output: Path, recipe: Recipe) -> dict[str, Any]:
    """Write OUTPUT/{knowledge,skills}/ (data.jsonl, dataset/, card.json, dataset_card.md) and OUTPUT/mix.json;
    returns mix.json's content."""
    generated, output = Path(generated), Path(output)
    records, held_out = hold_out(read_generated(generated), recipe)
    user = [(d, load_chat_dataset(recipe.resolve(d.path))) for d in recipe.datasets]
    warnings: dict[str, list[str]] = {p: [] for p in PHASES}
    counter = length_counter(recipe)
    sets = phase_sets(records, user, recipe, warnings,
                      Fit(lambda messages: counter[1]([messages])[0], recipe.max_length))
    if not any(s["rows"] for s in sets.values()):
        raise LabcycleError("no samples were generated (every samples.jsonl below it is empty or missing) and no user "
                            "dataset adds any; read the yield.json beside each leaf's samples.jsonl for what the "
                            "filters dropped and what to change", where=str(generated))
    unit, lengths = sample_lengths({p: s["shuffled"] for p, s in sets.items()}, recipe, counter)
    key = input_key(generated, recipe)
    (output / MIX_JSON).unlink(missing_ok=True)  # written last: its absence marks an unfinished mix
    summary: dict[str, Any] = {"format": MIX_FORMAT, "generated": str(generated.resolve()), "output": str(output.resolve()),
                               "inputs": key, "seed": recipe.seed, "recipe_digest": recipe.digest(), "phases": {},
                               "warnings": [f"{p}: {w}" for p in PHASES for w in warnings[p]]}
    for phase, s in sets.items():
        folder = output / phase
        rows = s["shuffled"]
        write_jsonl(folder / "data.jsonl", rows)
        fingerprint = _sha256_file(folder / "data.jsonl")
        _save_dataset(rows, folder / "dataset")
        final = {k: 0 for k in s["before"]}
        leaves: dict[str, int] = {}
        for r in rows:
            final[r["source"]] += 1
            if r["leaf_id"] is not None:
                leaves[r["leaf_id"]] = leaves.get(r["leaf_id"], 0) + 1
        card = {
            "phase": phase, "samples": len(rows), "unmask": sum(1 for r in rows if r["unmask"]),
            "fingerprint": fingerprint, "seed": recipe.seed,
            "recipe_digest": recipe.digest(),
            "sources": {k: {"before": s["before"][k], "samples": final[k]} for k in s["before"]},
            "upsampled": s["upsampled"], "datasets": s["datasets"], "leaves": dict(sorted(leaves.items())),
            "lengths": {"unit": unit, "tokenizer": recipe.tokenizer, "max_length": recipe.max_length,
                        **length_stats(lengths[phase], recipe.max_length)},
            "warnings": warnings[phase],
            "empty_reason": None if rows else (f"no {phase} leaf has generated samples (or the recipe leaves them "
                                               "out) and no user dataset joins this phase"),
            "recipe": recipe.to_json(),
        }
        write_json(folder / "card.json", card)
        write_text_atomic(folder / "dataset_card.md", render_card(card))
        summary["phases"][phase] = {"data": f"{phase}/data.jsonl", "dataset": f"{phase}/dataset",
                                    "card": f"{phase}/dataset_card.md", "samples": len(rows), "fingerprint": fingerprint,
                                    "sources": final}
    write_jsonl(output / HELD_OUT, held_out)
    summary["held_out"] = {"data": HELD_OUT, "samples": len(held_out),
                           "leaves": {leaf: sum(1 for r in held_out if r["leaf_id"] == leaf) for leaf in sorted({r["leaf_id"] for r in held_out})}}
    write_json(output / MIX_JSON, summary)
    return summary


def hold_out(records: list[dict[str, Any]], recipe: Recipe) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records for training, held-out rows): per leaf, recipe.held_out.count(n) samples drawn with the seed.
    The held-out rows never enter either phase set, so the evaluation can ask the candidate questions it
    was not trained on."""
    by_leaf: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_leaf.setdefault(rec["metadata"]["leaf_id"], []).append(rec)
    held_ids: set[str] = set()
    held: list[dict[str, Any]] = []
    for leaf in sorted(by_leaf):
        rows = sorted(by_leaf[leaf], key=lambda r: r["id"])
        pick = random.Random(f"{recipe.seed}:held_out:{leaf}").sample(rows, recipe.held_out.count(len(rows)))
        for rec in sorted(pick, key=lambda r: r["id"]):
            held_ids.add(rec["id"])
            held.append({"id": rec["id"], "messages": rec["messages"], "leaf_id": leaf, "kind": rec["metadata"]["kind"]})
    return [r for r in records if r["id"] not in held_ids], held


def read_complete(output: Path, key: str) -> dict[str, Any] | None:
    """mix.json of a finished mix of exactly these inputs in `output` (its files intact), else None."""
    output = Path(output)
    try:
        summary = json.loads((output / MIX_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if summary.get("inputs") != key or summary.get("output") != str(output.resolve()):
        return None
    for info in summary.get("phases", {}).values():
        data = output / info["data"]
        if not data.is_file() or not (output / info["dataset"]).is_dir() or _sha256_file(data) != info["fingerprint"]:
            return None
    return summary

