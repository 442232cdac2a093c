"""Sample lengths and the dataset card of one phase set."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.tasks.mix.phases import Row
from labcycle.tasks.mix.recipe import Recipe


def length_counter(recipe: Recipe) -> tuple[str, Callable[[list[list[dict[str, Any]]]], list[int]]]:
    """(unit, count): count gives each conversation's length in tokens of the recipe's tokenizer (chat
    template applied), else in whitespace words."""
    def text(messages: list[dict[str, Any]]) -> str:
        return "\n\n".join(m["content"] for m in messages)

    if recipe.tokenizer is None:
        return "words", lambda batch: [len(text(m).split()) for m in batch]
    from transformers import AutoTokenizer

    path = recipe.resolve(recipe.tokenizer)
    if not path.is_dir():
        raise LabcycleError("tokenizer folder not found; set the recipe's `tokenizer` to a local Hugging Face "
                            "tokenizer folder (the student's), or to null to count words", where=str(path))
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise LabcycleError(f"cannot load a tokenizer from this folder ({exc.__class__.__name__}: {exc}); set the "
                            "recipe's `tokenizer` to the student's tokenizer folder", where=str(path))

    def count(batch: list[list[dict[str, Any]]]) -> list[int]:
        ids = tok.apply_chat_template(batch, tokenize=True) if tok.chat_template else tok([text(m) for m in batch])
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return [len(x) for x in ids]

    return "tokens", count


def sample_lengths(phases: dict[str, list[Row]], recipe: Recipe,
                   counter: tuple[str, Callable[[list[list[dict[str, Any]]]], list[int]]] | None = None
                   ) -> tuple[str, dict[str, list[int]]]:
    """Each sample's length: tokens of the recipe's tokenizer (chat template applied), else whitespace words."""
    unit, count = counter or length_counter(recipe)
    out = {}
    for phase, rows in phases.items():
        counts: list[int] = []
        for start in range(0, len(rows), 512):
            counts += count([r["messages"] for r in rows[start:start + 512]])
        out[phase] = counts
    return unit, out


def length_stats(lengths: list[int], max_length: int) -> dict[str, Any]:
    """min/mean/p50/p95/max (nearest-rank percentiles) and how many exceed max_length."""
    if not lengths:
        return {"min": None, "mean": None, "p50": None, "p95": None, "max": None, "over_max_length": 0}
    s = sorted(lengths)

    def pct(q: float) -> int:
        return s[max(0, math.ceil(q * len(s)) - 1)]

    return {"min": s[0], "mean": round(sum(s) / len(s), 1), "p50": pct(0.5), "p95": pct(0.95), "max": s[-1],
            "over_max_length": sum(x > max_length for x in s)}


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def render_card(card: dict[str, Any]) -> str:
    """The dataset card (Markdown) for one phase's card.json."""
    title = {"knowledge": "phase 1, knowledge", "skills": "phase 2, skills"}[card["phase"]]
    t = card["lengths"]
    unit = (f"tokens of `{card['recipe']['tokenizer']}`, chat template applied" if t["unit"] == "tokens"
            else "whitespace-separated words: the recipe names no tokenizer, so these only approximate tokens")
    parts = [f"# labcycle training set ({title})", "",
             f"- samples: {card['samples']}", f"- fingerprint (sha256 of data.jsonl): `{card['fingerprint']}`",
             f"- seed: {card['seed']}", f"- recipe digest: `{card['recipe_digest']}`", ""]
    if card["recipe"].get("system_prompt") is not None:
        parts[-1:] = ["- system prompt, the first turn of every sample (as InstructLab's mixer puts one): "
                      f"{json.dumps(card['recipe']['system_prompt'], ensure_ascii=False)}", ""]
    if card.get("unmask"):
        parts[-1:] = [f"- trained on every token, not only the answers (`unmask: true`, as InstructLab marks its "
                      f"phase-1 knowledge samples): {card['unmask']}", ""]
    if not card["samples"]:
        parts += [f"**This set is empty**: {card['empty_reason']}", ""]
    parts += ["## Sources", "", _table(("source", "before upsampling", "samples", "upsampled"), [
        (k, v["before"], v["samples"], "yes" if k in card["upsampled"] else "") for k, v in card["sources"].items()]), ""]
    if card["upsampled"]:
        parts += [f"Sources below min_share {card['recipe']['min_share']} of the set were repeated deterministically "
                  "until they reached it: " + ", ".join(f"{k} {v['from']} -> {v['to']}" for k, v in card["upsampled"].items()), ""]
    if card["datasets"]:
        parts += ["## User datasets", "", _table(("name", "path", "rows", "weight", "samples"), [
            (d["name"], f"`{d['path']}`", d["rows"], d["weight"], d["samples"]) for d in card["datasets"]]), ""]
    if card["leaves"]:
        parts += ["## Leaves", "", _table(("leaf", "samples"), sorted(card["leaves"].items())), ""]
    parts += ["## Sample lengths", "", f"In {unit}.", "",
              _table(("min", "mean", "p50", "p95", "max"), [tuple(t[k] for k in ("min", "mean", "p50", "p95", "max"))]), "",
              f"{t['over_max_length']} samples are longer than max_length ({card['recipe']['max_length']} {t['unit']}); "
              "they are kept in the set (tuning leaves out a sample longer than its own max_length); grounded "
              "copies show fewer distractor documents rather than exceed it.", ""]
    if card["warnings"]:
        parts += ["## Warnings", "", *(f"- {w}" for w in card["warnings"]), ""]
    parts += ["## Recipe", "", "```json", json.dumps(card["recipe"], indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(parts)




def _size_category(n: int) -> str:
    """The Hub's size_categories bucket of n samples."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if n < bound:
            return name
    return "10M<n<100M"


def hub_card(card: dict[str, Any], body: str) -> str:
    """README.md for the phase folder: the card's Markdown under Hugging Face Hub front matter (huggingface_hub's
    DatasetCardData), with data.jsonl named as the train split so the Hub reads it and not dataset/."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        pretty_name=f"labcycle {card['phase']} training set", task_categories=["text-generation"],
        size_categories=[_size_category(card["samples"])],
        tags=["labcycle", "instructlab", "lab", "synthetic", f"phase-{1 if card['phase'] == 'knowledge' else 2}"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data.jsonl"}]}],
        labcycle={"phase": card["phase"], "fingerprint": card["fingerprint"], "seed": card["seed"],
                  "recipe_digest": card["recipe_digest"]},
    )
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
