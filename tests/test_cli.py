"""The CLI contract: arguments, output formats and exit codes that other tools depend on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.leafgen import knowledge_v3, skill

REPO_ROOT = Path(__file__).resolve().parents[1]


def labcycle(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcycle.cli", *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy())


@pytest.fixture()
def taxonomy(tmp_path: Path) -> Path:
    root = tmp_path / "tax"
    for rel, text in {
        "knowledge/a/qna.yaml": knowledge_v3(1),
        "compositional_skills/b/qna.yaml": skill(3, grounded=False, seed=2),
        "foundational_skills/c/qna.yaml": skill(3, grounded=True, seed=3),
    }.items():
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_text(text)
    return root


def test_validate_valid_taxonomy_exits_0(taxonomy):
    res = labcycle("taxonomy", "validate", "--taxonomy", str(taxonomy), cwd=taxonomy.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 files checked: 3 valid, 0 invalid" in res.stdout


def test_validate_json_contract(taxonomy):
    bad = taxonomy / "compositional_skills/b/qna.yaml"
    bad.write_text(bad.read_text().replace("created_by: labcycle-tests\n", "created_by: labcycle-tests  \n"))
    res = labcycle("taxonomy", "validate", "--format", "json", cwd=taxonomy)
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert set(report) == {"files"}
    by_path = {f["path"]: f for f in report["files"]}
    # Paths are relative to the current directory.
    assert set(by_path) == {"knowledge/a/qna.yaml", "compositional_skills/b/qna.yaml", "foundational_skills/c/qna.yaml"}
    entry = by_path["compositional_skills/b/qna.yaml"]
    assert set(entry) == {"path", "kind", "version", "valid", "errors", "warnings"}
    assert (entry["kind"], entry["version"], entry["valid"]) == ("freeform_skill", 3, False)
    assert entry["errors"] == [{"line": 2, "column": 27, "rule": "yamllint/trailing-spaces", "message": entry["errors"][0]["message"]}]
    assert by_path["foundational_skills/c/qna.yaml"]["kind"] == "grounded_skill"
    assert by_path["knowledge/a/qna.yaml"]["valid"] is True


def test_validate_paths_text_and_github(taxonomy):
    leaf = taxonomy / "knowledge/a/qna.yaml"
    leaf.write_text(leaf.read_text().replace("domain: generative AI risk\n", ""))
    res = labcycle("taxonomy", "validate", "knowledge", cwd=taxonomy)
    assert res.returncode == 1
    assert "knowledge/a/qna.yaml:1:1: missing required key 'domain'; add domain: [schema/required]" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr

    res = labcycle("taxonomy", "validate", "knowledge/a/qna.yaml", "--format", "github", cwd=taxonomy)
    assert res.returncode == 1
    assert res.stdout.startswith("::error file=knowledge/a/qna.yaml,line=1,col=1,title=schema/required::missing required key 'domain'")


def test_validate_strict_turns_guidance_into_errors(taxonomy):
    leaf = taxonomy / "compositional_skills/b/qna.yaml"
    long_answer = " ".join(["word"] * 2400)
    leaf.write_text(leaf.read_text().replace("    answer: |\n", f"    answer: |\n      {long_answer}\n", 1))
    res = labcycle("taxonomy", "validate", "--format", "json", str(leaf), cwd=taxonomy)
    assert res.returncode == 0
    warnings = json.loads(res.stdout)["files"][0]["warnings"]
    assert [w["rule"] for w in warnings] == ["size/seed-words"]
    res = labcycle("taxonomy", "validate", "--strict", str(leaf), cwd=taxonomy)
    assert res.returncode == 1 and "size/seed-words" in res.stdout


def test_misnamed_leaf_is_reported_not_skipped(taxonomy):
    (taxonomy / "knowledge/a/qna.yaml").rename(taxonomy / "knowledge/a/qna.yml")
    res = labcycle("taxonomy", "validate", "--format", "json", cwd=taxonomy)
    assert res.returncode == 1
    entry = next(f for f in json.loads(res.stdout)["files"] if f["path"].endswith("qna.yml"))
    assert entry["errors"][0]["rule"] == "file/name" and "rename" in entry["errors"][0]["message"]


@pytest.mark.parametrize("args", [["nope"], ["--format", "xml"], ["--taxonomy", "missing-dir"], ["empty"]])
def test_validate_usage_errors_exit_2(taxonomy, args):
    (taxonomy / "empty").mkdir()
    res = labcycle("taxonomy", "validate", *args, cwd=taxonomy)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def _commit_all(root: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=root, check=True)


def test_diff_json_and_errors(taxonomy):
    res = labcycle("taxonomy", "diff", "--taxonomy", str(taxonomy), cwd=taxonomy)
    assert res.returncode == 1
    assert "not a git repository" in res.stderr and "--base empty" in res.stderr and "Traceback" not in res.stderr

    res = labcycle("taxonomy", "diff", "--base", "empty", "--format", "json", cwd=taxonomy)
    assert res.returncode == 0
    assert json.loads(res.stdout)["base"] == "empty" and len(json.loads(res.stdout)["leaves"]) == 3

    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=taxonomy, check=True)
    _commit_all(taxonomy, "initial")
    subprocess.run(["git", "checkout", "-q", "-b", "work"], cwd=taxonomy, check=True)
    (taxonomy / "compositional_skills/new").mkdir()
    (taxonomy / "compositional_skills/new/qna.yaml").write_text(skill(3, grounded=False, seed=9))
    leaf = taxonomy / "knowledge/a/qna.yaml"
    leaf.write_text(leaf.read_text().replace("labcycle-tests", "someone"))
    res = labcycle("taxonomy", "diff", "--format", "json", cwd=taxonomy)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {
        "base": "main",
        "leaves": [
            {"path": "compositional_skills/new/qna.yaml", "status": "added"},
            {"path": "knowledge/a/qna.yaml", "status": "modified"},
        ],
    }
    res = labcycle("taxonomy", "diff", "--base", "no-such-ref", cwd=taxonomy)
    assert res.returncode == 1 and "no-such-ref" in res.stderr


@pytest.mark.slow
def test_run_on_invalid_taxonomy_prints_the_report(taxonomy, tmp_path):
    (taxonomy / "knowledge/a/qna.yaml").write_text("version: 3\n")
    res = labcycle("run", "--taxonomy", str(taxonomy), "--base", "empty", "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert res.returncode == 1
    assert "lab-cycle failed" in res.stderr
    assert "missing required key 'created_by'" in res.stderr
    assert (tmp_path / "run" / "validation.json").exists()
    assert "Traceback" not in res.stdout + res.stderr
