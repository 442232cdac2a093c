"""scripts/gpu_check.sh, the one script a lent GPU machine runs, checked on the CPU in its DRY_RUN mode so
that it still works the day a session has a device."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"


def run_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    settings = {"PYTHON": sys.executable, "VENV": "none", "WHEELS": str(tmp_path / "no-wheels"),
                "OUT": str(tmp_path / "out"), "SCRATCH": str(tmp_path), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO_ROOT, env={**os.environ, **settings},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_without_a_gpu_it_stops_at_once_and_says_why(tmp_path):
    proc = run_check(tmp_path, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    assert proc.returncode == 1
    assert "nvidia-smi not found: is this a GPU machine?" in proc.stdout
    assert (tmp_path / "out" / "gpu_check.log").read_text() == proc.stdout  # the log comes back with $OUT


@pytest.mark.slow
def test_dry_run_measures_labcycle_and_the_trl_baseline(tmp_path):
    """Tiny sizes on the CPU (about a minute): environment report, the model built once, one bench/train.py
    call timing both paths, and a JSON a session with a device would record in docs/benchmarks.md."""
    proc = run_check(tmp_path, DRY_RUN="1", RUNS="qlora:labcycle,baseline", STEPS="2", SAMPLES="16", BUDGET_S="500")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "warning: no wheels in" in proc.stdout
    env = (tmp_path / "out" / "env.txt").read_text()
    assert "MISSING" not in env and str(tmp_path) in env  # labcycle imported from the shim in SCRATCH
    result = json.loads((tmp_path / "out" / "qlora-labcycle-baseline.json").read_text())
    assert not result["partial"] and result["method"] == "qlora"
    assert set(result["results"]) == {"labcycle", "baseline"}
    for path in result["results"].values():
        assert path["tokens_per_s"] > 0 and path["peak_memory_gib"] > 0 and path["steps"] == 2
    assert result["results"]["labcycle"]["padding_waste"] < 0.02
    assert Path(result["model"]["dir"]).parent == tmp_path and (Path(result["model"]["dir"]) / "config.json").exists()
