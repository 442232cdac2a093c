"""bench/capacity.py, the capacity plan's simulation: what a reader of docs/architecture.md relies on."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bench import capacity
from bench.capacity import Scale, simulate

REPO = Path(__file__).resolve().parents[1]
TARGET = Scale(replicas=16, nodes=8)


def test_doubling_replicas_halves_generation_until_another_stage_is_the_bottleneck():
    gen = {r: simulate(replace(TARGET, replicas=r))["generation"]["limits_s"]["teacher"] for r in (1, 2, 4, 8, 16)}
    for r in (1, 2, 4, 8):
        assert gen[r] / gen[2 * r] == pytest.approx(2, rel=0.01)
    assert simulate(replace(TARGET, replicas=1))["bottleneck"] == "generate"
    assert simulate(TARGET)["bottleneck"] == "tune"
    # More replicas than that shorten generation, not the cycle's slowest stage.
    assert simulate(replace(TARGET, replicas=64))["stages_s"]["tune"] == simulate(TARGET)["stages_s"]["tune"]


def test_the_bottleneck_is_the_slowest_stage_and_the_cycle_their_sum():
    for scale in capacity.scenarios(Scale()):
        out = simulate(scale)
        stages = out["stages_s"]
        assert stages[out["bottleneck"]] == max(stages.values())
        assert out["cycle_s"] == pytest.approx(sum(stages.values()), abs=len(stages))


def test_many_replicas_make_one_generate_run_cpu_bound_and_leaf_groups_lift_it():
    many = replace(TARGET, replicas=128, nodes=16)
    assert simulate(many)["generation"]["limit"] == "client CPU"
    assert simulate(replace(many, leaf_groups=8))["generation"]["limit"] == "teacher"


def test_tuning_on_more_nodes_shortens_tune_by_their_number():
    one = simulate(TARGET)["stages_s"]["tune"]
    assert simulate(replace(TARGET, tune_nodes=8))["stages_s"]["tune"] == pytest.approx(one / 8, rel=0.01)


@pytest.mark.parametrize("change, message", [
    ({"replicas": 0}, "replicas must be more than 0"),
    ({"leaves": -5}, "leaves must be more than 0"),
    ({"judge_keep": 0}, "judge-keep must be a share above 0 and at most 1"),
    ({"knowledge_share": 1.5}, "knowledge-share must be a share from 0 to 1"),
    ({"replicas": 100, "nodes": 8}, "100 replicas of 1 GPU(s) need 100 GPUs; 8 node(s) of 8 have 64"),
])
def test_a_scale_that_cannot_run_gives_a_clear_error(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        simulate(replace(TARGET, **change))


def test_the_cli_refuses_zero_replicas_with_a_message(capsys):
    assert capacity.main(["--replicas", "0"]) == 2
    assert "replicas must be more than 0" in capsys.readouterr().err


def test_the_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "capacity.json"
    assert capacity.main(["--leaves", "100", "--sweep", "1,2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| baseline: 1 replica, 1 node |" in printed and "bottleneck" in printed
    data = json.loads(out.read_text())
    assert [s["scale"]["leaves"] for s in data["scenarios"]] == [100] * len(data["scenarios"])
    assert {"stages_s", "bottleneck", "generation", "tune", "evaluate", "prefect"} <= set(data["scenarios"][0])
    assert [r["replicas"] for r in data["sweep"]] == [1, 2]


def test_the_simulated_pipelines_are_the_shipped_ones():
    """The request counts come from PIPELINES; a block added to or removed from a shipped pipeline must show here."""
    for name, blocks in capacity.PIPELINES.items():
        spec = yaml.safe_load((REPO / "tasks" / "generate" / "pipelines" / f"{name}.yaml").read_text())
        shipped = tuple((b["type"], b.get("sampling", {}).get("n", 1), b.get("num", 1)) if b["type"] == "generate"
                        else (b["type"], 1, 1) for b in spec["blocks"])
        assert blocks == shipped, name
        known = {"generate", "pii", "safety_judge", *capacity.FILTERS, *capacity.JUDGES}
        assert {b[0] for b in blocks} <= known


def test_each_generate_run_caps_a_replica_on_its_own():
    """leaf_groups runs each have a TeacherPool: 8 runs at max_concurrency 4 load a replica as one run at 32 does."""
    one = simulate(replace(TARGET, leaf_groups=1, max_concurrency=32))["generation"]
    eight = simulate(replace(TARGET, leaf_groups=8, max_concurrency=4))["generation"]
    assert one["in_flight_per_replica"] == eight["in_flight_per_replica"] == 32
    assert one["limits_s"]["teacher"] == eight["limits_s"]["teacher"]
    assert eight["limits_s"]["client CPU"] == pytest.approx(one["limits_s"]["client CPU"] / 8, abs=1)
