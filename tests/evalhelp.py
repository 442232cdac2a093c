"""Shared pieces of the evaluation tests: the example taxonomy's leaves, a run manifest naming them, and a
real LoRA adapter on the tiny model that answers everything with TUNED_ANSWER."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.genhelp import LEAVES, REPO_ROOT, TAXONOMY  # noqa: F401 - REPO_ROOT re-exported for the evaluation tests

TUNED_ANSWER = "Risk is managed by review."


def train_adapter(tiny_model: Path, folder: Path) -> Path:
    """A LoRA adapter on the tiny model that answers everything with TUNED_ANSWER (20 steps, a few seconds)."""
    from labcycle.tasks.tune import trainer
    from labcycle.tasks.tune.settings import LoraSettings, PhaseSettings, TuneSettings

    from labcycle.tasks.evaluate.questions import seed_questions
    from labcycle.leaves import LeafInput
    from labcycle.yaml_reader import read_yaml

    # The evaluation's own questions (the example leaves' seeds, as the stage asks them) and a few others:
    # the tests check which model answered, not how a 2-layer random model generalizes. Trained on short
    # prompts alone, how many of the long grounded ones it answered depended on the random draw of the
    # tiny tokenizer, which is trained on the taxonomy's text (a comment edit in taxonomy/ moved it).
    prompts = [q.messages for kind, leaf_id in LEAVES.items()
               for q in seed_questions(LeafInput(id=leaf_id, kind=kind, hash="", qna=read_yaml(TAXONOMY / leaf_id / "qna.yaml").data))]
    prompts += [({"role": "user", "content": f"Question {i}?"},) for i in range(6)]
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [*m, {"role": "assistant", "content": TUNED_ANSWER}]}) + "\n" for m in prompts))
    phase = PhaseSettings(max_steps=20, learning_rate=5e-3, batch_size=4, gradient_accumulation=1, save_steps=20,
                          logging_steps=5, max_length=2048, warmup_ratio=0.0, lr_scheduler="constant")
    result = trainer.train_phase("knowledge", tiny_model, data, folder / "work",
                                 TuneSettings(lora=LoraSettings(r=8, alpha=16, dropout=0.0), knowledge=phase, skills=phase))
    return Path(result["output"])


def write_manifest(folder: Path) -> Path:
    """folder/run/manifest.json naming the three LEAVES of the shipped example taxonomy."""
    entries = [{"id": p, "path": f"{p}/qna.yaml", "kind": k, "version": 3, "status": "added",
                "hash": hashlib.sha256(p.encode()).hexdigest(), "chunks": 0, "documents": None} for k, p in LEAVES.items()]
    path = folder / "run" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"manifest_version": 1, "config_digest": "0",
                                "taxonomy": {"root": str(TAXONOMY), "commit": None, "base": "empty", "leaves_total": 3},
                                "leaves": entries}))
    return path
