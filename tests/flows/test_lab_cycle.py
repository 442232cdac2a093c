"""The whole lab_cycle flow so far (taxonomy → generate → mix → tune both phases) on a real Prefect server, a
real vLLM teacher and the tiny student; then `labcycle mix` on the run's generated samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labcycle.flows.lab_cycle import lab_cycle
from labcycle.tasks.tune import trainer
from tests import genhelp

pytestmark = pytest.mark.slow

PHASE = {"epochs": 1, "batch_size": 4, "gradient_accumulation": 1, "save_steps": 5, "logging_steps": 1, "max_length": 512}


def _config(path: Path, specs: Path) -> Path:
    pipelines = {kind: str(genhelp.permissive_spec_file(kind, specs)) for kind in genhelp.KINDS}
    path.write_text(yaml.safe_dump({
        "chunking": {"max_words": 150, "overlap_words": 15},
        "generation": {"samples_per_seed": 1, "max_rounds": 1, "max_units_per_round": 3, "max_tokens_cap": 48,
                       "pipelines": pipelines},
        "tuning": {"knowledge": PHASE, "skills": PHASE},
    }))
    return path


def test_lab_cycle_runs_through_both_tuning_phases(prefect_harness, example_taxonomy, vllm_server, tiny_model, tmp_path):
    cfg = _config(tmp_path / "labcycle.yaml", tmp_path / "specs")
    run = tmp_path / "run"
    events: list[dict] = []
    trainer.LISTENERS.append(events.append)
    try:
        state = lab_cycle(taxonomy=str(example_taxonomy), base="empty", output=str(run), config=str(cfg),
                          teacher_endpoint=vllm_server.base_url, teacher_model=vllm_server.model,
                          student_model=str(tiny_model), return_state=True)
    finally:
        trainer.LISTENERS.remove(events.append)
    assert state.is_completed(), state.message
    result = state.result()

    generated = sum(1 for leaf in genhelp.LEAVES.values() for _ in (run / "generated" / leaf / "samples.jsonl").open())
    mixed = {p: (run / "mixed" / p / "data.jsonl").read_text().splitlines() for p in ("knowledge", "skills")}
    assert result["mix"]["phases"]["knowledge"]["samples"] == len(mixed["knowledge"]) > 0
    assert result["mix"]["phases"]["skills"]["samples"] == len(mixed["skills"]) > 0
    assert 0 < generated <= len(mixed["knowledge"]) + len(mixed["skills"])
    card = json.loads((run / "mixed" / "knowledge" / "card.json").read_text())
    assert "token" in json.dumps(card["lengths"])  # counted with the student's tokenizer

    manifest = json.loads((run / "manifest.json").read_text())
    for phase in ("knowledge", "skills"):
        folder = run / "tuned" / phase
        assert (folder / "adapter" / "adapter_model.safetensors").exists()
        model_card = (folder / "model_card.md").read_text()
        for leaf in manifest["leaves"]:
            assert leaf["id"] in model_card and leaf["hash"][:16] in model_card
        assert manifest["taxonomy"]["commit"] in model_card
    assert {e["phase"] for e in events} == {"knowledge", "skills"}
    skills = json.loads((run / "tuned" / "skills" / "result.json").read_text())
    assert skills["init_adapter"] == str(run / "tuned" / "knowledge" / "adapter")


def test_lab_cycle_without_a_student_stops_before_generation(prefect_harness, example_taxonomy, tmp_path):
    state = lab_cycle(taxonomy=str(example_taxonomy), base="empty", output=str(tmp_path / "run"), return_state=True)
    assert state.is_failed()
    assert "--student-model" in state.message
    assert (tmp_path / "run" / "manifest.json").exists() and not (tmp_path / "run" / "generated").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcycle.cli", *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy())


def test_mix_command(tmp_path):
    from tests.tasks.test_mix import knowledge_records, record, write_generated

    generated = write_generated(tmp_path / "generated", {
        "knowledge/a": knowledge_records("knowledge/a", 6, 3),
        "compositional_skills/b": [record("compositional_skills/b", "freeform_skill", i) for i in range(5)],
    })
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 7\nknowledge:\n  grounded:\n    enabled: false\nskills:\n  replay_fraction: 0.5\n")
    res = _cli("mix", "--generated", str(generated), "--output", str(tmp_path / "mixed"), "--recipe", str(recipe), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"knowledge: 6 samples in {tmp_path / 'mixed' / 'knowledge' / 'data.jsonl'}" in " ".join(res.stdout.split())
    assert "skills: 8 samples" in res.stdout  # 5 generated + round(0.5 x 6) replayed
    assert (tmp_path / "mixed" / "skills" / "dataset_card.md").exists()

    res = _cli("mix", "--generated", str(tmp_path / "nope"), "--output", str(tmp_path / "m2"), cwd=tmp_path)
    assert res.returncode == 2 and "--generated" in res.stderr
    recipe.write_text("seed: [1]\n")
    res = _cli("mix", "--generated", str(generated), "--output", str(tmp_path / "m3"), "--recipe", str(recipe), cwd=tmp_path)
    assert res.returncode == 1 and f"{recipe}:1:" in res.stderr and "Traceback" not in res.stderr
