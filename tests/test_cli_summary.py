"""`labcycle run`'s closing summary: the headline, then the readable reports, not only report.json."""

from __future__ import annotations

from labcycle import cli
from labcycle.headline import headline
from tests.test_headline import gated_pass


def test_the_run_summary_prints_the_headline_and_points_at_the_readable_reports(tmp_path, capsys):
    report, decision = gated_pass()
    run = tmp_path / "run"
    version = run / "registry" / "tiny" / "v1"
    generation = {"samples": 8, "output": str(run / "cycle-1" / "generated"), "requests": 4, "completion_tokens": 100,
                  "wall_s": 1.0, "per_leaf": {}}
    result = {"run_dir": str(run), "leaves": 2, "manifest": str(run / "manifest.json"), "released": str(version),
              "generation": generation,
              "cycles": [{"cycle": 1, "folder": str(run / "cycle-1"), "decision": "pass", "reasons": list(decision.reasons),
                          "headline": headline(report, decision).to_json()}]}
    cli._print_summary(result, teacher_model=None)
    printed = capsys.readouterr().out
    assert "cycle 1 against the base:" in printed
    assert "  regressed against the base: " in printed and "ROUGE-L 0.3 → 0.2 (−0.1) (not gated)" in printed
    assert "  not gated, shown for reference only: token F1" in printed
    assert f"model card: {version}/README.md" in printed
    assert f"evaluation: {run}/cycle-1/eval/report.md" in printed
    assert f"all cycles (JSON): {run}/report.json" in printed
    assert printed.index("against the base:") < printed.index("released:")


def test_the_run_summary_names_the_mixed_data_where_it_is(tmp_path, capsys):
    """mix.json names its folder relative to the cycle (it is meant to be shared); the summary prints a path
    the user can open."""
    run = tmp_path / "run"
    mix = {"output": "mixed", "phases": {"knowledge": {"samples": 6, "data": "knowledge/data.jsonl"},
                                         "skills": {"samples": 4, "data": "skills/data.jsonl"}}}
    generation = {"samples": 10, "output": str(run / "cycle-1" / "generated"), "requests": 4, "completion_tokens": 100,
                  "wall_s": 1.0, "per_leaf": {}}
    result = {"run_dir": str(run), "leaves": 2, "manifest": str(run / "manifest.json"), "generation": generation,
              "mix": mix, "cycles": [{"cycle": 1, "folder": str(run / "cycle-1")}], "released": None}
    cli._print_summary(result, teacher_model=None)
    printed = " ".join(capsys.readouterr().out.split())
    assert f"mixed knowledge: 6 samples in {run / 'cycle-1' / 'mixed' / 'knowledge' / 'data.jsonl'}" in printed
