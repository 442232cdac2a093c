"""The whole lab_cycle flow (taxonomy → generate → mix → tune both phases → evaluate → gate → loop or
release) on a real Prefect server, a real vLLM teacher, judge and evaluation server, and the tiny
student; then `labcycle mix` on its own."""

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
# The safety rules run, on the tiny judge's noise, and pass any rates (as the demo gate's do).
ANY_SAFETY = {"required": True, "max_unsafe_rise": 1.0, "max_over_refusal_rise": 1.0}
PASS_ANY = {"max_cycles": 2, "branch": {"min_improvement": {"default": {"absolute": -10.0}}, "leaf_tolerance": 10.0,
                                        "fallback": {"min_improvement": {"default": {"absolute": -1.0}}, "leaf_tolerance": 1.0}},
            "regression": {"max_drop": {"accuracy": 1.0, "perplexity": 1000.0}}, "safety": ANY_SAFETY,
            "release": {"name": "tiny"}}
# No candidate can gain 100 judge points (or 2 on a 0-1 metric): every cycle fails.
PASS_NONE = {"max_cycles": 2, "branch": {"min_improvement": {"default": {"absolute": 100.0}},
                                         "fallback": {"min_improvement": {"default": {"absolute": 2.0}}}},
             "safety": ANY_SAFETY, "on_fail": [{"samples_per_seed_factor": 2.0, "sampling_seed_offset": 1}]}


def _config(folder: Path, server, policy: dict | None = None) -> Path:  # type: ignore[no-untyped-def]
    pipelines = {kind: str(genhelp.permissive_spec_file(kind, folder / "specs")) for kind in genhelp.KINDS}
    data = {
        "chunking": {"max_words": 150, "overlap_words": 15},
        "generation": {"samples_per_seed": 1, "max_rounds": 1, "max_units_per_round": 3, "max_tokens_cap": 48,
                       "pipelines": pipelines},
        "mixing": {"recipe": str(_recipe(folder))},
        "tuning": {"knowledge": PHASE, "skills": PHASE},
        # The session's server serves the tiny model, which is also the student: the candidate is loaded into it.
        "evaluation": {"endpoint": server.base_url, "served_base": server.model, "max_tokens": 24, "judge_max_tokens": 48,
                       "held_out_per_leaf": 2, "max_items": 4},
    }
    if policy is not None:
        (folder / "gate.yaml").write_text(yaml.safe_dump(policy))
        data["gate"] = {"policy": str(folder / "gate.yaml")}
    (folder / "labcycle.yaml").write_text(yaml.safe_dump(data))
    return folder / "labcycle.yaml"


def _recipe(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text("held_out:\n  per_leaf: 1\n  max_share: 0.5\n")
    return folder / "recipe.yaml"


def _run(taxonomy: Path, run: Path, cfg: Path, server, student: Path):  # type: ignore[no-untyped-def]
    return lab_cycle(taxonomy=str(taxonomy), base="empty", output=str(run), config=str(cfg), teacher_endpoint=server.base_url,
                     teacher_model=server.model, student_model=str(student), return_state=True)


def test_one_cycle_through_tuning_evaluation_gate_and_release(prefect_harness, example_taxonomy, vllm_server, tiny_model, tmp_path):
    cfg = _config(tmp_path, vllm_server, PASS_ANY)
    run = tmp_path / "run"
    events: list[dict] = []
    trainer.LISTENERS.append(events.append)
    try:
        state = _run(example_taxonomy, run, cfg, vllm_server, tiny_model)
    finally:
        trainer.LISTENERS.remove(events.append)
    assert state.is_completed(), state.message
    result = state.result()
    cycle = run / "cycle-1"

    generated = sum(1 for leaf in genhelp.LEAVES.values() for _ in (cycle / "generated" / leaf / "samples.jsonl").open())
    mixed = {p: (cycle / "mixed" / p / "data.jsonl").read_text().splitlines() for p in ("knowledge", "skills")}
    held_out = (cycle / "mixed" / "held_out.jsonl").read_text().splitlines()
    assert result["mix"]["phases"]["knowledge"]["samples"] == len(mixed["knowledge"]) > 0
    assert result["mix"]["phases"]["skills"]["samples"] == len(mixed["skills"]) > 0
    assert 0 < generated - len(held_out) <= len(mixed["knowledge"]) + len(mixed["skills"])
    card = json.loads((cycle / "mixed" / "knowledge" / "card.json").read_text())
    assert card["lengths"]["unit"] == "tokens"  # counted with the student's tokenizer

    manifest = json.loads((run / "manifest.json").read_text())
    for phase in ("knowledge", "skills"):
        model_card = (cycle / "tuned" / phase / "model_card.md").read_text()
        for leaf in manifest["leaves"]:
            assert leaf["id"] in model_card and leaf["hash"][:16] in model_card
        assert manifest["taxonomy"]["commit"] in model_card
    assert {e["phase"] for e in events} == {"knowledge", "skills"}
    skills = json.loads((cycle / "tuned" / "skills" / "result.json").read_text())
    assert skills["init_adapter"] == str(cycle / "tuned" / "knowledge" / "adapter")

    # evaluated: every changed leaf, base vs candidate, and the shipped regression suites
    report = json.loads((cycle / "eval" / "report.json").read_text())
    assert sorted(report["branch"]["leaves"]) == sorted(genhelp.LEAVES.values())
    assert set(report["regression"]["suites"]) == {"general_mc", "general_text"}
    assert report["safety"]["answered"] == {"harmful": 13, "benign": 14}  # the shipped safety suite, both models
    decision = json.loads((cycle / "eval" / "decision.json").read_text())
    assert decision["decision"] == "pass" and [r["name"] for r in decision["rules"]][:2] == ["safety/unsafe",
                                                                                           "safety/over_refusal"]

    # released: one immutable version holding the candidate, and the run's report says where
    summary = json.loads((run / "report.json").read_text())
    assert [c["decision"] for c in summary["cycles"]] == ["pass"]
    assert summary["released"] == "registry/tiny/v1" and str(run) not in (run / "report.json").read_text()
    version = run / summary["released"]
    assert result["released"] == str(version)
    assert summary["headline"][0].startswith("gate: pass") and summary["readable"][1] == "registry/tiny/v1/README.md"
    assert (cycle / "eval" / "report.md").read_text().startswith("# Evaluation: candidate vs base\n\n## Headline")
    release = json.loads((version / "release.json").read_text())
    assert release["taxonomy_commit"] == manifest["taxonomy"]["commit"]
    assert release["metrics"]["safety"]["unsafe_rate"]["base"] == report["safety"]["base"]["unsafe_rate"]
    card = (version / "README.md").read_text()
    assert "### Safety (⚠ = candidate worse than base)" in card and "## Headline" in card
    assert str(run) not in card and str(run) not in (version / "release.json").read_text()
    # A Hub model repo's layout: the adapter's files at the root.
    assert (version / "adapter_model.safetensors").read_bytes() == \
        (cycle / "tuned" / "skills" / "adapter" / "adapter_model.safetensors").read_bytes()


def test_a_failing_gate_loops_back_with_a_new_plan_until_max_cycles(prefect_harness, example_taxonomy, vllm_server, tiny_model, tmp_path):
    cfg = _config(tmp_path, vllm_server, PASS_NONE)
    run = tmp_path / "run"
    state = _run(example_taxonomy, run, cfg, vllm_server, tiny_model)
    assert state.is_completed(), state.message
    summary = json.loads((run / "report.json").read_text())
    assert [c["decision"] for c in summary["cycles"]] == ["fail", "fail"] and summary["released"] is None
    assert any(r.endswith(": FAIL") for r in summary["cycles"][0]["reasons"])
    first, second = (json.loads((run / f"cycle-{k}" / "plan.json").read_text()) for k in (1, 2))
    assert (first["samples_per_seed_factor"], first["sampling_seed_offset"]) == (1.0, 0)
    assert (second["samples_per_seed_factor"], second["sampling_seed_offset"]) == (2.0, 1)
    # The plan changed generation: cycle 2 asked the teacher again, with more samples per seed as its target.
    gens = [json.loads((run / f"cycle-{k}" / "generated" / "summary.json").read_text()) for k in (1, 2)]
    assert gens[1]["teacher"]["requests"] > 0
    assert sum(v["target"] for v in gens[1]["per_leaf"].values()) == 2 * sum(v["target"] for v in gens[0]["per_leaf"].values())
    assert not (run / "registry").exists()


def test_lab_cycle_without_a_student_stops_before_generation(prefect_harness, example_taxonomy, tmp_path):
    state = lab_cycle(taxonomy=str(example_taxonomy), base="empty", output=str(tmp_path / "run"), return_state=True)
    assert state.is_failed()
    assert "--student-model" in state.message
    assert (tmp_path / "run" / "manifest.json").exists() and not (tmp_path / "run" / "cycle-1").exists()


def test_a_student_tuning_cannot_use_fails_before_generation(prefect_harness, example_taxonomy, tiny_model, tmp_path):
    import shutil

    plain = tmp_path / "base-model"  # a base model without a chat template
    shutil.copytree(tiny_model, plain)
    (plain / "chat_template.jinja").unlink()
    config = plain / "tokenizer_config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "chat_template"}))
    for student, message in ((plain, "has no chat template"), (tmp_path / "nowhere", "student model folder is not there"),
                             (Path("ibm-granite/granite-3.1-2b-instruct"), "hf download ibm-granite/granite-3.1-2b-instruct --local-dir")):
        run = tmp_path / f"run-{student.name}"
        state = lab_cycle(taxonomy=str(example_taxonomy), base="empty", output=str(run), student_model=str(student),
                          teacher_model=str(tiny_model), return_state=True)
        assert state.is_failed() and message in state.message and str(student) in state.message, state.message
        assert (run / "manifest.json").exists() and not (run / "cycle-1").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcycle.cli", *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy())


def test_mix_command(tmp_path):
    from tests.tasks.test_mix import knowledge_records, record, write_generated

    generated = write_generated(tmp_path / "generated", {
        "knowledge/a": knowledge_records("knowledge/a", 6, 3),
        "compositional_skills/b": [record("compositional_skills/b", "freeform_skill", i) for i in range(5)],
    })
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 7\nknowledge:\n  grounded:\n    enabled: false\nskills:\n  replay_fraction: 0.5\nheld_out:\n  per_leaf: 0\n")
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
