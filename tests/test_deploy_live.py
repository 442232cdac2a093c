"""The three ways users start a cycle, against a real Prefect server: a git push through the webhook
receiver, the Prefect UI (a run created through the API with the form's parameters), and the schedule.

One stack for the module (tests/stack.py): `prefect server start`, `labcycle pools apply`, `prefect deploy`
of deployments/prefect.yaml, a process worker on the cpu pool, and `labcycle webhook serve`.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from tests.stack import BIN, deploy, flow_runs, prefect_stack, wait_for_runs
from tests.test_webhook import SECRET, github_push, post_github, sign

pytestmark = pytest.mark.slow

DEPLOYMENT = "lab-cycle/labcycle"
DEMO = "lab-cycle/demo"
REPO = "acme/taxonomy"
LEAF = "knowledge/technology/generative_ai/risks/qna.yaml"
RUN_TIMEOUT = 1500  # a full demo cycle in a fresh worker process: about 3 min on a quiet 2-core machine


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """The example taxonomy as the repository users push to (its document repository named by absolute path)."""
    from labcycle.demo import prepare
    from tests.conftest import REPO_ROOT

    out = tmp_path_factory.mktemp("origin")
    prepare(REPO_ROOT / "taxonomy", out)
    root = out / "taxonomy"
    leaf = root / LEAF
    leaf.write_text(leaf.read_text().replace("repo: ../documents/ai-risk", f"repo: {out / 'documents' / 'ai-risk'}"))
    _git(root, "commit", "-qam", "documents by absolute path")
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("stack")
    with prefect_stack(home) as stack:
        stack.env["LABCYCLE_WORKDIR"] = str(home / "work")
        stack.run(str(BIN / "labcycle"), "pools", "apply", "--gpu-type", "process")
        deploy(stack)
        stack.worker("cpu", poll_seconds=2)
        # The settings pushes and schedules run with, as an operator sets them: a labcycle.yaml on the worker
        # named by the labcycle_config Variable (the demo's stages on the tiny model, so a cycle takes minutes).
        settings = home / "labcycle.yaml"
        settings.write_text(yaml.safe_dump(_settings(tiny_model), sort_keys=False))
        stack.run(str(BIN / "prefect"), "variable", "set", "labcycle_config", str(settings))
        config = home / "webhook.yaml"
        config.write_text(f"repositories: [{REPO}]\nbranches: [main]\nmax_body_bytes: 65536\n"
                          f"delivery_store: {home / 'deliveries.sqlite'}\n"
                          "allow_local_repositories: true\n")  # the origin below is a local repository
        stack.env["RECEIVER"] = stack.receiver(config, SECRET)
        yield stack


def _settings(model: Path) -> dict:
    from labcycle import profiles

    data = profiles.resolved_config("demo")
    data.setdefault("generation", {}).setdefault("teacher", {})["model"] = str(model)
    data.setdefault("student", {})["model"] = str(model)
    return data


@contextmanager
def _variable(stack, name: str, value: str | None):
    """The Prefect Variable `name` set to `value` (None: unset) for the block, then as it was."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.variables import Variable

    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        before = Variable.get(name, default=None)
        try:
            Variable.unset(name) if value is None else Variable.set(name, value, overwrite=True)
            yield
        finally:
            Variable.unset(name) if before is None else Variable.set(name, before, overwrite=True)


def _checkouts(stack) -> list[Path]:
    return sorted(Path(stack.env["LABCYCLE_WORKDIR"]).glob("runs/*/taxonomy"))


def _push(stack, origin: Path, delivery: str, ref: str = "refs/heads/main", signature: str | None = "sign",
          body: bytes | None = None) -> httpx.Response:
    commit = _git(origin, "rev-parse", "HEAD")
    # A fresh `before` per push: the receiver also treats a byte-identical body as a replay.
    payload = github_push(full_name=REPO, ref=ref, after=commit, before=uuid.uuid4().hex + "0" * 8, commits=[{
        "id": commit, "message": "add risks leaf", "added": [LEAF], "modified": [], "removed": [],
        "timestamp": "2026-11-29T10:00:00+00:00", "distinct": True}])
    payload["repository"]["clone_url"] = str(origin)  # where the worker clones from
    with httpx.Client(base_url=stack.env["RECEIVER"], timeout=30) as client:
        if body is not None:
            return client.post("/github", content=body, headers={"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
                                                                 "X-Hub-Signature-256": sign(body)})
        return post_github(client, payload, delivery=delivery, signature=signature)


def _run_folder(stack, commit: str, newest: bool = False) -> Path:
    """The (oldest, or newest) run folder under the worker's working directory whose manifest names `commit`."""
    found = sorted(m.parent for m in Path(stack.env["LABCYCLE_WORKDIR"]).glob("runs/*/manifest.json")
                   if json.loads(m.read_text())["taxonomy"]["commit"] == commit)
    assert found, f"no run folder for {commit}"
    return found[-1] if newest else found[0]


@pytest.fixture(scope="module")
def pushed(stack, origin) -> dict:
    """One accepted push and the run it started, run to its end: the request as sent, the run, the timings."""
    before = len(flow_runs(stack, DEPLOYMENT))
    sent = time.time()
    res = _push(stack, origin, delivery=f"push-{uuid.uuid4()}")
    assert res.status_code == 202, res.text
    [created] = wait_for_runs(stack, DEPLOYMENT, before + 1, final=False, timeout=60)[before:]
    [run] = wait_for_runs(stack, DEPLOYMENT, before + 1, final=True, timeout=RUN_TIMEOUT)[before:]
    return {"request": res.request, "created": created, "run": run, "sent": sent}


def test_a_signed_push_runs_the_cycle_on_the_pushed_commit(stack, origin, pushed):
    commit = _git(origin, "rev-parse", "HEAD")
    run = pushed["run"]
    assert pushed["created"].parameters == run.parameters
    assert run.parameters["commit"] == commit and run.parameters["branch"] == "main"
    assert run.parameters["taxonomy_repo"] == str(origin)
    assert run.state.is_completed(), (run.state, stack.log("worker-cpu")[-5000:])
    print(f"push -> run created {run.created.timestamp() - pushed['sent']:.2f}s, "
          f"started {run.start_time.timestamp() - pushed['sent']:.2f}s (worker polls every 2 s)")

    folder = _run_folder(stack, commit)
    assert _git(folder / "taxonomy", "rev-parse", "HEAD") == commit
    report = json.loads((folder / "report.json").read_text())
    assert report["released"], report


def test_rejected_deliveries_create_no_run(stack, origin, pushed):
    before = len(flow_runs(stack, DEPLOYMENT))
    assert _push(stack, origin, delivery=f"bad-{uuid.uuid4()}", signature=sign(b"something else")).status_code == 401
    assert _push(stack, origin, delivery=f"none-{uuid.uuid4()}", signature=None).status_code == 401
    res = _push(stack, origin, delivery=f"branch-{uuid.uuid4()}", ref="refs/heads/experiment")
    assert res.status_code < 300 and res.json()["status"] == "ignored", res.text
    assert _push(stack, origin, delivery=f"big-{uuid.uuid4()}", body=b"{" + b" " * 70_000 + b"}").status_code == 413
    # Replays of the accepted push: the same delivery again, and its body under a new delivery id.
    request = pushed["request"]
    with httpx.Client(base_url=stack.env["RECEIVER"], timeout=30) as client:
        for delivery in (request.headers["X-GitHub-Delivery"], f"again-{uuid.uuid4()}"):
            res = post_github(client, json.loads(request.content), delivery=delivery)
            assert res.status_code < 300 and res.json()["status"] == "ignored", res.text
    time.sleep(10)  # the automation acts within a second of an event
    runs = flow_runs(stack, DEPLOYMENT)[before:]
    assert runs == [], [(r.name, r.parameters) for r in runs]


def test_the_schedule_exists_and_is_off(stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(DEPLOYMENT)
    [schedule] = dep.schedules
    assert schedule.schedule.cron == "0 2 * * 0" and schedule.active is False
    names = {p for p in dep.parameter_openapi_schema["properties"]}
    assert {"taxonomy_repo", "branch", "commit", "base", "profile", "max_cycles"} <= names
    # Pushes and schedules never default to the demo's tiny random models; the demo is its own deployment.
    assert "profile" not in dep.parameters and "config" not in dep.parameters, dep.parameters
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        demo = client.read_deployment_by_name(DEMO)
    assert demo.parameters["profile"] == "demo" and not demo.schedules
    # The UI's form: every parameter described.
    assert all(spec.get("description") for spec in dep.parameter_openapi_schema["properties"].values())
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        for name in ("generate/gpu", "tune/gpu", "evaluate/gpu"):
            assert client.read_deployment_by_name(name).work_pool_name == "gpu"


def test_a_run_with_ui_parameters_completes(stack, origin):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # As the form sends them; `until` keeps it to checkout, taxonomy, generation and mixing (the push test
    # above runs the whole cycle).
    # The demo deployment, by hand: its own profile, whatever labcycle_config says.
    before = len(flow_runs(stack, DEMO))
    params = {"taxonomy_repo": str(origin), "branch": "main", "commit": "", "base": "empty",
              "max_cycles": 1, "until": "mix"}
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(DEMO)
        created = client.create_flow_run_from_deployment(dep.id, parameters=params)
    [run] = wait_for_runs(stack, DEMO, before + 1, final=True, timeout=RUN_TIMEOUT)[before:]
    assert run.id == created.id and run.state.is_completed(), (run.state, stack.log("worker-cpu")[-5000:])
    folder = _run_folder(stack, _git(origin, "rev-parse", "main"), newest=True)
    assert (folder / "cycle-1" / "mixed" / "mix.json").is_file() and not (folder / "cycle-1" / "tuned").exists()


def test_an_event_missing_payload_keys_still_starts_a_run_that_says_what_is_missing(stack):
    """The trigger's templates have defaults: a taxonomy.push without repo/branch/commit (sent by hand, or by
    another tool) still creates a run; with no repository and no taxonomy folder it fails, saying so."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = len(flow_runs(stack, DEPLOYMENT))
    event = {"id": str(uuid.uuid4()), "occurred": "2026-11-29T10:00:00Z", "event": "taxonomy.push",
             "resource": {"prefect.resource.id": "taxonomy.repo.acme.bare"}, "payload": {}}
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[event]).raise_for_status()
    [run] = wait_for_runs(stack, DEPLOYMENT, before + 1, final=True, timeout=600)[before:]
    assert run.parameters["taxonomy_repo"] == "" and run.state.is_failed()
    assert "give taxonomy_repo" in run.state.message and "labcycle_taxonomy_repo" in run.state.message, run.state.message


def _start(stack, deployment: str, parameters: dict) -> object:
    """A run of `deployment` created as the UI or the scheduler creates one, waited for to its end."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = len(flow_runs(stack, deployment))
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        client.create_flow_run_from_deployment(client.read_deployment_by_name(deployment).id, parameters=parameters)
    [run] = wait_for_runs(stack, deployment, before + 1, final=True, timeout=RUN_TIMEOUT)[before:]
    return run


def test_a_deployment_run_without_settings_is_refused_before_any_work(stack, origin):
    """No config parameter and no labcycle_config Variable: the run fails at once, naming the Variable,
    without cloning, building a model or starting a teacher."""
    checkouts = _checkouts(stack)
    with _variable(stack, "labcycle_config", None):
        run = _start(stack, DEPLOYMENT, {"taxonomy_repo": str(origin), "branch": "main"})
    assert run.state.is_failed() and "labcycle_config" in run.state.message, run.state.message
    assert "prefect variable set labcycle_config" in run.state.message
    assert _checkouts(stack) == checkouts
    # A config that is not there on the worker: refused the same way, before the clone.
    with _variable(stack, "labcycle_config", str(Path(stack.env["LABCYCLE_WORKDIR"]) / "missing.yaml")):
        run = _start(stack, DEPLOYMENT, {"taxonomy_repo": str(origin)})
    assert run.state.is_failed() and "is not a file on this worker" in run.state.message, run.state.message
    assert _checkouts(stack) == checkouts


def test_a_scheduled_run_takes_the_repository_from_its_variable(stack, origin):
    """A schedule's run has the deployment's parameters only; labcycle_taxonomy_repo names the repository."""
    with _variable(stack, "labcycle_taxonomy_repo", str(origin)):
        run = _start(stack, DEPLOYMENT, {"until": "taxonomy"})
    assert run.state.is_completed(), (run.state, stack.log("worker-cpu")[-5000:])
    folder = _run_folder(stack, _git(origin, "rev-parse", "HEAD"), newest=True)
    assert (folder / "manifest.json").is_file() and _git(folder / "taxonomy", "rev-parse", "HEAD")
