"""The headline: what improved or regressed against the base, and which numbers the gate checked."""

from __future__ import annotations

import json

from labcycle.headline import GateView, headline
from labcycle.tasks.evaluate import report as report_io
from labcycle.tasks.gate import GatePolicy, decide
from tests.tasks.test_gate import FREEFORM, KNOW, leaf, make_report, safety, sc, suite

# The judge (gated) up everywhere; ROUGE-L and token F1 (not gated) down on the skill; one suite down within
# what the policy allows: the gate passes, and the headline must still name both drops.
LEAVES = {KNOW: leaf("knowledge", sc(5.0, 0.30, 0.30), sc(6.0, 0.40, 0.35)),
          FREEFORM: leaf("freeform_skill", sc(5.0, 0.30, 0.30), sc(5.5, 0.20, 0.25))}
SUITES = {"general_mc": suite("accuracy", 0.50, 0.49), "general_text": suite("perplexity", 10.0, 9.5, items=20)}


def gated_pass() -> tuple[dict, object]:
    report = make_report(LEAVES, SUITES)
    report["safety"] = safety()
    branch = report["branch"]
    for kind, block in branch["by_kind"].items():  # the counts report.md shows
        block["leaves"] = sum(1 for v in LEAVES.values() if v["kind"] == kind)
    branch["overall"]["leaves"] = len(LEAVES)
    decision = decide(report, GatePolicy(), 1)
    assert decision.decision == "pass", decision.reasons
    return report, decision


def test_the_headline_names_regressions_and_what_the_gate_did_not_check():
    report, decision = gated_pass()
    head = headline(report, decision)
    regressed = {(c.scope, c.metric): c for c in head.where("regressed")}
    assert ("regression/general_mc", "accuracy") in regressed and regressed["regression/general_mc", "accuracy"].gated
    assert not regressed["branch/freeform_skill", "rouge_l"].gated and not regressed["branch/freeform_skill", "token_f1"].gated
    improved = {(c.scope, c.metric) for c in head.where("improved")}
    assert {("branch/knowledge", "judge"), ("branch/overall", "judge"), ("regression/general_text", "perplexity")} <= improved

    lines = head.lines()
    assert lines[0] == f"gate: pass ({decision.reasons[0]})"
    assert lines[1].startswith("improved against the base: knowledge leaves: judge (1-10) 5 → 6 (+1)")
    assert "general_mc: accuracy 0.5 → 0.49 (−0.01)" in lines[2]
    assert "freeform skill leaves: ROUGE-L 0.3 → 0.2 (−0.1) (not gated)" in lines[2]
    assert lines[3].startswith("the gate checked: judge (1-10) (knowledge leaves, freeform skill leaves, all changed leaves, 2 leaves)")
    assert "accuracy (general_mc)" in lines[3] and "unsafe-answer rate (safety)" in lines[3]
    assert lines[4] == "not gated, shown for reference only: token F1 (knowledge leaves, freeform skill leaves, " \
                       "all changed leaves); ROUGE-L (knowledge leaves, freeform skill leaves, all changed leaves)"
    # JSON keeps full precision; the decision can come as its JSON too (the release reads it that way).
    as_json = head.to_json()
    rouge = next(c for c in as_json["changes"] if c["scope"] == "branch/freeform_skill" and c["metric"] == "rouge_l")
    assert rouge["delta"] == 0.2 - 0.3 and rouge["direction"] == "regressed" and rouge["gated"] is False
    assert json.loads(json.dumps(headline(report, decision.to_json()).to_json())) == json.loads(json.dumps(as_json))
    assert GateView.of(decision.to_json()) == GateView.of(decision)


def test_without_a_gate_nothing_is_called_gated():
    report, _ = gated_pass()
    head = headline(report, None)
    assert head.lines()[0] == "gate: not applied" and not head.gated and not any(c.gated for c in head.changes)
    assert head.where("regressed")  # drops are still named


def test_report_md_after_the_gate_puts_the_headline_first_and_marks_ungated_drops(tmp_path):
    report, decision = gated_pass()
    plain = report_io.markdown(report)
    assert "⚠" in plain.split("## Safety")[0] and "Headline" not in plain  # before the gate: every drop flagged
    md = report_io.write_gated(tmp_path, report, decision)
    assert (tmp_path / "report.md").read_text() == md
    assert md.index("## Headline") < md.index("## Branch")
    assert "| leaf | kind | questions | judge (1-10) (gated) | token F1 (not gated) | ROUGE-L (not gated) |" in md
    branch = md[md.index("## Branch"):md.index("## Safety")]
    assert "⚠" not in branch.split("\n", 1)[1].replace("⚠ = candidate below base", "")  # the judge dropped nowhere
    assert "0.300 → 0.200 (−0.100) ↓" in branch and "not gated" in branch
    assert "**Not gated** (shown for reference; a drop there did not block this candidate)" in md
    # A gated suite's drop keeps its ⚠, even within what the policy allows.
    assert "| **general_mc** ⚠ | accuracy | 40 | **0.500 → 0.490 (−0.010) ⚠** |" in md
