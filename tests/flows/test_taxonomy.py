"""The taxonomy flow (first stage of lab_cycle) on a real (temporary) Prefect server, over real git repositories."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from labcycle.flows.taxonomy import prepare_taxonomy
from labcycle.io import read_jsonl
from labcycle.schemas import validator

pytestmark = pytest.mark.slow

KNOWLEDGE = "knowledge/technology/generative_ai/risks"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _artifact(key: str):  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0] if found else None


def test_runs_every_stage_and_writes_the_run_folder(prefect_harness, example_taxonomy, tmp_path):
    run = tmp_path / "run"
    state = prepare_taxonomy(taxonomy=str(example_taxonomy), base="empty", output=str(run), return_state=True)
    assert state.is_completed(), state.message

    manifest = json.loads((run / "manifest.json").read_text())
    validator("manifest.schema.json").validate(manifest)
    kinds = {leaf["id"]: leaf["kind"] for leaf in manifest["leaves"]}
    assert kinds == {
        KNOWLEDGE: "knowledge",
        "compositional_skills/writing/risk_summaries": "freeform_skill",
        "compositional_skills/extraction/risk_register": "grounded_skill",
    }
    assert manifest["taxonomy"]["commit"] == _git(example_taxonomy, "rev-parse", "HEAD").strip()

    knowledge = next(leaf for leaf in manifest["leaves"] if leaf["kind"] == "knowledge")
    chunks = read_jsonl(run / "documents" / KNOWLEDGE / "chunks.jsonl")
    assert knowledge["chunks"] == len(chunks) > 0
    docs_repo = example_taxonomy.parent / "documents" / "ai-risk"
    for chunk in chunks:
        source = (docs_repo / chunk["source"]).read_text(encoding="utf-8")
        assert source[chunk["start"] : chunk["end"]] == chunk["text"]
        assert len(chunk["text"].split()) <= 1000
    assert {f["path"] for f in knowledge["documents"]["files"]} == {"mitigations.md", "risk-categories.md"}

    report = json.loads((run / "validation.json").read_text())
    assert len(report["files"]) == 3 and all(f["valid"] for f in report["files"])

    table = _artifact("leaves")
    assert table is not None and KNOWLEDGE in json.dumps(table.data)


def test_selects_only_leaves_changed_since_the_base(prefect_harness, example_taxonomy, tmp_path):
    _git(example_taxonomy, "checkout", "-q", "-b", "edit")
    leaf = example_taxonomy / "compositional_skills/writing/risk_summaries/qna.yaml"
    leaf.write_text(leaf.read_text().replace("created_by: labcycle", "created_by: someone-else"))
    _git(example_taxonomy, "commit", "-qam", "edit one skill")

    run = tmp_path / "run"
    state = prepare_taxonomy(taxonomy=str(example_taxonomy), base="main", output=str(run), return_state=True)
    assert state.is_completed(), state.message
    manifest = json.loads((run / "manifest.json").read_text())
    assert [(e["id"], e["status"]) for e in manifest["leaves"]] == [("compositional_skills/writing/risk_summaries", "modified")]
    assert manifest["taxonomy"]["leaves_total"] == 3
    assert not (run / "documents").exists()  # no knowledge leaf changed: nothing fetched or chunked


def test_leaf_hash_follows_content_not_the_run(prefect_harness, example_taxonomy, tmp_path):
    def hashes(run: Path) -> dict[str, str]:
        state = prepare_taxonomy(taxonomy=str(example_taxonomy), base="empty", output=str(run), return_state=True)
        assert state.is_completed(), state.message
        return {e["id"]: e["hash"] for e in json.loads((run / "manifest.json").read_text())["leaves"]}

    first = hashes(tmp_path / "a")
    # The documents are cached by (repo, commit): the second run must not need the source repository.
    shutil.rmtree(example_taxonomy.parent / "documents")
    skill = example_taxonomy / "compositional_skills/extraction/risk_register/qna.yaml"
    skill.write_text(skill.read_text().replace("created_by: labcycle", "created_by: another"))
    second = hashes(tmp_path / "b")
    assert first[KNOWLEDGE] == second[KNOWLEDGE]
    assert first["compositional_skills/writing/risk_summaries"] == second["compositional_skills/writing/risk_summaries"]
    assert first["compositional_skills/extraction/risk_register"] != second["compositional_skills/extraction/risk_register"]


def test_invalid_taxonomy_fails_with_the_readable_report(prefect_harness, example_taxonomy, tmp_path):
    leaf = example_taxonomy / "compositional_skills/writing/risk_summaries/qna.yaml"
    leaf.write_text(leaf.read_text().replace("created_by: labcycle\n", "created_by: labcycle   \nmood: happy\n"))
    run = tmp_path / "run"
    state = prepare_taxonomy(taxonomy=str(example_taxonomy), base="empty", output=str(run), return_state=True)
    assert state.is_failed()
    assert "1 invalid" in state.message
    assert "risk_summaries/qna.yaml:2:21: trailing spaces" in state.message
    assert "unknown key 'mood'" in state.message
    assert "Traceback" not in state.message
    report = json.loads((run / "validation.json").read_text())
    assert [f["valid"] for f in report["files"]].count(False) == 1
    artifact = _artifact("taxonomy-validation")
    assert artifact is not None and "unknown key 'mood'" in artifact.data
    assert not (run / "manifest.json").exists()


def test_document_errors_name_the_leaf(prefect_harness, example_taxonomy, tmp_path):
    leaf = example_taxonomy / KNOWLEDGE / "qna.yaml"
    leaf.write_text(leaf.read_text().replace('- "*.md"', '- "missing/*.md"'))
    run = tmp_path / "run"
    state = prepare_taxonomy(taxonomy=str(example_taxonomy), base="empty", output=str(run), return_state=True)
    assert state.is_failed()
    assert KNOWLEDGE in state.message and "missing/*.md" in state.message
    assert (run / "validation.json").exists()  # what was produced before the failure is kept


def test_empty_taxonomy_and_bad_config_fail_clearly(prefect_harness, tmp_path):
    (tmp_path / "tax" / "knowledge").mkdir(parents=True)
    state = prepare_taxonomy(taxonomy=str(tmp_path / "tax"), base="empty", output=str(tmp_path / "run"), return_state=True)
    assert state.is_failed() and "no qna.yaml found" in state.message

    cfg = tmp_path / "labcycle.yaml"
    cfg.write_text("chunking:\n  max_words: 10\n  overlap_words: 100\n")
    state = prepare_taxonomy(taxonomy=str(tmp_path / "tax"), config=str(cfg), return_state=True)
    assert state.is_failed() and "labcycle.yaml" in state.message
