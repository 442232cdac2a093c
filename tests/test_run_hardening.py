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

from tests.stubteacher import StubTeacher


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

    # As a push starts it: the flow clones the repository, and origin/main is the pushed commit.
    res = labcycle("run", "--taxonomy-repo", str(example_taxonomy), "--output", str(tmp_path / "pushed"),
                   "--teacher-endpoint", "http://127.0.0.1:9/v1", "--teacher-model", "never-asked", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing to do: no leaf changed since origin/main" in res.stdout
    assert json.loads((tmp_path / "pushed" / "report.json").read_text()) == {"cycles": [], "released": None}


KEY = "sk-url-secret-7c41d9e2"


def auth_teacher() -> StubTeacher:
    """The stub teacher wanting HTTP basic auth user:KEY."""
    import base64

    return StubTeacher(login="Basic " + base64.b64encode(f"user:{KEY}".encode()).decode())


def test_a_key_in_the_teacher_url_reaches_the_teacher_and_nothing_else(prefect_harness, example_taxonomy: Path,
                                                                       tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("LABCYCLE_TEACHER_API_KEY", None)
    config = tmp_path / "labcycle.yaml"
    config.write_text("generation:\n  samples_per_seed: 1\n  max_rounds: 1\n  max_units_per_round: 1\n")
    run = tmp_path / "run"
    with get_client(sync_client=True) as client:
        before = {r.id for r in client.read_flow_runs(limit=200)}
    with auth_teacher() as server:
        port = server.port
        res = labcycle("run", "--until", "generate", "--taxonomy", str(example_taxonomy), "--base", "empty",
                       "--output", str(run), "--config", str(config), "--teacher-model", "m-with-login",
                       "--teacher-endpoint", f"http://user:{KEY}@127.0.0.1:{port}/v1", cwd=tmp_path, env=env, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert server.logins and all(server.logins)  # every request carried the credential (a model name no other test uses: no cache hit)
    assert KEY not in out
    for path in run.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(limit=200) if r.id not in before]
        assert runs
        for flow_run in runs:
            assert KEY not in json.dumps(flow_run.parameters, default=str), flow_run.name
            assert KEY not in (flow_run.state.message or "" if flow_run.state else "")
        lab = next(r for r in runs if r.parameters.get("teacher_endpoint"))
        assert lab.parameters["teacher_endpoint"] == f"http://127.0.0.1:{port}/v1"


def test_credentials_from_the_environment_go_to_their_own_url_only(monkeypatch) -> None:
    from labcycle.urls import TEACHER_URL, redact, teacher_userinfo

    monkeypatch.setenv(TEACHER_URL, f"https://user:{KEY}@teacher.example/v1")
    assert teacher_userinfo("https://teacher.example/v1/") == ("https://teacher.example/v1/", f"user:{KEY}")
    assert teacher_userinfo("http://127.0.0.1:8000/v1") == ("http://127.0.0.1:8000/v1", None)  # e.g. the evaluation's own server
    assert teacher_userinfo(f"http://u:{KEY}@h/v1") == ("http://h/v1", f"u:{KEY}")
    assert redact(f"https://{KEY}@h/v1") == "https://h/v1" and redact("/a/local@path") == "/a/local@path"


def test_a_flow_started_with_a_key_in_the_url_keeps_it_out_of_its_stage_runs(prefect_harness, example_taxonomy: Path,
                                                                              tmp_path: Path, monkeypatch) -> None:
    """As a run started from the UI or the API: the flow's own parameter holds what it was given, the
    generate subflow's does not, and the teacher still gets the login."""
    from prefect.client.orchestration import get_client

    from labcycle.flows.lab_cycle import lab_cycle
    from labcycle.urls import TEACHER_URL

    monkeypatch.setenv(TEACHER_URL, "")  # restored to unset afterwards
    monkeypatch.delenv("LABCYCLE_TEACHER_API_KEY", raising=False)
    config = tmp_path / "labcycle.yaml"
    config.write_text("generation:\n  samples_per_seed: 1\n  max_rounds: 1\n  max_units_per_round: 1\n")
    with auth_teacher() as server:
        port = server.port
        state = lab_cycle(taxonomy=str(example_taxonomy), base="empty", output=str(tmp_path / "run"), config=str(config),
                          teacher_endpoint=f"http://user:{KEY}@127.0.0.1:{port}/v1", teacher_model="m2", until="generate",
                          return_state=True)
    assert state.is_completed(), state.message
    assert server.logins and all(server.logins)  # another teacher model than the CLI test's: no cache hit
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    # The suite shares one Prefect server: only this run's own subflows are read.
    mine = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id]))
    def endpoint(params: dict) -> str:  # the teacher the stage run was given, in the config lab_cycle handed down
        return ((params.get("config") or {}).get("generation") or {}).get("teacher", {}).get("endpoint") or ""

    with get_client(sync_client=True) as client:
        [child] = [r for r in client.read_flow_runs(flow_run_filter=mine) if endpoint(r.parameters).endswith(f":{port}/v1")]
    assert endpoint(child.parameters) == f"http://127.0.0.1:{port}/v1"
    assert KEY not in json.dumps(child.parameters)
