"""`labcycle run` through the real CLI on inputs issue 15 found mishandled: a taxonomy with nothing changed
since its base is a quick, successful no-op; a teacher endpoint with credentials in its URL never shows
or stores them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def labcycle(*args: str, cwd: Path, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcycle.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=timeout, stdin=subprocess.DEVNULL)


def test_a_taxonomy_with_nothing_changed_is_a_quick_no_op(example_taxonomy: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # An unreachable teacher: a no-op must never ask it anything.
    start = time.monotonic()
    res = labcycle("run", "--taxonomy", str(example_taxonomy), "--output", str(run),
                   "--teacher-endpoint", "http://127.0.0.1:9/v1", "--teacher-model", "never-asked", cwd=tmp_path)
    elapsed = time.monotonic() - start
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Traceback" not in out
    line = next(line for line in res.stdout.splitlines() if line.startswith("nothing to do"))
    assert "no leaf changed since main" in line and "--base <ref>" in line and "--base empty" in line
    assert json.loads((run / "report.json").read_text()) == {"cycles": [], "released": None}
    assert not list(run.glob("cycle-*"))  # nothing generated
    assert elapsed < 90, elapsed  # the embedded Prefect server's start is most of it
