"""The mix against InstructLab's conventions: instructlab-sdg's own mixer output for the same samples.

tests/data/instructlab_mix/generated holds a few fixed samples (a knowledge leaf, a freeform and a grounded
skills leaf); golden/ is what instructlab-sdg's DataMixer wrote for them (make_golden.py, run in a Python of
its own). labcycle mixes the same samples with `system_prompt` set to sdg's default and `instructlab_files`,
and both are held to the same conventions: a system turn first, `unmask` on the knowledge Q&A only,
`metadata` as JSON text, the InstructLab file names and row columns.

Where labcycle deliberately differs, the last test says so: InstructLab's phase-1 file holds the knowledge
Q&A only, with the source chunk before the question; its RAFT copies, a second copy of the Q&A and the
skills (each leaf drawn to 30 samples, with replacement) all go into the skills file. labcycle's phase 1
holds the Q&A (the question alone) and their RAFT copies, its phase 2 the skills and a replay of phase 1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labcycle.tasks.mix import mix, recipe_from_mapping
from labcycle.tasks.mix.recipe import INSTRUCTLAB_SYSTEM_PROMPT

DATA = Path(__file__).resolve().parents[1] / "data" / "instructlab_mix"
GOLDEN = DATA / "golden"
COLUMNS = {"id", "messages", "metadata", "unmask"}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def files(folder: Path) -> dict[str, list[dict]]:
    """{phase: rows} of the InstructLab-named files in `folder`, one per phase."""
    out = {}
    for phase in ("knowledge", "skills"):
        found = sorted(folder.glob(f"{phase}_train_msgs_*.jsonl"))
        assert len(found) == 1, f"{phase}_train_msgs_*.jsonl in {folder}: {found}"
        out[phase] = read(found[0])
    return out


def answer(row: dict) -> str:
    return row["messages"][-1]["content"]


def grounded(row: dict) -> bool:
    """A RAFT-style copy: documents shown before the question (sdg: "Document:", labcycle: "Document 1:")."""
    return row["messages"][1]["content"].startswith("Document")


@pytest.fixture(scope="module")
def golden() -> dict:
    return {"info": json.loads((GOLDEN / "sdg.json").read_text()), **files(GOLDEN)}


@pytest.fixture(scope="module")
def ours(golden, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("run") / "mixed"
    recipe = recipe_from_mapping({"system_prompt": golden["info"]["system_prompt"], "instructlab_files": True,
                                  "held_out": {"per_leaf": 0}, "skills": {"replay_fraction": 1}})
    summary = mix(DATA / "generated", out, recipe)
    return {"summary": summary, "out": out, **files(out)}


def knowledge_answers() -> set[str]:
    samples = DATA / "generated" / "knowledge" / "ai" / "risk" / "samples.jsonl"
    return {r["messages"][-1]["content"] for r in read(samples)}


def test_the_golden_files_are_sdgs_own(golden):
    assert golden["info"]["system_prompt"] == INSTRUCTLAB_SYSTEM_PROMPT  # the default labcycle names, verbatim
    assert golden["info"]["instructlab-sdg"].startswith("0.")


@pytest.mark.parametrize("phase", ["knowledge", "skills"])
def test_rows_have_instructlabs_columns_system_turn_and_metadata(golden, ours, phase):
    prompt = golden["info"]["system_prompt"]
    for rows in (golden[phase], ours[phase]):
        assert rows
        for row in rows:
            assert set(row) == COLUMNS and isinstance(row["id"], str) and isinstance(row["unmask"], bool)
            assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
            assert row["messages"][0] == {"role": "system", "content": prompt}
            assert all(set(m) == {"role", "content"} for m in row["messages"])
            assert isinstance(json.loads(row["metadata"]), dict)  # JSON text of an object


def test_file_names(ours):
    names = ours["summary"]["instructlab"]
    assert set(names) == {"knowledge", "skills"}
    for phase, name in names.items():
        assert name.startswith(f"{phase}_train_msgs_") and name.endswith(".jsonl") and (ours["out"] / name).is_file()


def test_unmask_on_the_knowledge_qa_only(golden, ours):
    qa = knowledge_answers()
    # InstructLab: the knowledge Q&A train on every token, in phase 1 and again in phase 2 ...
    assert all(r["unmask"] for r in golden["knowledge"]) and {answer(r) for r in golden["knowledge"]} == qa
    assert {answer(r) for r in golden["skills"] if r["unmask"]} == qa
    # ... their RAFT copies and the skills samples on the answer only.
    assert all(not r["unmask"] for r in golden["skills"] if grounded(r) or answer(r) not in qa)
    # labcycle, the same rule: its phase-1 Q&A (and their replay in phase 2) unmask, the rest not.
    assert {answer(r) for r in ours["knowledge"] if r["unmask"]} == qa
    for rows in (ours["knowledge"], ours["skills"]):
        assert all(r["unmask"] == (answer(r) in qa and not grounded(r)) for r in rows)
    assert any(r["unmask"] for r in ours["skills"])  # the replay keeps the mark


def test_metadata_keeps_what_the_sample_came_with(golden, ours):
    assert {json.loads(r["metadata"])["dataset"] for r in golden["knowledge"]} == {"document_knowledge_qa"}
    for r in ours["knowledge"] + ours["skills"]:
        meta = json.loads(r["metadata"])
        assert meta["leaf_id"] and meta["kind"] and meta["source"] in ("knowledge_qa", "knowledge_grounded", "skills",
                                                                       "replay")
        if meta["kind"] == "knowledge":
            assert meta["context"].startswith("Chunk ")  # the source chunk, as sdg keeps it (sdg_document)


def test_instructlab_files_hold_the_phase_sets(ours):
    """The same rows as data.jsonl, in its order; the row's source and leaf move into the metadata."""
    for phase in ("knowledge", "skills"):
        data = read(ours["out"] / phase / "data.jsonl")
        assert len(data) == len(ours[phase])
        for d, o in zip(data, ours[phase]):
            assert (o["id"], o["messages"], o["unmask"]) == (d["id"], d["messages"], d["unmask"])
            assert json.loads(o["metadata"]) == {"source": d["source"], "leaf_id": d["leaf_id"],
                                                 **json.loads(d["metadata"])}


def test_where_labcycle_differs_from_instructlab_sdg(golden, ours):
    """Deliberate differences, held here so a change on either side is noticed."""
    # InstructLab's unmask Q&A show the source chunk before the question; labcycle's ask the question alone
    # (the chunk is shown in the grounded copies).
    sdg_qa = next(r for r in golden["knowledge"] if r["unmask"])
    assert sdg_qa["messages"][1]["content"].startswith("Chunk ") and "\n\nQuestion " in sdg_qa["messages"][1]["content"]
    assert all(r["messages"][1]["content"].startswith("Question ") for r in ours["knowledge"] if r["unmask"])
    # InstructLab's RAFT copies are in its skills file; labcycle's in phase 1.
    assert not any(grounded(r) for r in golden["knowledge"]) and any(grounded(r) for r in golden["skills"])
    assert any(grounded(r) for r in ours["knowledge"])
    # InstructLab draws each skills leaf to 30 samples with replacement; labcycle keeps each sample once.
    sdg_skills = [r for r in golden["skills"] if not r["unmask"] and not grounded(r)]
    assert len(sdg_skills) == 60 and len({answer(r) for r in sdg_skills}) == 7
    assert sum(json.loads(r["metadata"])["source"] == "skills" for r in ours["skills"]) == 7


def _sdg_python() -> str | None:
    """A Python with instructlab-sdg: this one if it has it, else $LABCYCLE_INSTRUCTLAB_PYTHON."""
    if importlib.util.find_spec("instructlab") and importlib.util.find_spec("instructlab.sdg"):
        return sys.executable
    return os.environ.get("LABCYCLE_INSTRUCTLAB_PYTHON") or None


@pytest.mark.skipif(_sdg_python() is None, reason="instructlab-sdg is not installed here; set "
                    "LABCYCLE_INSTRUCTLAB_PYTHON to a Python that has it (see tests/data/instructlab_mix/make_golden.py)")
def test_sdgs_mixer_still_writes_the_golden_files(tmp_path):
    """sdg's mixer run live on the same samples writes what golden/ holds (else: rerun make_golden.py and
    look at what changed)."""
    done = subprocess.run([_sdg_python(), str(DATA / "make_golden.py"), "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    live = files(tmp_path)
    expected = files(GOLDEN)
    for phase in ("knowledge", "skills"):
        assert live[phase] == expected[phase]
