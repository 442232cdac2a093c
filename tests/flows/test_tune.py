"""The tune flow and `labcycle tune` on a real (temporary) Prefect server: both phases on the tiny student,
phase 2 from phase 1, cache hits that train nothing, the merge mode, and the command line's contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labcycle.flows.tune import tune
from labcycle.tasks.tune import trainer

pytestmark = pytest.mark.slow

PHASE = {"max_steps": 6, "batch_size": 4, "gradient_accumulation": 1, "save_steps": 3, "logging_steps": 2,
         "max_length": 256, "learning_rate": 5e-3}


def _data(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("knowledge", [(f"What does document {i} say?", f"Document {i} says risk {i} is high.") for i in range(8)]),
                       ("skills", [(f"Summarise risk {i}.", f"Risk {i}: summarised.") for i in range(8)])):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                                for q, a in rows))
        paths.append(path)
    return paths[0], paths[1]


def _config(path: Path, seed: int = 42, **tuning) -> Path:  # type: ignore[no-untyped-def]
    phase = {**PHASE, "seed": seed}  # another seed: not a cache hit on another test's training
    path.write_text(yaml.safe_dump({"tuning": {"lora": {"r": 4, "alpha": 8}, "knowledge": phase, "skills": phase, **tuning}}))
    return path


def _latest_artifact(key: str):  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     sort=ArtifactSort.CREATED_DESC, limit=1)[0]


def _events():  # type: ignore[no-untyped-def]
    events: list[dict] = []
    trainer.LISTENERS.append(events.append)
    return events


def test_two_phases_then_a_cache_hit(prefect_harness, tiny_model, tmp_path):
    knowledge, skills = _data(tmp_path / "data")
    cfg = _config(tmp_path / "labcycle.yaml")
    events = _events()
    try:
        state = tune(output=str(tmp_path / "out"), base_model=str(tiny_model), knowledge_data=str(knowledge),
                     skills_data=str(skills), config=str(cfg), lineage={"taxonomy_commit": "c0ffee"}, return_state=True)
        assert state.is_completed(), state.message
        first = state.result()
        assert {e["phase"] for e in events} == {"knowledge", "skills"}
        for phase in ("knowledge", "skills"):
            folder = tmp_path / "out" / phase
            assert (folder / "adapter" / "adapter_model.safetensors").exists()
            assert "c0ffee" in (folder / "model_card.md").read_text()
            assert (folder / "loss.png").exists()
            assert json.loads((folder / "result.json").read_text())["output"] == str(folder / "adapter")
        # continue mode: phase 2 keeps training phase 1's adapter on the same base
        assert first["phases"]["skills"]["init_adapter"] == str(tmp_path / "out" / "knowledge" / "adapter")
        assert first["phases"]["skills"]["base_model"] == str(tiny_model)
        for phase in ("knowledge", "skills"):
            table = _latest_artifact(f"tuning-loss-{phase}")
            steps = [row["step"] for row in json.loads(table.data)]
            assert table.type == "table" and steps[0] == 1 and steps[-1] == 6
            assert _latest_artifact(f"tuning-progress-{phase}").data == 100.0

        # Same inputs, another output folder: both phases are cache hits, nothing is trained.
        events.clear()
        state = tune(output=str(tmp_path / "out2"), base_model=str(tiny_model), knowledge_data=str(knowledge),
                     skills_data=str(skills), config=str(cfg), lineage={"taxonomy_commit": "c0ffee"}, return_state=True)
        assert state.is_completed(), state.message
        assert events == []
        assert (tmp_path / "out2" / "skills" / "adapter" / "adapter_model.safetensors").read_bytes() == \
            (tmp_path / "out" / "skills" / "adapter" / "adapter_model.safetensors").read_bytes()

        # Changed skills data: phase 1 is still a cache hit, only phase 2 trains.
        skills.write_text(skills.read_text().replace("summarised", "in short"))
        state = tune(output=str(tmp_path / "out3"), base_model=str(tiny_model), knowledge_data=str(knowledge),
                     skills_data=str(skills), config=str(cfg), return_state=True)
        assert state.is_completed(), state.message
        assert {e["phase"] for e in events} == {"skills"}
    finally:
        trainer.LISTENERS.remove(events.append)


def test_merge_mode_trains_a_new_adapter_on_the_merged_phase_1(prefect_harness, tiny_model, tmp_path):
    knowledge, skills = _data(tmp_path / "data")
    cfg = _config(tmp_path / "labcycle.yaml", phase2_start="merge", method="lora")
    state = tune(output=str(tmp_path / "out"), base_model=str(tiny_model), knowledge_data=str(knowledge),
                 skills_data=str(skills), config=str(cfg), return_state=True)
    assert state.is_completed(), state.message
    phases = state.result()["phases"]
    merged = tmp_path / "out" / "knowledge" / "merged"
    assert phases["knowledge"]["merged"] == str(merged) and (merged / "model.safetensors").exists()
    assert phases["skills"]["init_adapter"] is None
    assert phases["skills"]["base_model"].endswith("merged")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run([sys.executable, "-m", "labcycle.cli", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_tune_command(prefect_harness, tiny_model, tmp_path):
    knowledge, _ = _data(tmp_path / "data")
    cfg = _config(tmp_path / "labcycle.yaml", seed=7)
    res = _cli("tune", "--phase", "knowledge", "--base-model", str(tiny_model), "--knowledge-data", str(knowledge),
               "--output", str(tmp_path / "out"), "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "knowledge" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "out" / "knowledge" / "model_card.md").exists()
    assert not (tmp_path / "out" / "skills").exists()
    assert "tuned knowledge: 6 steps" in res.stdout
    assert "tune knowledge" in res.stderr  # the progress bar

    # skills alone on the same output: starts from the knowledge adapter found there
    _, skills = _data(tmp_path / "data")
    res = _cli("tune", "--phase", "skills", "--base-model", str(tiny_model), "--skills-data", str(skills),
               "--output", str(tmp_path / "out"), "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "out" / "skills" / "result.json").read_text())
    assert result["init_adapter"] == str(tmp_path / "out" / "knowledge" / "adapter")


@pytest.mark.parametrize("args, code, expect", [
    (["--phase", "both", "--base-model", "{tmp}/nope", "--output", "{tmp}/o"], 2, "--base-model"),
    (["--phase", "skills", "--base-model", "{model}", "--output", "{tmp}/o"], 1, "--skills-data"),
    (["--phase", "knowledge", "--base-model", "{tmp}", "--knowledge-data", "{tmp}", "--output", "{tmp}/o"], 1, "config.json"),
    (["--phase", "sideways", "--base-model", "{model}", "--output", "{tmp}/o"], 2, "sideways"),
    (["--base-model", "{model}", "--knowledge-data", "{tmp}", "--output", "{tmp}/o", "--config", "{tmp}/bad.yaml"], 1,
     "bad.yaml:2:3: tuning.attention: 'flash' is not one of"),
])
def test_tune_command_errors(prefect_harness, tiny_model, tmp_path, args, code, expect):
    (tmp_path / "bad.yaml").write_text("tuning:\n  attention: flash\n")
    res = _cli("tune", *[a.format(tmp=tmp_path, model=tiny_model) for a in args], cwd=tmp_path)
    assert res.returncode == code, res.stdout + res.stderr
    assert expect in res.stderr
    assert "Traceback" not in res.stderr
