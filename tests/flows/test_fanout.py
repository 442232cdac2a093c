"""run_generate's gathering when one group of a fanned-out generation fails: the other group's leaves, and
the failed group's finished ones, reach OUTPUT with one summary, and the stage fails naming the group. The
runs themselves are stood in for here (a group failing half-way on a real worker is slow to cause); the real
fan-out, on a Prefect server with two process workers, is tests/flows/test_remote.py."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.states import Completed, Failed

from labcycle.flows import generate as generate_flow
from labcycle.flows.config import RemoteConfig
from labcycle.tasks.generate import report


def _leaf(folder: Path, leaf_id: str, rows: int) -> dict:
    (folder / leaf_id).mkdir(parents=True)
    (folder / leaf_id / "samples.jsonl").write_text('{"messages": []}\n' * rows)
    (folder / leaf_id / "yield.json").write_text("{}\n")
    return {"leaf_id": leaf_id, "kept": rows, "target": 2, "requests": 3, "prompt_tokens": 30, "completion_tokens": 60}


def test_a_failed_group_keeps_the_finished_leaves_and_names_itself(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    manifest = run / "manifest.json"
    manifest.write_text(json.dumps({"leaves": [{"id": i, "kind": "freeform_skill", "chunks": 0}
                                               for i in ("skills/a", "skills/b", "skills/c", "skills/d")]}))
    out = run / "cycle-1" / "generated"
    seen = {}

    def groups(stage_flow, settings, run_dir, groups, **params):  # type: ignore[no-untyped-def]
        seen["groups"] = groups
        first, second = (Path(g["output"]) for g in groups)
        done = [_leaf(first, leaf, 2) for leaf in groups[0]["leaves"]]
        _leaf(second, groups[1]["leaves"][0], 1)  # the failed group finished one of its two leaves
        summary = report.summarize(done, {"requests": 6, "prompt_tokens": 60, "completion_tokens": 120}, 1.0)
        return [Completed(data={**summary, "output": str(first)}, message="ran as flow run 'one'"),
                Failed(message="generate: flow run 'two' (id 2) of deployment 'generate/gpu' ended Failed: teacher gone")]

    monkeypatch.setattr(generate_flow.remote, "run_groups", groups)
    settings = RemoteConfig(storage=str(tmp_path / "shared"), deployments={"generate": "generate/gpu"}, leaf_groups=2)
    state = generate_flow.run_generate(settings, run, manifest=str(manifest), output=str(out), config=None, plan=None)

    assert [g["leaves"] for g in seen["groups"]] == [["skills/a", "skills/c"], ["skills/b", "skills/d"]]
    assert [Path(g["output"]).relative_to(run).as_posix() for g in seen["groups"]] == \
        ["cycle-1/generated-groups/1", "cycle-1/generated-groups/2"]
    assert state.is_failed()
    assert state.message.startswith("group 2 of 2 (2 leaves): generate: flow run 'two'") and "teacher gone" in state.message
    assert "leaves that finished are kept" in state.message
    for leaf, rows in (("skills/a", 2), ("skills/c", 2), ("skills/b", 1)):
        assert len((out / leaf / "samples.jsonl").read_text().splitlines()) == rows
    assert not (out / "skills/d").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["leaves"] == 2 and summary["samples"] == 4 and sorted(summary["per_leaf"]) == ["skills/a", "skills/c"]


def test_one_group_is_one_run_of_the_stage(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(generate_flow.remote, "run_stage", lambda *a, **k: calls.append((a, k)) or "state")
    monkeypatch.setattr(generate_flow.remote, "run_groups", lambda *a, **k: (_ for _ in ()).throw(AssertionError("fanned out")))
    for settings in (RemoteConfig(), RemoteConfig(storage="/s", deployments={"generate": "generate/gpu"}, leaf_groups=1)):
        assert generate_flow.run_generate(settings, tmp_path, manifest="m", output="o") == "state"
    assert len(calls) == 2 and calls[0][0][0] is generate_flow.generate
