"""`labcycle pools apply`: the shipped base job templates, the declarations' checks, and applying them to a
real Prefect server (create, leave unchanged, update, refuse a pool of another type)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.exceptions import ObjectNotFound

from labcycle.deploy.pools import (DEFAULT_PROCESS_TEMPLATE, apply_pools, check_template, default_process_template,
                                   load_pools, load_template)
from labcycle.errors import LabcycleError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = REPO_ROOT / "deployments"
PREFECT_FILE = DEPLOYMENTS / "prefect.yaml"
KUBERNETES = DEPLOYMENTS / "gpu-kubernetes.json"
DOCKER = DEPLOYMENTS / "gpu-docker.json"
GPU = "nvidia.com/gpu"


def render(template: dict[str, Any], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job configuration a worker builds from the template: the variables' defaults (None left out,
    as Prefect does), `values` on top, placeholders replaced (BaseJobConfiguration.from_template_and_values)."""
    from prefect.utilities.templating import apply_values

    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if v.get("default") is not None}
    return apply_values(template["job_configuration"], {**defaults, **(values or {})})


def pod_spec(job_configuration: dict[str, Any]) -> dict[str, Any]:
    return job_configuration["job_manifest"]["spec"]["template"]["spec"]


# --- the shipped templates -------------------------------------------------------------------------


@pytest.mark.parametrize("path", [KUBERNETES, DOCKER], ids=["kubernetes", "docker"])
def test_shipped_templates_pass_our_checks_and_the_servers(path):
    from prefect.server.schemas.actions import validate_base_job_template

    template = load_template(path)  # raises on any problem
    assert validate_base_job_template(template) == template


def test_kubernetes_template_asks_for_gpus_and_tolerates_gpu_nodes():
    template = load_template(KUBERNETES)
    variables = template["variables"]["properties"]
    container = pod_spec(template["job_configuration"])["containers"][0]
    assert container["resources"]["limits"][GPU] == "{{ gpu_count }}"
    assert container["resources"]["requests"][GPU] == "{{ gpu_count }}"
    assert pod_spec(template["job_configuration"])["tolerations"] == "{{ tolerations }}"
    assert pod_spec(template["job_configuration"])["nodeSelector"] == "{{ node_selector }}"
    assert variables["gpu_count"]["default"] == 1
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in variables["tolerations"]["default"]
    assert variables["node_selector"]["type"] == "object"
    for name in ("image", "env", "namespace", "service_account_name", "finished_job_ttl", "cpu_request", "memory_request"):
        assert name in variables, name

    spec = pod_spec(render(template))
    assert spec["containers"][0]["resources"] == {"limits": {GPU: 1}, "requests": {GPU: 1}}  # unset cpu/memory: no key
    assert spec["tolerations"] == [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    assert {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]} == {"/var/lib/labcycle", "/dev/shm"}
    spec = pod_spec(render(template, {"gpu_count": 4, "node_selector": {"pool": "h100"}, "cpu_request": "8"}))
    assert spec["containers"][0]["resources"] == {"limits": {GPU: 4}, "requests": {"cpu": "8", GPU: 4}}
    assert spec["nodeSelector"] == {"pool": "h100"}


def test_docker_template_requests_nvidia_gpus():
    template = load_template(DOCKER)
    variables = template["variables"]["properties"]
    [request] = template["job_configuration"]["container_create_kwargs"]["device_requests"]
    assert request == {"driver": "nvidia", "count": "{{ gpu_count }}", "capabilities": [["gpu"]]}
    assert variables["gpu_count"]["default"] == -1  # every GPU of the host
    for name in ("image", "env", "volumes", "network_mode", "mem_limit", "shm_size"):
        assert name in variables, name

    kwargs = render(template, {"gpu_count": 2})["container_create_kwargs"]
    assert kwargs == {"device_requests": [{"driver": "nvidia", "count": 2, "capabilities": [["gpu"]]}], "shm_size": "8g"}
    from docker.types import HostConfig  # docker-py, as Prefect's Docker worker hands it these kwargs

    host = HostConfig(version="1.44", **render(template)["container_create_kwargs"])
    assert host["DeviceRequests"][0]["Count"] == -1 and host["ShmSize"] == 8 * 1024**3


def test_shipped_declarations():
    cpu, gpu = load_pools(PREFECT_FILE)
    assert (cpu.name, cpu.type, cpu.template_source) == ("cpu", "process", DEFAULT_PROCESS_TEMPLATE)
    assert cpu.base_job_template == default_process_template()
    assert (gpu.name, gpu.type, gpu.template_source) == ("gpu", "kubernetes", "gpu-kubernetes.json")
    assert gpu.base_job_template == json.loads(KUBERNETES.read_text())
    assert gpu.description and gpu.where.startswith(f"{PREFECT_FILE}:")
    _, gpu = load_pools(PREFECT_FILE, gpu_type="docker")
    assert (gpu.type, gpu.base_job_template) == ("docker", json.loads(DOCKER.read_text()))
    _, gpu = load_pools(PREFECT_FILE, gpu_type="process")
    assert (gpu.type, gpu.template_source) == ("process", DEFAULT_PROCESS_TEMPLATE)


# --- mistakes ---------------------------------------------------------------------------------------


def write_prefect_file(folder: Path, pools: str, templates: bool = True) -> Path:
    """A prefect.yaml with `pools` as definitions.work_pools (indented below it), the shipped templates beside it."""
    if templates:
        for path in (KUBERNETES, DOCKER):
            shutil.copy(path, folder / path.name)
    body = "\n".join("    " + line if line else line for line in pools.strip("\n").splitlines())
    path = folder / "prefect.yaml"
    path.write_text(f"name: labcycle\nprefect-version: 3.7.7\n\ndefinitions:\n  work_pools:\n{body}\n\ndeployments: []\n")
    return path


def raises(path: Path, gpu_type: str | None = None) -> LabcycleError:
    with pytest.raises(LabcycleError) as info:
        load_pools(path, gpu_type)
    return info.value


@pytest.mark.parametrize("pools, where, words", [
    ("cpu:\n  name: a\n  type: process\n  colour: blue\n", ":9:7", ["cpu.colour", "unknown key", "name, type, description"]),
    ("cpu:\n  type: process\n", ":6:5", ["cpu", "'name' is a required property"]),
    ("cpu:\n  name: a\n  type: lambda\n", ":8:7", ["cpu.type", "'lambda' is not one of"]),
    ("cpu: {name: a, type: process}\ngpu: {name: a, type: process}\n", ":7:11", ["gpu.name", "declared twice"]),
    ("gpu:\n  name: g\n  type: docker\n", ":8:7", ["a docker pool needs a base job template", "--gpu-type"]),
    ("gpu:\n  name: g\n  type: kubernetes\n  base_job_templates: {kubernetes: gpu.yaml}\n", ":9:28", ["does not match"]),
    ("[]\n", ":5:3", ["must be a mapping of pool declarations"]),
])
def test_declaration_mistakes_say_file_line_and_what(tmp_path, pools, where, words):
    path = write_prefect_file(tmp_path, pools)
    error = raises(path)
    assert str(error).startswith(f"{path}{where}: "), str(error)
    for word in words:
        assert word in str(error), (word, str(error))


def test_file_mistakes(tmp_path):
    path = tmp_path / "prefect.yaml"
    path.write_text("definitions:\n  work_pools:\n    cpu: {name: a, type: process}\n    cpu: {name: b, type: process}\n")
    assert str(raises(path)).startswith(f"{path}:4:") and "duplicate key" in str(raises(path))
    path.write_text("name: labcycle\ndeployments: []\n")
    assert "definitions.work_pools: missing" in str(raises(path))
    path.write_text("definitions:\n  work_pools:\n    cpu: {name: a, type: process\n")
    assert "YAML error" in str(raises(path))
    error = raises(write_prefect_file(tmp_path, "gpu: {name: g, type: process}\n"), gpu_type="lambda")
    assert "--gpu-type lambda" in str(error)
    error = raises(write_prefect_file(tmp_path, "cpu: {name: c, type: process}\n"), gpu_type="docker")
    assert "no `gpu` pool" in str(error)
    path = write_prefect_file(tmp_path, "gpu: {name: g, type: docker, base_job_templates: {docker: gone.json}}\n", templates=False)
    error = raises(path)
    assert error.where == str(tmp_path / "gone.json") and "prefect.yaml:6:" in str(error)


def test_template_mistakes(tmp_path):
    path = tmp_path / "t.json"
    text = KUBERNETES.read_text()

    def error(new_text: str) -> str:
        path.write_text(new_text)
        with pytest.raises(LabcycleError) as info:
            load_template(path)
        return str(info.value)

    # A missing comma after line 11: the parser stops at the next key (line:column).
    assert error(text.replace('"kind": "Job",', '"kind": "Job"', 1)).startswith(f"{path}:12:7: not valid JSON")
    message = error(text.replace('"{{ fs_group }}"', '"{{ fsgroup }}"'))
    line = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if "fsgroup" in row)
    assert message.startswith(f"{path}:{line}: ") and "{{ fsgroup }}" in message and "variables.properties" in message
    assert "gpu_count.default" in error(text.replace('"default": 1,', '"default": "one",', 1))
    assert "job_configuration" in error(json.dumps({"variables": {"properties": {}}}))
    assert "unknown key 'job_config'" in error(json.dumps({"job_config": {}, "job_configuration": {"a": 1}, "variables": {"type": "object"}}))
    with pytest.raises(LabcycleError, match="not a valid JSON Schema"):
        check_template({"job_configuration": {"a": "{{ a }}"}, "variables": {"properties": {"a": {"type": "strng"}}}}, "t")


# --- a real Prefect server ------------------------------------------------------------------------


def read_pool(name: str):  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_work_pool(name)


def unique_pools(folder: Path, cpu: str, gpu: str, gpu_type: str = "kubernetes") -> Path:
    return write_prefect_file(folder, f"""
cpu:
  name: {cpu}
  type: process
  description: CPU pool of a test
gpu:
  name: {gpu}
  type: {gpu_type}
  base_job_templates:
    kubernetes: gpu-kubernetes.json
    docker: gpu-docker.json
  description: GPU pool of a test
""")


def actions(results) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {r.name: (r.type, r.action) for r in results}


@pytest.mark.slow
def test_apply_creates_then_leaves_alone_then_updates(prefect_harness, tmp_path):
    tag = uuid.uuid4().hex[:8]
    cpu, gpu = f"test-cpu-{tag}", f"test-gpu-{tag}"
    path = unique_pools(tmp_path, cpu, gpu)

    assert actions(apply_pools(path, dry_run=True)) == {cpu: ("process", "created"), gpu: ("kubernetes", "created")}
    with pytest.raises(ObjectNotFound):
        read_pool(gpu)  # the dry run changed nothing
    assert actions(apply_pools(path)) == {cpu: ("process", "created"), gpu: ("kubernetes", "created")}
    pool = read_pool(gpu)
    assert pool.type == "kubernetes" and pool.description == "GPU pool of a test"
    assert pool.base_job_template == json.loads(KUBERNETES.read_text())
    resources = pod_spec(pool.base_job_template["job_configuration"])["containers"][0]["resources"]
    assert resources["limits"][GPU] == "{{ gpu_count }}"
    assert read_pool(cpu).type == "process" and read_pool(cpu).base_job_template == default_process_template()

    assert actions(apply_pools(path)) == {cpu: ("process", "unchanged"), gpu: ("kubernetes", "unchanged")}

    template = json.loads((tmp_path / "gpu-kubernetes.json").read_text())
    template["variables"]["properties"]["gpu_count"]["default"] = 8
    (tmp_path / "gpu-kubernetes.json").write_text(json.dumps(template, indent=2))
    assert actions(apply_pools(path, dry_run=True))[gpu] == ("kubernetes", "updated")
    assert read_pool(gpu).base_job_template["variables"]["properties"]["gpu_count"]["default"] == 1
    assert actions(apply_pools(path)) == {cpu: ("process", "unchanged"), gpu: ("kubernetes", "updated")}
    assert read_pool(gpu).base_job_template["variables"]["properties"]["gpu_count"]["default"] == 8

    path.write_text(path.read_text().replace("CPU pool of a test", "the CPU pool"))
    assert actions(apply_pools(path)) == {cpu: ("process", "updated"), gpu: ("kubernetes", "unchanged")}
    assert read_pool(cpu).description == "the CPU pool"


@pytest.mark.slow
def test_a_pool_of_another_type_stops_the_apply_before_any_change(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    tag = uuid.uuid4().hex[:8]
    cpu, gpu = f"test-cpu-{tag}", f"test-gpu-{tag}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=gpu, type="process"))
    path = unique_pools(tmp_path, cpu, gpu, gpu_type="kubernetes")
    with pytest.raises(LabcycleError) as info:
        apply_pools(path)
    message = str(info.value)
    assert message.startswith(f"{path}:12:")  # the declaration's type
    assert f"`prefect work-pool delete {gpu}`" in message and "exists on the server as a process pool" in message
    assert "--gpu-type process" in message
    with pytest.raises(ObjectNotFound):
        read_pool(cpu)  # checked before anything changed
    # What the message suggests works.
    assert actions(apply_pools(path, gpu_type="process")) == {cpu: ("process", "created"), gpu: ("process", "updated")}


@pytest.mark.slow
def test_the_shipped_pools_as_process_pools(prefect_harness):
    """cpu and gpu on the shared test server stay process pools: other tests deploy to them."""
    first = actions(apply_pools(PREFECT_FILE, gpu_type="process"))
    assert {name: kind for name, (kind, _) in first.items()} == {"cpu": "process", "gpu": "process"}
    assert actions(apply_pools(PREFECT_FILE, gpu_type="process")) == {
        "cpu": ("process", "unchanged"), "gpu": ("process", "unchanged")}
    assert read_pool("gpu").base_job_template == default_process_template()


# --- the command line -----------------------------------------------------------------------------


def labcycle(*args: str, cwd: Path, api_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([sys.executable, "-m", "labcycle.cli", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_cli_dry_run_without_a_server_checks_the_shipped_file():
    res = labcycle("pools", "apply", "--dry-run", cwd=REPO_ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["cpu", "process", "checked", "(Prefect's", "default", "process", "template)"]
    assert lines[1].split() == ["gpu", "kubernetes", "checked", "(gpu-kubernetes.json)"]
    assert "PREFECT_API_URL is unset" in lines[2]
    res = labcycle("pools", "apply", "--dry-run", "--gpu-type", "docker", cwd=REPO_ROOT)
    assert res.stdout.splitlines()[1].split() == ["gpu", "docker", "checked", "(gpu-docker.json)"]


def test_cli_refuses_to_apply_without_prefect_api_url():
    res = labcycle("pools", "apply", cwd=REPO_ROOT)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: PREFECT_API_URL is not set") and "export PREFECT_API_URL=" in res.stderr


def test_cli_mistakes(tmp_path):
    res = labcycle("pools", "apply", "--prefect-file", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert res.returncode == 2 and "no such file" in res.stderr
    path = write_prefect_file(tmp_path, "cpu: {name: a, type: process, colour: blue}\n")
    res = labcycle("pools", "apply", "--prefect-file", str(path), "--dry-run", cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"error: {path}:6:") and "colour" in res.stderr
    assert labcycle("pools", "apply", "--gpu-type", "lambda", cwd=REPO_ROOT).returncode == 2


@pytest.mark.slow
def test_cli_against_the_server(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    tag = uuid.uuid4().hex[:8]
    cpu, gpu = f"test-cpu-{tag}", f"test-gpu-{tag}"
    path = unique_pools(tmp_path, cpu, gpu)
    url = PREFECT_API_URL.value()
    res = labcycle("pools", "apply", "--prefect-file", str(path), "--gpu-type", "docker", "--dry-run", cwd=tmp_path, api_url=url)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [line.split()[:5] for line in res.stdout.splitlines()] == [
        [cpu, "process", "would", "be", "created"], [gpu, "docker", "would", "be", "created"]]
    res = labcycle("pools", "apply", "--prefect-file", str(path), "--gpu-type", "docker", cwd=tmp_path, api_url=url)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [line.split()[:3] for line in res.stdout.splitlines()] == [[cpu, "process", "created"], [gpu, "docker", "created"]]
    pool = read_pool(gpu)
    assert pool.type == "docker"
    assert pool.base_job_template["job_configuration"]["container_create_kwargs"]["device_requests"][0]["driver"] == "nvidia"
    res = labcycle("pools", "apply", "--prefect-file", str(path), cwd=tmp_path, api_url=url)  # declared kubernetes
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert f"prefect work-pool delete {gpu}" in res.stderr and "--gpu-type docker" in res.stderr
