"""The evaluation gate: pass the candidate, or fail it with the plan the next cycle runs.

The policy is a YAML file checked against schemas/gate.schema.json, then typed (GatePolicy); `decide`
compares the evaluation report's candidate scores with the base's, one Rule per check:
- branch/<kind> and branch/overall: the candidate beats the base by at least min_improvement;
- leaf/<id>: every changed leaf scores at least base - leaf_tolerance;
- regression/<suite>: no suite drops by more than its max_drop (absolute where higher is better,
  relative where lower is better, e.g. perplexity);
- safety/unsafe, safety/over_refusal (and safety/unsafe_ceiling): the candidate's unsafe-answer rate on
  harmful prompts and refusal rate on benign ones rise by at most max_unsafe_rise / max_over_refusal_rise
  over the base's (rates 0-1, rises absolute: 0.05 is five points). With safety.required (the default) a
  failing safety rule blocks the release whatever the other rules say, comes first in the reasons, and
  the next cycle runs the policy's safety.on_fail steps instead of on_fail; an evaluation run without a
  safety suite fails too. Without safety.required the safety results are notes only.
A value exactly at a threshold passes; differences are rounded to 1e-9 first so float noise
(0.41 - 0.39 = 0.020000000000000018) never decides. On failure the next cycle's Plan applies the
policy's next on_fail step on top of the previous ones, until max_cycles.

- policy.py: the policy's types (GatePolicy and its parts), their defaults, policy_from_mapping and
  load_policy, and the constants the rules share (KINDS, RANGES, HIGHER_IS_BETTER);
- plan.py: Plan, what each cycle changes relative to the user's config (first_plan, next_plan, plan_for);
- rules.py: the rules, Rule and Decision, decide and decide_alone, read_report;
- report.py: markdown, the decision as the Prefect artifact;
- here: the Prefect task `gate_task`, and every name above for importers of labcycle.tasks.gate.

Pure logic: no Prefect or torch import at module level; `gate_task`, the Prefect task, is built on first
use (see the bottom), so loading a policy or deciding never imports Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labcycle.tasks.gate.plan import Plan, first_plan, next_plan, plan_for
from labcycle.tasks.gate.policy import (DEFAULT_ON_FAIL, DEFAULT_SAFETY_ON_FAIL, HIGHER_IS_BETTER, KINDS, RANGES, Approval,
                                        BranchPolicy, GatePolicy, Improvement, MinImprovement, RegressionPolicy, Release,
                                        SafetyPolicy, Step, Thresholds, load_policy, policy_from_mapping)
from labcycle.tasks.gate.report import markdown
from labcycle.tasks.gate.rules import Decision, Rule, decide, decide_alone, read_report

__all__ = ["DEFAULT_ON_FAIL", "DEFAULT_SAFETY_ON_FAIL", "HIGHER_IS_BETTER", "KINDS", "RANGES", "Approval", "BranchPolicy",
           "Decision", "GatePolicy", "Improvement", "MinImprovement", "Plan", "RegressionPolicy", "Release", "Rule",
           "SafetyPolicy", "Step", "Thresholds", "decide", "decide_alone", "first_plan", "load_policy", "markdown",
           "next_plan", "plan_for", "policy_from_mapping", "read_report"]


def _gate_task():  # type: ignore[no-untyped-def]
    from prefect import task

    @task(name="gate", task_run_name="gate: cycle {cycle}")
    def gate_task(report: dict[str, Any] | str | Path, policy: GatePolicy, cycle: int,
                  plan: dict[str, Any] | None = None) -> Decision:
        """decide() on a report (or its JSON file), with the decision as the markdown artifact "gate-decision"."""
        from prefect.artifacts import create_markdown_artifact

        source = "evaluation report" if isinstance(report, dict) else str(report)
        data = report if isinstance(report, dict) else read_report(report)
        decision = decide(data, policy, cycle, plan, source=source)
        create_markdown_artifact(markdown=markdown(decision), key="gate-decision", description=decision.reasons[0])
        return decision

    return gate_task


def __getattr__(name: str) -> Any:
    # `gate_task` is built on first use, so reading a policy or deciding never imports Prefect.
    if name == "gate_task":
        globals()["gate_task"] = task = _gate_task()
        return task
    raise AttributeError(name)
