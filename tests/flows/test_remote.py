"""lab_cycle with its GPU stages (generate, tune, evaluate) on a work pool: deployments of the three stage
flows on a real process worker (tests/stack.py), a real Prefect server (the session harness), shared
storage in a temporary folder, and the demo profile's settings (tiny model, in-process teacher)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import yaml

from labcycle import profiles
from labcycle.flows.evaluate import evaluate
from labcycle.flows.generate import generate
from labcycle.flows.lab_cycle import lab_cycle
from labcycle.flows.remote import Mirror, run_name, worker_mirror
from labcycle.flows.tune import tune

pytestmark = pytest.mark.slow

STEPS = {"max_steps": 2, "save_steps": 2}  # the demo's tuning, shorter
OUTPUTS = {"generate": "cycle-1/generated", "tune": "cycle-1/tuned", "evaluate": "cycle-1/eval"}


def _deploy(pool: str) -> dict[str, str]:
    """The three stage flows as deployments on `pool`, by module path as deployments/prefect.yaml names them."""
    from prefect.deployments.runner import EntrypointType

    names = {}
    for stage, fn in (("generate", generate), ("tune", tune), ("evaluate", evaluate)):
        fn.to_deployment(name=pool, entrypoint_type=EntrypointType.MODULE_PATH).apply(work_pool_name=pool)
        names[stage] = f"{fn.name}/{pool}"
    return names


def _pool(name: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
    return name


@pytest.fixture(scope="module")
def gpu_stack(prefect_harness, tmp_path_factory):
    """A process work pool with the stage deployments and two real workers, each taking one flow run at a
    time (the pool's capacity is two runs); -> ({stage: deployment name}, the workers' Stack)."""
    from prefect.settings import PREFECT_API_URL

    from tests.stack import Stack

    pool = _pool(f"labcycle-gpu-test-{uuid.uuid4().hex[:8]}")
    names = _deploy(pool)
    stack = Stack(tmp_path_factory.mktemp("worker"), {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})
    try:
        for k in (1, 2):
            stack.worker(pool, name=f"gpu-worker-{k}", poll_seconds=1, limit=1)
        yield names, stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def gpu_pool(gpu_stack):
    """{stage: deployment name} of the stage deployments on the pool of gpu_stack."""
    return gpu_stack[0]


def _config(folder: Path, remote: dict) -> Path:  # type: ignore[type-arg]
    """The demo profile's config, a shorter tuning and evaluation, and the remote section."""
    data = profiles.resolved_config("demo")
    for phase in ("knowledge", "skills"):
        data["tuning"][phase].update(STEPS)
    data["evaluation"] = {"max_tokens": 16, "judge_max_tokens": 32, "held_out_per_leaf": 1, "max_items": 2}
    data["remote"] = remote
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labcycle.yaml").write_text(yaml.safe_dump(data))
    return folder / "labcycle.yaml"


def _children(parent_id, deployment: str) -> list:  # type: ignore[no-untyped-def,type-arg]
    """The flow runs of `deployment` that run_deployment linked under the flow run `parent_id`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
        return [r for r in runs if r.parent_task_run_id and client.read_task_run(r.parent_task_run_id).flow_run_id == parent_id]



def test_the_gpu_stages_run_on_their_deployments_through_shared_storage(gpu_stack, example_taxonomy, tiny_model, tmp_path):
    """The whole cycle with its three GPU stages on the pool, generation fanned out (remote.leaf_groups: 2) over
    the pool's two workers."""
    gpu_pool, stack = gpu_stack
    shared = tmp_path / "shared"
    cfg = _config(tmp_path, {"storage": str(shared), "deployments": gpu_pool, "timeout_s": 1200, "leaf_groups": 2})
    # Generation settings of its own: other tests' runs of this taxonomy and teacher are no cache hits here
    data = yaml.safe_load(cfg.read_text())
    data["generation"]["max_tokens_cap"] = 48
    cfg.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    common = dict(taxonomy=str(example_taxonomy), base="empty", output=str(run), config=str(cfg),
                  teacher_model=str(tiny_model), student_model=str(tiny_model), return_state=True)
    state = lab_cycle(**common)
    assert state.is_completed(), state.message
    result = state.result()

    # RUN holds every stage's files, as after an in-process run
    cycle = run / "cycle-1"
    manifest = json.loads((run / "manifest.json").read_text())
    every = sorted(leaf["id"] for leaf in manifest["leaves"])
    for leaf_id in every:
        assert (cycle / "generated" / leaf_id / "samples.jsonl").is_file() and (cycle / "generated" / leaf_id / "yield.json").is_file()
    generated = json.loads((cycle / "generated" / "summary.json").read_text())
    assert generated["leaves"] == len(every) and sorted(generated["per_leaf"]) == every
    assert generated["samples"] == sum(len((cycle / "generated" / i / "samples.jsonl").read_text().splitlines()) for i in every)
    assert (cycle / "mixed" / "knowledge" / "data.jsonl").is_file() and (cycle / "mixed" / "held_out.jsonl").is_file()
    for phase in ("knowledge", "skills"):
        assert (cycle / "tuned" / phase / "adapter" / "adapter_model.safetensors").is_file()
        assert (cycle / "tuned" / phase / "model_card.md").is_file()
    assert (cycle / "tuned" / "tune.json").is_file()
    for name in ("report.json", "report.md", "answers.jsonl", "decision.json"):
        assert (cycle / "eval" / name).is_file()
    # the judge (the teacher, here the student's own base) was asked through the evaluation server
    report = json.loads((cycle / "eval" / "report.json").read_text())
    assert report["models"]["judge_placement"] == "server" and report["branch"]["judge"]["judged_pairs"] > 0
    # what lab_cycle used points into RUN, not at the worker's copy
    assert result["generation"]["output"] == str(cycle / "generated")
    assert result["tuning"]["phases"]["skills"]["output"] == str(cycle / "tuned" / "skills" / "adapter")
    assert result["tuning"]["phases"]["skills"]["init_adapter"] == str(cycle / "tuned" / "knowledge" / "adapter")
    summary = json.loads((run / "report.json").read_text())
    assert [c["decision"] for c in summary["cycles"]] == ["pass"] and summary["released"]
    assert (run / summary["released"] / "adapter_model.safetensors").read_bytes() == \
        (cycle / "tuned" / "skills" / "adapter" / "adapter_model.safetensors").read_bytes()

    # tune and evaluate were one flow run of their deployment each, linked under this lab-cycle run
    mirror = str(shared / run_name(run))
    for stage in ("tune", "evaluate"):
        children = _children(state.state_details.flow_run_id, gpu_pool[stage])
        assert len(children) == 1 and children[0].state.is_completed(), (stage, children)
        params = children[0].parameters
        assert (params["storage"], params["output"]) == (mirror, OUTPUTS[stage])
    # generation was two runs, each with its own leaves and output, one on each worker, at the same time
    children = sorted(_children(state.state_details.flow_run_id, gpu_pool["generate"]), key=lambda c: c.parameters["output"])
    assert len(children) == 2 and all(c.state.is_completed() for c in children), children
    assert [c.parameters["output"] for c in children] == ["cycle-1/generated-groups/1", "cycle-1/generated-groups/2"]
    groups = [c.parameters["leaves"] for c in children]
    assert sorted(groups[0] + groups[1]) == every and not set(groups[0]) & set(groups[1])
    took = {k: [str(c.id) for c in children if str(c.id) in stack.log(f"gpu-worker-{k}")] for k in (1, 2)}
    assert sorted(len(ids) for ids in took.values()) == [1, 1], took
    assert max(c.start_time for c in children) < min(c.end_time for c in children), "the groups did not run side by side"
    assert sorted(g["leaves"] for g in generated["groups"]) == sorted(sorted(g) for g in groups)
    # the mirror has RUN's layout, plus the leaves and each stage run's result
    assert (Path(mirror) / "taxonomy" / manifest["leaves"][0]["path"]).is_file()
    assert (Path(mirror) / "cycle-1" / "eval" / "report.json").read_bytes() == (cycle / "eval" / "report.json").read_bytes()
    assert len(list((Path(mirror) / ".stages").glob("*.json"))) == 4
    # the worker's copy of the mirror, where the stages ran
    assert (worker_mirror(mirror).root / "cycle-1" / "tuned" / "skills" / "adapter").is_dir()

    # Generation again on the same run folder: the same split, each leaf a cache hit on the worker that made it
    again = lab_cycle(**common, until="generate")
    assert again.is_completed(), again.message
    assert again.result()["generation"]["requests"] == 0
    assert again.result()["generation"]["samples"] == generated["samples"]


def test_a_failed_remote_stage_fails_the_cycle_naming_the_deployment_and_its_run(gpu_pool, example_taxonomy, tiny_model,
                                                                                 tmp_path):
    cfg = _config(tmp_path, {"storage": str(tmp_path / "shared"), "deployments": {"generate": gpu_pool["generate"]}})
    run = tmp_path / "run"
    # The teacher folder is missing on the worker too: the generate run fails there, for real.
    state = lab_cycle(taxonomy=str(example_taxonomy), base="empty", output=str(run), config=str(cfg),
                      teacher_model=str(tmp_path / "no-such-teacher"), student_model=str(tiny_model), return_state=True)
    assert state.is_failed()
    [child] = _children(state.state_details.flow_run_id, gpu_pool["generate"])
    assert child.state.is_failed()
    assert state.message.startswith("generate: ")
    for words in (gpu_pool["generate"], child.name, str(child.id), "no-such-teacher", "not found"):
        assert words in state.message, state.message
    assert (run / "manifest.json").is_file() and not (run / "cycle-1" / "mixed").exists()


def test_a_missing_or_stalled_deployment_fails_with_what_to_do(prefect_harness, example_taxonomy, tiny_model, tmp_path):
    taxonomy = dict(taxonomy=str(example_taxonomy), base="empty", teacher_model=str(tiny_model), student_model=str(tiny_model))
    cfg = _config(tmp_path / "a", {"storage": str(tmp_path / "shared"), "deployments": {"generate": "generate/nowhere"}})
    state = lab_cycle(output=str(tmp_path / "a" / "run"), config=str(cfg), return_state=True, **taxonomy)
    assert state.is_failed()
    assert "deployment 'generate/nowhere' not found" in state.message and "remote.deployments.generate" in state.message

    # A pool without a worker: the run is never picked up, and lab_cycle stops waiting after timeout_s.
    stalled = _deploy(_pool(f"labcycle-idle-test-{uuid.uuid4().hex[:8]}"))["generate"]
    cfg = _config(tmp_path / "b", {"storage": str(tmp_path / "shared"), "deployments": {"generate": stalled}, "timeout_s": 1})
    state = lab_cycle(output=str(tmp_path / "b" / "run"), config=str(cfg), return_state=True, **taxonomy)
    assert state.is_failed()
    assert stalled in state.message and "did not finish within remote.timeout_s (1 s)" in state.message


def test_paths_are_mapped_between_the_run_folder_and_the_mirror(tmp_path):
    run = tmp_path / "runs" / "demo"
    mirror = Mirror("s3://bucket/labcycle/demo-0123456789", run)
    local = {"output": str(run / "cycle-1" / "tuned"), "base_model": "/models/student", "n": 3,
             "phases": [{"adapter": str(run / "cycle-1" / "tuned" / "skills" / "adapter")}], "other": str(run) + "-2"}
    shared = mirror.to_shared(local)
    assert shared["output"] == "s3://bucket/labcycle/demo-0123456789/cycle-1/tuned"
    assert shared["phases"][0]["adapter"].endswith("demo-0123456789/cycle-1/tuned/skills/adapter")
    assert shared["base_model"] == "/models/student" and shared["other"] == str(run) + "-2" and shared["n"] == 3
    assert mirror.from_shared(shared) == local
    assert mirror.relative(run / "cycle-1" / "mixed" / "held_out.jsonl") == "cycle-1/mixed/held_out.jsonl"
    assert mirror.relative(tmp_path / "elsewhere") is None
    assert run_name(run).startswith("demo-") and run_name(run) == run_name(run) != run_name(tmp_path / "demo")
