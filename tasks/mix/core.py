"""mix(): read the inputs, build both phase sets, write them with their cards and OUTPUT/mix.json."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

from labcycle.chat_data import load_chat_dataset
from labcycle.env import datasets_bars_off
from labcycle.errors import LabcycleError
from labcycle.io import write_json, write_jsonl, write_text_atomic
from labcycle.shareable import relative
from labcycle.tasks.mix.card import hub_card, length_counter, length_stats, render_card, sample_lengths
from labcycle.tasks.mix.data import read_generated, sample_files
from labcycle.tasks.mix.phases import Fit, Row, phase_sets, with_system_prompt
from labcycle.tasks.mix.recipe import PHASES, Recipe

# Bumped whenever the same inputs and recipe would give different output, so older mixes are redone.
MIX_FORMAT = 3  # 2: grounded copies fit max_length; 3: rows keep `metadata`, knowledge Q&A unmask, system prompt
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
                         "source": Value("string"), "leaf_id": Value("string"), "unmask": Value("bool"),
                         "metadata": Value("string")})
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
    """Write OUTPUT/{knowledge,skills}/ (data.jsonl, dataset/, card.json, dataset_card.md, README.md: the card
    with Hugging Face Hub front matter), OUTPUT/held_out.jsonl, InstructLab-named copies when the recipe asks,
    and OUTPUT/mix.json; returns mix.json's content."""
    generated, output = Path(generated), Path(output)
    # The system prompt goes in first, so lengths (and the grounded copies' fit) count it, and the held-out
    # questions are asked as the training samples are shown.
    records, held_out = hold_out([{**r, "messages": with_system_prompt(r["messages"], recipe.system_prompt)}
                                  for r in read_generated(generated)], recipe)
    user = [(d, [{**r, "messages": with_system_prompt(r["messages"], recipe.system_prompt)}
                 for r in load_chat_dataset(recipe.resolve(d.path))]) for d in recipe.datasets]
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
    run = output.resolve().parent
    shared_recipe = _shared_recipe(recipe, run)
    (output / MIX_JSON).unlink(missing_ok=True)  # written last: its absence marks an unfinished mix
    # What is meant to be shared (mix.json, the cards) names no absolute path: paths inside the run folder
    # (OUTPUT's parent) are relative to it (shared_path).
    summary: dict[str, Any] = {"format": MIX_FORMAT, "generated": shared_path(generated, run),
                               "output": shared_path(output, run), "inputs": key, "seed": recipe.seed,
                               "recipe_digest": recipe.digest(), "system_prompt": recipe.system_prompt, "phases": {},
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
            "upsampled": s["upsampled"], "leaves": dict(sorted(leaves.items())),
            "datasets": [{**d, "path": shared_path(recipe.resolve(d["path"]), run, d["path"])} for d in s["datasets"]],
            "lengths": {"unit": unit, "tokenizer": shared_recipe["tokenizer"], "max_length": recipe.max_length,
                        **length_stats(lengths[phase], recipe.max_length)},
            "warnings": warnings[phase],
            "empty_reason": None if rows else (f"no {phase} leaf has generated samples (or the recipe leaves them "
                                               "out) and no user dataset joins this phase"),
            "recipe": shared_recipe,
        }
        write_json(folder / "card.json", card)
        body = render_card(card)
        write_text_atomic(folder / "dataset_card.md", body)
        write_text_atomic(folder / "README.md", hub_card(card, body))
        summary["phases"][phase] = {"data": f"{phase}/data.jsonl", "dataset": f"{phase}/dataset",
                                    "card": f"{phase}/dataset_card.md", "readme": f"{phase}/README.md",
                                    "samples": len(rows), "fingerprint": fingerprint, "sources": final}
    summary["instructlab"] = _write_instructlab_files(output, sets, key) if recipe.instructlab_files else {}
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
    if summary.get("inputs") != key or summary.get("format") != MIX_FORMAT or summary.get("output") != output.resolve().name:
        return None
    for info in summary.get("phases", {}).values():
        data = output / info["data"]
        if not data.is_file() or not (output / info["dataset"]).is_dir() or _sha256_file(data) != info["fingerprint"]:
            return None
    if not all((output / name).is_file() for name in summary.get("instructlab", {}).values()):
        return None
    return summary


def shared_path(path: Path | str, run: Path, as_written: str | None = None) -> str:
    """`path` as it may be shared, never as an absolute path of this machine: relative to the run folder when it
    lies inside it; else as the recipe wrote it when that is relative (to the recipe's folder); else its name."""
    p = Path(path).resolve()
    if not p.is_relative_to(run) and as_written is not None and not Path(as_written).expanduser().is_absolute():
        return Path(as_written).as_posix()
    return relative(p, [run])


def _shared_recipe(recipe: Recipe, run: Path) -> dict[str, Any]:
    """The recipe as the cards show it: its tokenizer and dataset paths as shared_path gives them."""
    data = recipe.to_json()
    if recipe.tokenizer is not None:
        data["tokenizer"] = shared_path(recipe.resolve(recipe.tokenizer), run, recipe.tokenizer)
    data["datasets"] = [{**d, "path": shared_path(recipe.resolve(d["path"]), run, d["path"])} for d in data["datasets"]]
    return data


def instructlab_row(row: Row) -> dict[str, Any]:
    """A mixed row in the shape InstructLab's mixer writes (id, messages, metadata as JSON text, unmask); the
    row's source and leaf go into its metadata (keys it already has are kept)."""
    meta = json.loads(row["metadata"]) if row.get("metadata") else {}
    meta = {"source": row["source"], "leaf_id": row["leaf_id"], **meta}
    return {"id": row["id"], "messages": row["messages"], "metadata": json.dumps(meta, ensure_ascii=False),
            "unmask": row["unmask"]}


def _write_instructlab_files(output: Path, sets: dict[str, dict[str, Any]], key: str) -> dict[str, str]:
    """OUTPUT/{knowledge,skills}_train_msgs_<id>.jsonl for the non-empty phases (InstructLab's mixer writes no
    file for a phase without data); <id> is the mix's input key, so the same mix has the same names. Files of
    the same names from an earlier mix are removed."""
    names = {}
    for phase in PHASES:
        name = f"{phase}_train_msgs_{key[:12]}.jsonl"
        for old in output.glob(f"{phase}_train_msgs_*.jsonl"):
            if old.name != name:
                old.unlink()
        if sets[phase]["shuffled"]:
            write_jsonl(output / name, [instructlab_row(r) for r in sets[phase]["shuffled"]])
            names[phase] = name
        else:
            (output / name).unlink(missing_ok=True)
    return names

