"""Splitting a run's leaves into groups of about equal work (remote.leaf_groups) and combining the groups'
summaries into the one a single run would have written."""

from __future__ import annotations

import json

import pytest

from labcycle.errors import LabcycleError
from labcycle.leaves import LeafInput
from labcycle.tasks.generate import inputs, report


def _manifest(tmp_path, chunks: dict[str, int]):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"leaves": [{"id": i, "kind": "knowledge" if c else "freeform_skill", "chunks": c}
                                           for i, c in chunks.items()]}))
    return path


def test_groups_balance_the_work_cover_every_leaf_once_and_are_stable(tmp_path):
    chunks = {"knowledge/a": 9, "knowledge/b": 4, "knowledge/c": 4, "skills/d": 0, "skills/e": 0, "skills/f": 0,
              "knowledge/g": 1}
    groups = inputs.split(_manifest(tmp_path, chunks), 3)
    assert sorted(i for g in groups for i in g) == sorted(chunks)
    work = sorted(sum(max(1, chunks[i]) for i in g) for g in groups)
    assert work == [6, 6, 9]  # the heaviest leaf alone; the rest spread evenly
    # the same manifest, listed in another order, splits the same way
    reordered = _manifest(tmp_path, dict(reversed(list(chunks.items()))))
    assert inputs.split(reordered, 3) == groups
    # never an empty group: fewer leaves than groups gives one group per leaf
    assert inputs.split(_manifest(tmp_path, {"skills/x": 0, "skills/y": 0}), 8) == [["skills/x"], ["skills/y"]]


def test_a_group_naming_a_leaf_the_manifest_lacks_is_refused():
    leaves = [LeafInput(id="skills/a", kind="freeform_skill", hash="h", qna={})]
    assert inputs.only(leaves, None) == leaves and inputs.only(leaves, ["skills/a"]) == leaves
    with pytest.raises(LabcycleError, match=r"\['skills/b'\] are not in this run's manifest"):
        inputs.only(leaves, ["skills/a", "skills/b"])


def test_combined_summary_adds_the_groups_up():
    def part(leaf: str, kept: int, requests: int, wall: float) -> dict:
        reports = [{"leaf_id": leaf, "kept": kept, "target": 10, "requests": requests, "prompt_tokens": 5 * requests,
                    "completion_tokens": 7 * requests, "below_target": kept < 10}]
        stats = {"requests": requests, "prompt_tokens": 5 * requests, "completion_tokens": 7 * requests}
        return report.summarize(reports, stats, wall)

    combined = report.combine([part("a", 10, 4, 2.0), part("b", 3, 6, 3.0)], wall_s=3.5)
    assert (combined["leaves"], combined["samples"], combined["requests"]) == (2, 13, 10)
    assert combined["below_target"] == ["b"] and sorted(combined["per_leaf"]) == ["a", "b"]
    assert combined["completion_tokens"] == 70 and combined["completion_tokens_per_s"] == 20.0
    assert combined["generation"]["prompt_tokens"] == 50
    assert [g["leaves"] for g in combined["groups"]] == [["a"], ["b"]]
