"""`--format json` for run, generate, mix and tune: the summary the text output is printed from, as one
JSON object on stdout and nothing else there (logs and progress bars go to stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stubteacher import StubTeacher


def labcycle(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcycle.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=300, stdin=subprocess.DEVNULL)


def _harness_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's Prefect server: no start-up wait


def test_mix_json(tmp_path):
    from tests.tasks.test_mix import knowledge_records, record, write_generated

    generated = write_generated(tmp_path / "generated", {
        "knowledge/a": knowledge_records("knowledge/a", 6, 3),
        "compositional_skills/b": [record("compositional_skills/b", "freeform_skill", i) for i in range(5)],
    })
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 7\nknowledge:\n  grounded:\n    enabled: false\nskills:\n  replay_fraction: 0.5\nheld_out:\n  per_leaf: 0\n")
    args = ("mix", "--generated", str(generated), "--recipe", str(recipe))
    text = labcycle(*args, "--output", str(tmp_path / "text"), cwd=tmp_path)
    res = labcycle(*args, "--output", str(tmp_path / "json"), "--format", "json", cwd=tmp_path)
    assert res.returncode == 0 and text.returncode == 0, res.stderr
    summary = json.loads(res.stdout)  # the whole of stdout is one object
    assert summary["phases"]["knowledge"]["samples"] == 6 and summary["phases"]["skills"]["samples"] == 8
    # the numbers the text output shows, from the same summary
    for phase in ("knowledge", "skills"):
        info = summary["phases"][phase]
        assert f"{phase}: {info['samples']} samples in {tmp_path / 'text' / info['data']}" in " ".join(text.stdout.split())


@pytest.mark.slow
def test_run_and_generate_json(prefect_harness, example_taxonomy, tmp_path):
    env = _harness_env()
    res = labcycle("run", "--until", "taxonomy", "--taxonomy", str(example_taxonomy), "--base", "empty",
                   "--output", str(tmp_path / "run"), "--format", "json", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["leaves"] == 3 and Path(summary["manifest"]).is_file()

    config = tmp_path / "labcycle.yaml"
    config.write_text("generation:\n  samples_per_seed: 1\n  max_rounds: 1\n  max_units_per_round: 1\n")
    with StubTeacher() as teacher:
        res = labcycle("generate", "--taxonomy", str(example_taxonomy), "--base", "empty", "--output", str(tmp_path / "gen"),
                       "--config", str(config), "--teacher-endpoint", teacher.url, "--teacher-model", "m", "--format", "json",
                       cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    gen = summary["generation"]
    assert gen["requests"] > 0 and set(gen["per_leaf"]) and gen["output"].startswith(str(tmp_path / "gen"))
    assert "lab-cycle completed" not in res.stdout
    # stderr is no terminal here: progress comes as plain lines, one per leaf, not as bars drawn at the end.
    for leaf in gen["per_leaf"]:
        assert f"{leaf}: " in res.stderr, res.stderr[-3000:]


@pytest.mark.slow
def test_tune_json(prefect_harness, tiny_model, tmp_path):
    from tests.flows.test_tune import _config, _data

    knowledge, _ = _data(tmp_path / "data")
    res = labcycle("tune", "--phase", "knowledge", "--base-model", str(tiny_model), "--knowledge-data", str(knowledge),
                   "--output", str(tmp_path / "out"), "--config", str(_config(tmp_path / "labcycle.yaml", seed=13)),
                   "--format", "json", cwd=tmp_path, env=_harness_env())
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    info = summary["phases"]["knowledge"]
    assert info["metrics"]["steps"] == 6 and Path(info["output"]).is_dir()
    # Progress stays on stderr, as a line (no terminal here); seed 13 is this test's own, so it trains (no cache hit).
    assert "tune knowledge: 6/6" in res.stderr, res.stderr[-3000:]
