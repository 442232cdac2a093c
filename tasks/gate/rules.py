"""The rules that decide: one Rule per check of the evaluation report against the policy, and the
Decision they make (decide; decide_alone outside a cycle). read_report reads report.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from labcycle.errors import LabcycleError
from labcycle.tasks.gate.plan import Plan, next_plan, plan_for
from labcycle.tasks.gate.policy import (DIGITS, HIGHER_IS_BETTER, KINDS, RANGES, BranchPolicy, GatePolicy, RegressionPolicy,
                                        SafetyPolicy)


@dataclass(frozen=True)
class Rule:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    decision: Literal["pass", "fail"]
    reasons: tuple[str, ...]  # the outcome, then failing rules, notes, passing rules
    rules: tuple[Rule, ...]
    metric: str  # the branch metric the rules compared
    cycle: int
    next_plan: dict[str, Any] | None  # the next cycle's Plan.to_json(); None on pass or when no cycle is left
    final: bool  # True on pass or when no cycle is left

    def to_json(self) -> dict[str, Any]:
        return {"decision": self.decision, "reasons": list(self.reasons), "rules": [asdict(r) for r in self.rules],
                "metric": self.metric, "cycle": self.cycle, "next_plan": self.next_plan, "final": self.final}


class _Report:
    """Typed reads from the evaluation report; anything missing or out of range names its key."""

    def __init__(self, data: Any, source: str):
        self.data, self.source = data, source

    def error(self, path: tuple, what: str) -> LabcycleError:
        key = ".".join(map(str, path)) or "the report"
        return LabcycleError(f"{key} {what}; the evaluation report is malformed (the gate reads the shape "
                             "tasks/evaluate writes): run the evaluation stage again", where=self.source)

    def get(self, *path: str, kind: type = dict) -> Any:
        node = self.data
        for i, key in enumerate(path):
            if not isinstance(node, dict):
                raise self.error(path[:i], "is not a mapping")
            if key not in node:
                raise self.error(path[:i + 1], "is missing")
            node = node[key]
        if kind is not object and not isinstance(node, kind):
            raise self.error(path, f"is not a {'mapping' if kind is dict else kind.__name__}")
        return node

    def score(self, *path: str, metric: str, nullable: bool = False) -> float | None:
        value = self.get(*path, kind=object)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(path, f"is {value!r}, not a number")
        lo, hi = RANGES.get(metric, (-math.inf, math.inf))
        if not lo <= value <= hi or (metric == "perplexity" and value <= 0):
            bound = f"range {lo:g}-{hi:g}" if hi < math.inf else f"range (above {lo:g})"
            raise self.error(path, f"is {value}, outside {metric}'s {bound}")
        return float(value)


def _fmt(value: float, metric: str, sign: bool = False) -> str:
    digits = 2 if metric in ("judge", "perplexity") else 3
    return f"{value:{'+' if sign else ''}.{digits}f}"


def _verdict(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def _at_least(value: float, threshold: float) -> bool:
    return round(value - threshold, DIGITS) >= 0


def _branch_rules(report: _Report, policy: BranchPolicy, notes: list[str]) -> tuple[str, list[Rule]]:
    leaves = report.get("branch", "leaves")
    if not leaves:
        return policy.metric, [Rule("branch", True, "branch: no changed leaves in the report: not applicable")]
    kinds = {}
    for leaf in sorted(leaves):
        kind = report.get("branch", "leaves", leaf, "kind", kind=object)
        if kind not in KINDS:
            raise report.error(("branch", "leaves", leaf, "kind"), f"is {kind!r}, not one of {', '.join(KINDS)}")
        kinds.setdefault(kind, []).append(leaf)
    scored = [(k, ("branch", "by_kind", k)) for k in KINDS if k in kinds] + [("overall", ("branch", "overall"))]
    th = policy.main
    if th.metric == "judge":
        judged = report.get("branch", "judge_available", kind=bool)
        sites = [path for _, path in scored] + [("branch", "leaves", leaf) for leaf in sorted(leaves)]
        missing = next(((*s, side, "judge") for s in sites for side in ("base", "candidate")
                        if report.score(*s, side, "judge", metric="judge", nullable=True) is None), None) if judged else None
        if not judged or missing:
            th = policy.fallback
            why = "no judge was available for this evaluation" if not judged else f"{'.'.join(missing)} is null"
            notes.append(f"{why}: the branch rules compare {th.metric} instead of judge (branch.fallback in the gate policy)")
    metric, rules = th.metric, []
    for name, path in scored:
        base, cand = (report.score(*path, side, metric, metric=metric) for side in ("base", "candidate"))
        imp = th.min_improvement.for_(name)
        needed = imp.needed(base)
        need = _fmt(needed, metric, sign=True) + (f" = {imp.relative * 100:g}% of base" if imp.absolute is None else "")
        ok = _at_least(cand - base, needed)
        rules.append(Rule(f"branch/{name}", ok, f"branch/{name}: {metric} {_fmt(cand, metric)} vs base "
                          f"{_fmt(base, metric)} ({_fmt(cand - base, metric, sign=True)}, needs {need}): {_verdict(ok)}"))
    for leaf in sorted(leaves):
        base, cand = (report.score("branch", "leaves", leaf, side, metric, metric=metric) for side in ("base", "candidate"))
        questions = leaves[leaf].get("questions")
        over = f" over {questions} questions" if isinstance(questions, int) else ""
        ok = _at_least(cand, base - th.leaf_tolerance)
        rules.append(Rule(f"leaf/{leaf}", ok, f"leaf/{leaf}: {metric} {_fmt(cand, metric)} vs base {_fmt(base, metric)}"
                          f"{over} ({_fmt(cand - base, metric, sign=True)}, may drop {_fmt(th.leaf_tolerance, metric)}): "
                          f"{_verdict(ok)}"))
    return metric, rules


def _regression_rules(report: _Report, policy: RegressionPolicy, policy_source: str, notes: list[str]) -> list[Rule]:
    suites = report.get("regression", "suites")
    for name in sorted(set(policy.suites) - set(suites)):
        notes.append(f"regression.suites.{name} in the gate policy matches no suite in the report")
    if not suites:
        return [Rule("regression", True, "regression: no suites in the report: not applicable")]
    rules = []
    for name in sorted(suites):
        path = ("regression", "suites", name)
        metric = report.get(*path, "metric", kind=str)
        higher = report.get(*path, "higher_is_better", kind=bool)
        if HIGHER_IS_BETTER.get(metric, higher) != higher:
            raise report.error((*path, "higher_is_better"), f"is {str(higher).lower()}, wrong for {metric}")
        base, cand = (report.score(*path, side, metric=metric) for side in ("base", "candidate"))
        max_drop, own = policy.max_drop_for(name, metric)
        if max_drop is None:
            raise LabcycleError(f"regression suite {name!r} reports {metric}, which regression.max_drop has no entry "
                                f"for; add regression.suites.{name}: <max drop> to the gate policy", where=policy_source)
        items = suites[name].get("items")
        over = f" over {items} items" if isinstance(items, int) else ""
        override = " (suite override)" if own else ""
        if higher:
            ok = _at_least(max_drop, base - cand)
            detail = (f"{_fmt(cand - base, metric, sign=True)}, may drop {_fmt(max_drop, metric)}{override}")
        else:
            rise = (cand - base) / base
            ok = _at_least(max_drop, rise)
            detail = f"{rise * 100:+.1f}%, may rise {max_drop * 100:g}%{override}"
        rules.append(Rule(f"regression/{name}", ok, f"regression/{name}: {metric} {_fmt(cand, metric)} vs base "
                          f"{_fmt(base, metric)}{over} ({detail}): {_verdict(ok)}"))
    return rules


# (rule, rate, count of the side's block, the prompts' kind, what is counted)
_SAFETY_RATES = (("safety/unsafe", "unsafe_rate", "unsafe", "harmful", "unsafe answers"),
                 ("safety/over_refusal", "over_refusal_rate", "refused_benign", "benign", "refusals"))


def _safety_rules(report: _Report, policy: SafetyPolicy, notes: list[str]) -> list[Rule]:
    if not isinstance(report.data, dict) or "safety" not in report.data:
        return []  # a report from before safety evaluations, or made by hand: nothing to check
    if not report.get("safety", "enabled", kind=bool):
        if not policy.required:
            notes.append("safety: not evaluated (evaluation.safety.enabled is false); the gate policy does not require it")
            return []
        return [Rule("safety", False, "safety: the evaluation ran without a safety suite (evaluation.safety.enabled is "
                     "false in the config) and the gate policy requires one: enable it, or set safety.required: false in "
                     "the gate policy: FAIL")]
    rules = []
    for name, rate, count, kind, what in _SAFETY_RATES:
        max_rise = policy.max_unsafe_rise if kind == "harmful" else policy.max_over_refusal_rise
        answered = report.get("safety", "answered", kind, kind=int)
        base, cand = (report.score("safety", side, rate, metric="rate", nullable=True) for side in ("base", "candidate"))
        if base is None or cand is None:
            rules.append(Rule(name, False, f"{name}: no {kind} prompt could be asked (each was longer than the served "
                              "context), so the candidate's safety is unknown; raise evaluation.max_model_len: FAIL"))
            continue
        n = {side: report.data["safety"][side].get(count) for side in ("base", "candidate")}
        of = {side: f" ({n[side]} of {answered})" if isinstance(n[side], int) else "" for side in n}
        ok = _at_least(max_rise, cand - base)
        rules.append(Rule(name, ok, f"{name}: {rate} {cand:.3f}{of['candidate']} vs base {base:.3f}{of['base']} on "
                          f"{kind} prompts, {what} ({cand - base:+.3f}, may rise {max_rise:.3f}): {_verdict(ok)}"))
        if kind == "harmful" and policy.max_unsafe_rate is not None:
            ok = _at_least(policy.max_unsafe_rate, cand)
            rules.append(Rule("safety/unsafe_ceiling", ok, f"safety/unsafe_ceiling: {rate} {cand:.3f}{of['candidate']} "
                              f"(at most {policy.max_unsafe_rate:.3f}, whatever the base): {_verdict(ok)}"))
    sources = report.data["safety"].get("label_sources")
    fallback = sources.get("refusal_phrases") if isinstance(sources, dict) else None
    if isinstance(fallback, int) and fallback:
        notes.append(f"safety: {fallback} of {sum(v for v in sources.values() if isinstance(v, int))} prompts were "
                     "labelled by refusal phrases, not the judge: there a harmful prompt answered without a refusal "
                     "counts as unsafe, for base and candidate alike")
    if not policy.required:
        notes.extend(f"{r.detail} (advisory: safety.required is false in the gate policy)" for r in rules)
        return []
    return rules


def decide(report: dict[str, Any], policy: GatePolicy, cycle: int, plan: Plan | dict[str, Any] | None = None, *,
           source: str = "evaluation report") -> Decision:
    """The gate's decision on `cycle`'s evaluation report; `plan` is that cycle's plan (None: as the policy makes it).

    Raises LabcycleError for a malformed report (naming the key) or a regression metric the policy has no
    max_drop for.
    """
    if cycle < 1:
        raise ValueError(f"cycle must be 1 or more, not {cycle}")
    current = plan_for(cycle, policy) if plan is None else plan if isinstance(plan, Plan) else Plan.from_json(plan)
    if current.cycle != cycle:
        raise ValueError(f"the plan is cycle {current.cycle}'s, not cycle {cycle}'s")
    rep = _Report(report, source)
    rep.get()  # the report itself must be a mapping
    notes: list[str] = []
    # Safety rules come first: in the rules, in the reasons and in the artifact's table of failures.
    safety = _safety_rules(rep, policy.safety, notes)
    metric, rules = _branch_rules(rep, policy.branch, notes)
    rules = safety + rules + _regression_rules(rep, policy.regression, policy.source or "gate policy", notes)
    failing = [r for r in rules if not r.passed]
    passed = not failing
    safety_failed = any(not r.passed for r in safety)
    steps = policy.safety.on_fail if safety_failed else policy.on_fail
    # No plan brings back a safety suite the config turned off: another cycle would fail the same way.
    unevaluated = any(r.name == "safety" and not r.passed for r in safety)
    left = cycle < policy.max_cycles and bool(steps) and not unevaluated
    following = None if passed or not left else next_plan(current, policy, safety=safety_failed)
    if passed:
        outcome = f"pass at cycle {cycle} of {policy.max_cycles}: all {len(rules)} rules passed"
    else:
        outcome = f"fail at cycle {cycle} of {policy.max_cycles}: "
        if safety_failed:
            outcome += "the candidate failed the safety rules, which block the release whatever the other scores; "
        outcome += f"{len(failing)} of {len(rules)} rules failed; "
        if following is not None:
            outcome += f"cycle {following.cycle} runs with {following.describe()}"
        elif unevaluated:
            outcome += "no next cycle turns the safety evaluation on, so the candidate is not released"
        elif not steps:
            which = "safety.on_fail" if safety_failed else "on_fail"
            outcome += f"the policy plans no change ({which} is empty), so the candidate is not released"
        else:
            outcome += f"no cycle left (max_cycles {policy.max_cycles}), so the candidate is not released"
    reasons = (outcome, *(r.detail for r in failing), *notes, *(r.detail for r in rules if r.passed))
    return Decision(decision="pass" if passed else "fail", reasons=reasons, rules=tuple(rules), metric=metric,
                    cycle=cycle, next_plan=following.to_json() if following else None, final=passed or not left)


def decide_alone(report: dict[str, Any], policy: GatePolicy, *, source: str = "evaluation report") -> Decision:
    """decide() for an evaluation outside a cycle (`labcycle evaluate`): the same rules, no next cycle, and
    an outcome line that speaks of neither cycles nor releases."""
    decision = decide(report, replace(policy, max_cycles=1), 1, source=source)
    failing = [r for r in decision.rules if not r.passed]
    if not failing:
        outcome = f"pass: all {len(decision.rules)} rules passed"
    else:
        safety = any(r.name.startswith("safety") for r in failing)
        outcome = ("fail: " + ("the candidate failed the safety rules, which block a release whatever the other "
                               "scores; " if safety else "") + f"{len(failing)} of {len(decision.rules)} rules failed")
    return replace(decision, reasons=(outcome, *decision.reasons[1:]))



def read_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabcycleError("evaluation report not found; run the evaluation stage first", where=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabcycleError(f"cannot read the evaluation report ({exc}); run the evaluation stage again",
                            where=str(path)) from None
    return data

