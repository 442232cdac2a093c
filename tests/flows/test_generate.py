"""The lab_cycle flow through generation, on a real (temporary) Prefect server and a real vLLM server on a
tiny random model: outputs and artifacts, Prefect cache hits that send the teacher nothing, and
regeneration of exactly the leaf that changed. Also the `labcycle generate` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from labcycle.flows.lab_cycle import lab_cycle
from labcycle.tasks.generate import runner
from labcycle.tasks.generate.spec import load_spec, shipped_spec_path
from labcycle.teacher.openai_client import metrics
from tests import genhelp

pytestmark = pytest.mark.slow

LEAF_IDS = sorted(genhelp.LEAVES.values())
SKILL = genhelp.LEAVES["freeform_skill"]
COUNTERS = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total")


def _config(path: Path, pipelines: dict[str, str] | None = None) -> Path:
    generation = {"samples_per_seed": 1, "max_rounds": 1, "max_units_per_round": 3, "max_tokens_cap": 64}
    if pipelines:
        generation["pipelines"] = pipelines
    path.write_text(yaml.safe_dump({"chunking": {"max_words": 150, "overlap_words": 15}, "generation": generation}))
    return path


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _client():  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _latest_artifact(key: str):  # type: ignore[no-untyped-def]
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with _client() as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    return found[0] if found else None


def _generate_task_runs() -> dict:  # id -> task run
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with _client() as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="generate: ")))
    return {r.id: r for r in runs}


def _published(run: Path) -> dict[str, dict[str, bytes]]:
    return {leaf: {name: (run / "cycle-1" / "generated" / leaf / name).read_bytes() for name in (runner.SAMPLES, runner.YIELD)}
            for leaf in LEAF_IDS}


def _counters(server) -> dict[str, float]:  # type: ignore[no-untyped-def]
    m = metrics(server.base_url)
    return {k: m.get(k, 0.0) for k in COUNTERS}


def _run(taxonomy: Path, out: Path, cfg: Path, server) -> dict:  # type: ignore[no-untyped-def]
    state = lab_cycle(taxonomy=str(taxonomy), base="empty", output=str(out), config=str(cfg),
                      teacher_endpoint=server.base_url, teacher_model=server.model, until="generate", return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def test_lab_cycle_generates_caches_and_regenerates_only_what_changed(prefect_harness, example_taxonomy, vllm_server, tmp_path):
    # Judges that keep every readable judgement, so every leaf publishes samples to compare across runs.
    specs_dir = tmp_path / "specs"
    pipelines = {kind: str(genhelp.permissive_spec_file(kind, specs_dir)) for kind in genhelp.KINDS}
    cfg = _config(tmp_path / "labcycle.yaml", pipelines)

    # 1. First run: every leaf is generated.
    start = _counters(vllm_server)
    tasks_before = _generate_task_runs()
    first = _run(example_taxonomy, tmp_path / "run1", cfg, vllm_server)
    after_first = _counters(vllm_server)
    run1 = tmp_path / "run1"
    gen = first["generation"]
    assert first["leaves"] == 3 and gen["leaves"] == 3

    manifest = json.loads((run1 / "manifest.json").read_text())
    hashes = {e["id"]: e["hash"] for e in manifest["leaves"]}
    kinds = {e["id"]: e["kind"] for e in manifest["leaves"]}
    assert sorted(hashes) == LEAF_IDS
    for leaf_id in LEAF_IDS:
        report = json.loads((run1 / "cycle-1" / "generated" / leaf_id / runner.YIELD).read_text())
        spec = load_spec(Path(pipelines[kinds[leaf_id]]))
        genhelp.check_work_folder(Path(report["work_dir"]), spec)  # the work folder behind what was published
        assert (run1 / "cycle-1" / "generated" / leaf_id / runner.SAMPLES).read_bytes() == (Path(report["work_dir"]) / runner.SAMPLES).read_bytes()
        samples = [json.loads(line) for line in genhelp.lines(run1 / "cycle-1" / "generated" / leaf_id / runner.SAMPLES)]
        assert samples and all(r["metadata"]["leaf_hash"] == hashes[leaf_id] for r in samples)
        assert all(r["metadata"]["teacher_model"] == vllm_server.model for r in samples)
    chunks = genhelp.lines(run1 / "documents" / genhelp.LEAVES["knowledge"] / "chunks.jsonl")
    assert all(len(json.loads(c)["text"].split()) <= 150 for c in chunks)  # the config's chunking applied

    summary = json.loads((run1 / "cycle-1" / "generated" / "summary.json").read_text())
    assert summary["leaves"] == 3 and summary["samples"] == gen["samples"] > 0
    assert summary["requests"] == summary["teacher"]["requests"] > 0
    assert summary["prompt_tokens"] > 0 and summary["completion_tokens"] > 0
    assert summary["teacher"]["max_in_flight"] <= 32 and summary["teacher"]["failures"] == 0
    assert sorted(summary["per_leaf"]) == LEAF_IDS
    # vLLM counts each of a request's n samples (generate_context asks for 10) as one request.
    assert after_first["vllm:request_success_total"] - start["vllm:request_success_total"] >= summary["requests"]
    assert after_first["vllm:prompt_tokens_total"] - start["vllm:prompt_tokens_total"] >= summary["prompt_tokens"]

    table = _latest_artifact("generation-yield")
    assert table is not None and table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert sorted(r["leaf"] for r in rows) == LEAF_IDS
    progress = _latest_artifact("generation-progress")
    assert progress is not None and progress.type == "progress" and float(progress.data) == 100.0
    first_tasks = {k: v for k, v in _generate_task_runs().items() if k not in tasks_before}
    assert len(first_tasks) == 3 and all(t.state.name == "Completed" for t in first_tasks.values())

    # 2. The same taxonomy again, into a new run folder: Prefect cache hits, the teacher is not asked.
    second = _run(example_taxonomy, tmp_path / "run2", cfg, vllm_server)
    assert _counters(vllm_server) == after_first
    assert _published(tmp_path / "run2") == _published(run1)
    assert second["generation"]["samples"] == gen["samples"]
    summary2 = json.loads((tmp_path / "run2" / "cycle-1" / "generated" / "summary.json").read_text())
    assert summary2["teacher"]["requests"] == summary2["requests"] == 0 and summary2["generation"]["requests"] > 0
    second_tasks = {k: v for k, v in _generate_task_runs().items() if k not in tasks_before and k not in first_tasks}
    assert len(second_tasks) == 3 and all(t.state.name == "Cached" for t in second_tasks.values()), \
        [t.state.name for t in second_tasks.values()]

    # 3. One skill leaf changes: only it is generated again.
    qna = example_taxonomy / SKILL / "qna.yaml"
    qna.write_text(qna.read_text().replace("created_by: labcycle", "created_by: someone-else"))
    _git(example_taxonomy, "commit", "-qam", "change one skill leaf")
    third = _run(example_taxonomy, tmp_path / "run3", cfg, vllm_server)
    after_third = _counters(vllm_server)
    assert after_third["vllm:request_success_total"] > after_first["vllm:request_success_total"]
    run3_hashes = {e["id"]: e["hash"] for e in json.loads((tmp_path / "run3" / "manifest.json").read_text())["leaves"]}
    assert [leaf for leaf in LEAF_IDS if run3_hashes[leaf] != hashes[leaf]] == [SKILL]
    before, now = _published(run1), _published(tmp_path / "run3")
    for leaf_id in LEAF_IDS:
        if leaf_id == SKILL:
            samples = [json.loads(line) for line in now[leaf_id][runner.SAMPLES].decode().splitlines()]
            assert all(r["metadata"]["leaf_hash"] == run3_hashes[SKILL] for r in samples)
            assert json.loads(now[leaf_id][runner.YIELD])["work_dir"] != json.loads(before[leaf_id][runner.YIELD])["work_dir"]
        else:
            assert now[leaf_id] == before[leaf_id], leaf_id  # byte-identical: not regenerated
    regenerated = json.loads((tmp_path / "run3" / "cycle-1" / "generated" / "summary.json").read_text())["teacher"]["requests"]
    assert regenerated == json.loads(now[SKILL][runner.YIELD])["requests"] > 0  # this run asked only for the changed leaf
    third_tasks = {k: v for k, v in _generate_task_runs().items() if k not in tasks_before and k not in first_tasks
                   and k not in second_tasks}
    states = sorted((t.name, t.state.name) for t in third_tasks.values())
    assert states == sorted((f"generate: {leaf}", "Completed" if leaf == SKILL else "Cached") for leaf in LEAF_IDS)
    assert third["generation"]["leaves"] == 3


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcycle.cli", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_generate_command(prefect_harness, example_taxonomy, vllm_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's Prefect server: no start-up wait
    cfg = _config(tmp_path / "labcycle.yaml")  # the shipped pipelines
    out = tmp_path / "run"
    res = _cli("generate", "--taxonomy", str(example_taxonomy), "--base", "empty", "--output", str(out),
               "--teacher-endpoint", vllm_server.base_url, "--teacher-model", vllm_server.model, "--config", str(cfg),
               cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "cycle-1" / "generated" / "summary.json").read_text())
    assert f"generated {summary['samples']} samples in {out / 'cycle-1' / 'generated'}" in " ".join(res.stdout.split())
    assert "tiny model with random weights" not in res.stdout  # the note is for a local tiny model folder only
    for leaf_id in LEAF_IDS:
        assert f"  {leaf_id}: " in res.stdout
        spec = load_spec(shipped_spec_path(next(k for k, v in genhelp.LEAVES.items() if v == leaf_id)))
        report = json.loads((out / "cycle-1" / "generated" / leaf_id / runner.YIELD).read_text())
        genhelp.check_work_folder(Path(report["work_dir"]), spec)

    # No teacher model: one line, exit 1, before any stage runs.
    res = _cli("generate", "--taxonomy", str(example_taxonomy), "--base", "empty", "--output", str(tmp_path / "none"),
               "--config", str(cfg), cwd=tmp_path, env=env)
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert "--teacher-model" in res.stderr and not (tmp_path / "none").exists()


def test_sigkilled_generate_resumes_without_losing_or_repeating_a_sample(prefect_harness, example_taxonomy, vllm_server, tmp_path):
    """SIGKILL the labcycle process itself mid-generation; the same command run again finishes the job."""
    import signal
    import time

    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"  # a LABCYCLE_HOME of its own: the journal lives in its cache
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "LABCYCLE_HOME": str(home)}
    folder = tmp_path / "specs"
    pipelines = {kind: str(genhelp.permissive_spec_file(kind, folder)) for kind in genhelp.LEAVES}
    cfg = tmp_path / "labcycle.yaml"
    cfg.write_text(yaml.safe_dump({"chunking": {"max_words": 150, "overlap_words": 15}, "generation": {
        "samples_per_seed": 3, "max_rounds": 2, "max_units_per_round": 4, "max_tokens_cap": 64, "pipelines": pipelines,
        "teacher": {"max_concurrency": 2}}}))
    args = [sys.executable, "-m", "labcycle.cli", "generate", "--taxonomy", str(example_taxonomy), "--base", "empty",
            "--output", str(tmp_path / "run"), "--teacher-endpoint", vllm_server.base_url,
            "--teacher-model", vllm_server.model, "--config", str(cfg)]

    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journals = home / "cache" / "generated"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(len(genhelp.lines(j)) for j in journals.glob("*/journal.jsonl")) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "generation finished before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {j.parent.name: j.read_bytes() for j in journals.glob("*/journal.jsonl")}
    unfinished = {key for key in before if not (journals / key / runner.YIELD).exists()}
    assert unfinished, "every leaf finished before the kill; make generation longer"

    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for key, old in before.items():
        work = journals / key
        new = (work / runner.JOURNAL).read_bytes()
        # What the killed run journaled is kept as it was (a torn last line, if any, is cut off).
        complete_old = old[: old.rfind(b"\n") + 1]
        assert new.startswith(complete_old)
        units = [json.loads(line)["unit"] for line in new.splitlines()]
        assert len(units) == len(set(units))
        ids = [json.loads(line)["id"] for line in (work / runner.SAMPLES).read_text().splitlines()]
        assert len(ids) == len(set(ids))
        if key in unfinished:  # the second run picked up exactly the units the first one had journaled
            assert json.loads((work / runner.YIELD).read_text())["resumed_units"] == complete_old.count(b"\n")


def test_teacher_api_key_from_a_prefect_secret_block(prefect_harness):
    import asyncio

    from prefect.blocks.system import Secret

    from labcycle.teacher.settings import TeacherConfig
    from labcycle.errors import LabcycleError
    from labcycle.teacher.settings import api_key

    Secret(value="sk-test-secret").save("labcycle-teacher-key", overwrite=True)
    assert asyncio.run(api_key(TeacherConfig(api_key_secret="labcycle-teacher-key"))) == "sk-test-secret"
    assert asyncio.run(api_key(TeacherConfig())) is None  # the client then reads the environment
    with pytest.raises(LabcycleError, match="no-such-block"):
        asyncio.run(api_key(TeacherConfig(api_key_secret="no-such-block")))
