"""RUN/report.json: the headline first, and paths a reader of the run folder can follow."""

from __future__ import annotations

import json

from labcycle.flows.records import gated_report, write_report
from tests.test_headline import gated_pass


def test_report_json_leads_with_the_headline_and_names_no_path_of_the_machine(tmp_path):
    run = tmp_path / "run"
    report, decision = gated_pass()
    report["models"] = {"base": str(tmp_path / "models" / "smollm2")}
    head = gated_report(run / "cycle-1" / "eval", report, decision)
    assert (run / "cycle-1" / "eval" / "report.md").read_text().startswith("# Evaluation: candidate vs base\n\n## Headline")
    version = run / "registry" / "tiny" / "v1"
    cycles = [{"cycle": 1, "plan": {"cycle": 1}, "folder": str(run / "cycle-1"), "eval": str(run / "cycle-1" / "eval" / "report.json"),
               "decision": "pass", "reasons": list(decision.reasons), "headline": head,
               "release": {"name": "tiny", "version": "v1", "path": str(version)}, "generation": {"output": str(run)}}]
    data = json.loads(write_report(run, cycles, released=str(version)).read_text())
    assert str(tmp_path) not in json.dumps(data)
    assert list(data) == ["headline", "readable", "cycles", "released"]
    assert data["headline"] == head["lines"] and data["headline"][0].startswith("gate: pass")
    assert any("ROUGE-L 0.3 → 0.2 (−0.1) (not gated)" in line for line in data["headline"])
    assert data["readable"] == ["cycle-1/eval/report.md", "registry/tiny/v1/README.md"]
    assert data["released"] == "registry/tiny/v1"
    first = data["cycles"][0]
    assert (first["folder"], first["eval"], first["release"]["path"]) == ("cycle-1", "cycle-1/eval/report.json", "registry/tiny/v1")
    assert first["headline"]["changes"][0]["base"] == report["branch"]["by_kind"]["knowledge"]["base"]["judge"]  # full precision
    # A registry outside the run folder is where readers find the release: named as configured.
    shared = tmp_path / "shared-registry" / "tiny" / "v1"
    assert json.loads(write_report(run, cycles, released=str(shared)).read_text())["released"] == str(shared)


def test_a_run_that_decided_nothing_keeps_its_short_report(tmp_path):
    assert json.loads(write_report(tmp_path, [], released=None).read_text()) == {"cycles": [], "released": None}
