"""The shipped deployments are safe by default: nothing a push or a schedule starts falls back to the demo's
tiny random models, and a deployment's run with no settings is refused before any work.

The live behaviour (a real server, worker and runs) is in tests/test_deploy_live.py; these read the shipped
prefect.yaml and call the flow's settings step against the session's real Prefect test server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from labcycle.errors import LabcycleError
from labcycle.flows.lab_cycle import CONFIG_VARIABLE, TAXONOMY_REPO_VARIABLE, deployment_settings
from tests.conftest import REPO_ROOT

DEPLOYMENTS = yaml.safe_load((REPO_ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]


def test_push_and_scheduled_deployments_name_no_profile_or_config():
    started = [d for d in DEPLOYMENTS if d.get("triggers") or d.get("schedules")]
    assert started, "the lab-cycle deployment has a trigger and a schedule"
    for dep in started:
        assert not {"profile", "config"} & set(dep.get("parameters") or {}), (dep["name"], dep["parameters"])


def test_the_demo_is_its_own_deployment_started_by_hand():
    [demo] = [d for d in DEPLOYMENTS if d["name"] == "demo"]
    assert demo["flow_name"] == "lab-cycle" and demo["parameters"]["profile"] == "demo"
    assert not demo.get("triggers") and not demo.get("schedules")


def test_outside_a_deployment_the_settings_are_as_given(monkeypatch):
    monkeypatch.delenv("PREFECT__RUNTIME__DEPLOYMENT__ID", raising=False)
    assert deployment_settings(None, None, None) == (None, None)  # `labcycle run`: built-in defaults


@pytest.fixture()
def in_a_deployment(monkeypatch, prefect_harness):
    from prefect.variables import Variable

    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "00000000-0000-0000-0000-000000000001")
    yield Variable
    for name in (CONFIG_VARIABLE, TAXONOMY_REPO_VARIABLE):
        Variable.unset(name)


def test_a_deployment_run_without_settings_is_refused(in_a_deployment):
    with pytest.raises(LabcycleError) as err:
        deployment_settings(None, None, "https://git.example.com/acme/taxonomy.git")
    assert f"prefect variable set {CONFIG_VARIABLE}" in str(err.value) and "lab-cycle/demo" in str(err.value)


def test_a_deployment_run_reads_its_variables(in_a_deployment, tmp_path: Path):
    settings = tmp_path / "labcycle.yaml"
    settings.write_text("student:\n  model: ./student\n")
    in_a_deployment.set(CONFIG_VARIABLE, str(settings), overwrite=True)
    in_a_deployment.set(TAXONOMY_REPO_VARIABLE, "https://git.example.com/acme/taxonomy.git", overwrite=True)
    assert deployment_settings(None, None, None) == (str(settings), "https://git.example.com/acme/taxonomy.git")
    # What the run was given wins over the Variables; a profile needs no config.
    assert deployment_settings(None, None, "/srv/other") == (str(settings), "/srv/other")
    assert deployment_settings(None, "demo", None) == (None, "https://git.example.com/acme/taxonomy.git")


def test_a_config_missing_on_the_worker_is_refused_before_any_work(in_a_deployment, tmp_path: Path):
    in_a_deployment.set(CONFIG_VARIABLE, str(tmp_path / "gone.yaml"), overwrite=True)
    with pytest.raises(LabcycleError, match="is not a file on this worker"):
        deployment_settings(None, None, None)
