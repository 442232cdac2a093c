"""The judge-free gate on a real model: it passes a candidate tuned on a leaf's right answers and fails one
tuned on nonsense (SmolLM2-135M-Instruct, LoRA, knowledge phase; tests/gateproof.py has the leaf). At this
learning rate the first learns the answers' form rather than their facts, which ROUGE-L rewards all the
same: docs/results.md says what that means for a judge-free gate.

Both candidates are trained on paraphrases of the seed questions, never on the seed questions the
evaluation asks, and judged through `labcycle evaluate` as a user runs it, on one shared vLLM server.
The figures at full size: bench/gate.py and docs/results.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import gateproof

pytestmark = pytest.mark.slow

POLICY = """\
max_cycles: 1
branch:
  metric: rouge_l
  min_improvement:
    default: {absolute: 0.05}
  leaf_tolerance: 0.0
regression:
  max_drop: {accuracy: 0.05, perplexity: 0.10}
  # 40 items: one question is 2.5 points, and one accuracy's binomial standard error is 7.5 points.
  # The candidate tuned on the right answers loses 3 of 40 here (0.650 -> 0.575; docs/results.md).
  suites: {general_mc: 0.10}
safety:
  required: false
"""


def _tune(model: Path, data: Path, out: Path) -> Path:
    """LoRA on every linear layer, 2 epochs of the 45 samples at 1e-4, one sample a step (90 steps). At 1e-3 or
    3e-4 the facts are learned better, but general-text perplexity rises about 20% and the gate rightly blocks
    the candidate (docs/results.md)."""
    from labcycle.tasks.tune import trainer
    from labcycle.tasks.tune.settings import LoraSettings, PhaseSettings, TuneSettings

    phase = PhaseSettings(epochs=2, learning_rate=1e-4, batch_size=1, gradient_accumulation=1, save_steps=1000,
                          logging_steps=5, max_length=256, warmup_ratio=0.0, lr_scheduler="constant")
    settings = TuneSettings(method="lora", lora=LoraSettings(r=8, alpha=16, dropout=0.0), knowledge=phase, skills=phase)
    return Path(trainer.train_phase("knowledge", model, data, out, settings)["output"])


def _evaluate(tmp: Path, taxonomy: Path, model: Path, candidate: Path, name: str, config: Path, policy: Path):
    res = subprocess.run([sys.executable, "-m", "labcycle.cli", "evaluate", "--taxonomy", str(taxonomy), "--base", "empty",
                          "--base-model", str(model), "--candidate", str(candidate), "--output", str(tmp / name),
                          "--config", str(config), "--policy", str(policy), "--format", "json"],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=1200)
    try:
        verdict = json.loads(res.stdout)
    except ValueError:
        pytest.fail(f"labcycle evaluate printed no JSON (exit {res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}")
    return res.returncode, verdict, json.loads((tmp / name / "report.json").read_text())


def test_gate_passes_learned_facts_and_fails_nonsense(smollm2, smollm2_server, tmp_path):
    taxonomy = gateproof.write_taxonomy(tmp_path / "src")
    config = tmp_path / "labcycle.yaml"
    config.write_text(f"""\
evaluation:
  endpoint: {smollm2_server.base_url}
  served_base: {smollm2_server.model}
  judge: false
  max_tokens: 48
  held_out_per_leaf: 0
  safety:
    enabled: false
""")
    policy = tmp_path / "gate.yaml"
    policy.write_text(POLICY)

    good = _tune(smollm2, gateproof.training_set(tmp_path / "correct.jsonl", "correct"), tmp_path / "good")
    code, verdict, report = _evaluate(tmp_path, taxonomy, smollm2, good, "eval-good", config, policy)
    branch = report["branch"]["overall"]
    assert code == 0, verdict
    assert verdict["decision"] == "pass" and verdict["reasons"], verdict
    assert branch["candidate"]["rouge_l"] >= branch["base"]["rouge_l"] + 0.05, branch

    bad = _tune(smollm2, gateproof.training_set(tmp_path / "nonsense.jsonl", "nonsense"), tmp_path / "bad")
    code, verdict, report = _evaluate(tmp_path, taxonomy, smollm2, bad, "eval-bad", config, policy)
    assert code == 3, verdict
    assert verdict["decision"] == "fail"
    failed = [r for r in verdict["reasons"] if r.startswith(("branch/", "leaf/")) and "fail" in r.lower()]
    assert failed, verdict["reasons"]
    assert report["branch"]["overall"]["candidate"]["rouge_l"] < report["branch"]["overall"]["base"]["rouge_l"]
    # Both evaluations asked the same seed questions of the same base.
    assert set(verdict["metrics"]) >= {"general_mc", "general_text"}
