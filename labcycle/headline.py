"""The headline a person reads first: what the candidate improved or regressed against the base, per leaf
kind, regression suite and safety rate, and which of those numbers the gate checked.

The eval report shows every metric it has (judge, token F1, ROUGE-L, each suite's, the safety rates); the
gate compares only some of them. Without saying which, a drop in a metric nobody gated reads like a failure
next to "all rules passed", and a drop the gate allowed reads like nothing. Shown in the eval report.md,
the release card, RUN/report.json and the `run` summary; full precision in JSON, 4 significant digits in
text.

Also what else reads the eval report besides the evaluation: its safety section (safety_markdown, in the eval
report.md and the release card) and the few numbers a release carries (headline_metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

BRANCH_METRICS = ("judge", "token_f1", "rouge_l")
NAMES = {"judge": "judge (1-10)", "token_f1": "token F1", "rouge_l": "ROUGE-L", "unsafe_rate": "unsafe-answer rate",
         "over_refusal_rate": "over-refusal rate"}
# (rate in the report, the gate's rule for it)
SAFETY_RATES = (("unsafe_rate", "safety/unsafe"), ("over_refusal_rate", "safety/over_refusal"))
Direction = Literal["improved", "regressed", "unchanged", "unknown"]
WARN = "⚠"  # a drop (a rise, for a rate where lower is better) in what the gate checks


def number(value: float | None) -> str:
    """A score for people: 4 significant digits."""
    return "–" if value is None else f"{value:.4g}"


@dataclass(frozen=True)
class GateView:
    """What the headline needs of the gate's decision: its outcome line, the branch metric its rules
    compared, and the names of its rules (branch/knowledge, leaf/<id>, regression/<suite>, safety/unsafe...)."""

    decision: str
    outcome: str
    metric: str
    rules: frozenset[str]

    @classmethod
    def of(cls, decision: Any) -> GateView | None:
        """From a tasks.gate.Decision or its to_json(); None for None."""
        if decision is None:
            return None
        if isinstance(decision, Mapping):
            reasons = decision.get("reasons") or [""]
            rules = frozenset(r["name"] for r in decision.get("rules") or [] if isinstance(r, Mapping) and "name" in r)
            return cls(str(decision.get("decision", "n/a")), str(reasons[0]), str(decision.get("metric") or ""), rules)
        return cls(decision.decision, decision.reasons[0] if decision.reasons else "", decision.metric,
                   frozenset(r.name for r in decision.rules))


@dataclass(frozen=True)
class Change:
    """One number, base vs candidate."""

    scope: str   # "branch/knowledge", "branch/overall", "leaf/<id>", "regression/<suite>", "safety/unsafe_rate"
    label: str   # how people name the scope: "knowledge leaves", "general_mc"
    metric: str
    base: float | None
    candidate: float | None
    higher_is_better: bool = True
    gated: bool = False

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.candidate is None else self.candidate - self.base

    @property
    def direction(self) -> Direction:
        if self.delta is None:
            return "unknown"
        if abs(self.delta) <= 1e-9 * max(1.0, abs(self.base or 0.0)):  # a mean's rounding noise is no change
            return "unchanged"
        return "improved" if (self.delta > 0) == self.higher_is_better else "regressed"

    def text(self) -> str:
        delta = "" if self.delta is None else f" ({'+' if self.delta >= 0 else '−'}{number(abs(self.delta))})"
        lower = "" if self.higher_is_better else ", lower is better"
        return (f"{self.label}: {NAMES.get(self.metric, self.metric)} {number(self.base)} → {number(self.candidate)}"
                f"{delta}{lower}{'' if self.gated else ' (not gated)'}")

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "label": self.label, "metric": self.metric, "base": self.base,
                "candidate": self.candidate, "delta": self.delta, "higher_is_better": self.higher_is_better,
                "direction": self.direction, "gated": self.gated}


@dataclass(frozen=True)
class Headline:
    decision: str | None   # "pass" / "fail"; None: no gate was applied
    outcome: str | None    # the gate's first reason
    changes: tuple[Change, ...] = field(default_factory=tuple)

    def where(self, direction: Direction) -> list[Change]:
        # Leaves appear only where they regressed: the kinds carry the rest.
        return [c for c in self.changes if c.direction == direction
                and (direction == "regressed" or not c.scope.startswith("leaf/"))]

    @property
    def gated(self) -> list[str]:
        """What the gate checked, one entry per metric: "judge (knowledge leaves, overall, 3 leaves)"."""
        return _grouped([c for c in self.changes if c.gated])

    @property
    def not_gated(self) -> list[str]:
        return _grouped([c for c in self.changes if not c.gated])

    def lines(self) -> list[str]:
        """Plain text, one fact a line: the decision, then improved, regressed, what was gated and what not."""
        out = [f"gate: {self.decision} ({self.outcome})" if self.decision else "gate: not applied"]
        for direction in ("improved", "regressed"):
            found = self.where(direction)
            out.append(f"{direction} against the base: " + ("; ".join(c.text() for c in found) if found else "nothing"))
        if self.decision:
            out.append("the gate checked: " + ("; ".join(self.gated) or "no metric"))
            if self.not_gated:
                out.append("not gated, shown for reference only: " + "; ".join(self.not_gated))
        return out

    def markdown(self, level: int = 2) -> list[str]:
        lines = ["#" * level + " Headline", ""]
        if self.decision:
            lines.append(f"Gate: **{self.decision}**: {self.outcome}")
        else:
            lines.append("Gate: not applied; no metric below was checked by a gate.")
        lines.append("")
        for direction in ("improved", "regressed"):
            found = self.where(direction)
            lines.append(f"**{direction.capitalize()} against the base:** " + ("none" if not found else ""))
            lines += [f"- {c.text()}" for c in found]
            lines.append("")
        if self.decision:
            lines.append("**The gate checked:** " + ("; ".join(self.gated) or "no metric") + ".")
            if self.not_gated:
                lines.append("")
                lines.append("**Not gated** (shown for reference; a drop there did not block this candidate): "
                             + "; ".join(self.not_gated) + ".")
            lines.append("")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"decision": self.decision, "outcome": self.outcome,
                "improved": [c.scope + ":" + c.metric for c in self.where("improved")],
                "regressed": [c.scope + ":" + c.metric for c in self.where("regressed")],
                "gated": self.gated, "not_gated": self.not_gated,
                "changes": [c.to_json() for c in self.changes], "lines": self.lines()}


def _grouped(changes: list[Change]) -> list[str]:
    by_metric: dict[str, list[str]] = {}
    leaves: dict[str, int] = {}
    for c in changes:
        if c.scope.startswith("leaf/"):
            leaves[c.metric] = leaves.get(c.metric, 0) + 1
            by_metric.setdefault(c.metric, [])
        else:
            by_metric.setdefault(c.metric, []).append(c.label)
    out = []
    for metric, labels in by_metric.items():
        if leaves.get(metric):
            labels = [*labels, f"{leaves[metric]} {'leaf' if leaves[metric] == 1 else 'leaves'}"]
        out.append(f"{NAMES.get(metric, metric)} ({', '.join(labels)})")
    return out


def _side(block: Any, side: str, metric: str) -> float | None:
    value = block.get(side, {}).get(metric) if isinstance(block, Mapping) and isinstance(block.get(side), Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _kind_label(kind: str) -> str:
    return f"{kind.replace('_', ' ')} leaves"


def headline(report: Mapping[str, Any], decision: Any = None) -> Headline:
    """The headline of an eval report (the shape the gate reads) and the gate's decision on it (a
    Decision, its JSON, or None when no gate was applied)."""
    gate = GateView.of(decision)
    rules = gate.rules if gate else frozenset()
    branch = report.get("branch") if isinstance(report.get("branch"), Mapping) else {}
    main = gate.metric if gate and gate.metric else ("judge" if branch.get("judge_available") else "rouge_l")
    changes: list[Change] = []
    order = ("knowledge", "freeform_skill", "grounded_skill")
    kinds = sorted((branch.get("by_kind") or {}).items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else 9, kv[0]))
    blocks = [(f"branch/{kind}", _kind_label(kind), block) for kind, block in kinds]
    if isinstance(branch.get("overall"), Mapping):
        blocks.append(("branch/overall", "all changed leaves", branch["overall"]))
    for metric in BRANCH_METRICS:
        for scope, label, block in blocks:
            base, cand = _side(block, "base", metric), _side(block, "candidate", metric)
            if base is None and cand is None:
                continue
            changes.append(Change(scope, label, metric, base, cand, gated=metric == main and scope in rules))
    for leaf_id, leaf in (branch.get("leaves") or {}).items():
        base, cand = _side(leaf, "base", main), _side(leaf, "candidate", main)
        if base is not None or cand is not None:
            changes.append(Change(f"leaf/{leaf_id}", f"leaf {leaf_id}", main, base, cand,
                                  gated=f"leaf/{leaf_id}" in rules))
    suites = (report.get("regression") or {}).get("suites") or {}
    for name, entry in suites.items():
        if not isinstance(entry, Mapping):
            continue
        base, cand = (entry.get(s) if isinstance(entry.get(s), (int, float)) else None for s in ("base", "candidate"))
        changes.append(Change(f"regression/{name}", name, str(entry.get("metric", "score")), base, cand,
                              bool(entry.get("higher_is_better", True)), gated=f"regression/{name}" in rules))
    safety = report.get("safety") or {}
    if isinstance(safety, Mapping) and safety.get("enabled"):
        for rate, rule in SAFETY_RATES:
            changes.append(Change(f"safety/{rate}", "safety", rate, _side(safety, "base", rate),
                                  _side(safety, "candidate", rate), higher_is_better=False, gated=rule in rules))
    return Headline(gate.decision if gate else None, gate.outcome if gate else None, tuple(changes))


def headline_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a release event carries: overall branch scores, each regression suite, and the
    safety rates (when the evaluation had a safety suite)."""
    branch = report.get("branch", {}).get("overall", {})
    suites = report.get("regression", {}).get("suites", {})
    metrics = {"branch": {"base": branch.get("base"), "candidate": branch.get("candidate")},
               "regression": {name: {"metric": s.get("metric"), "base": s.get("base"), "candidate": s.get("candidate")}
                              for name, s in suites.items()}}
    safety = report.get("safety") or {}
    if safety.get("enabled"):
        metrics["safety"] = {rate: {side: safety.get(side, {}).get(rate) for side in ("base", "candidate")}
                             for rate in ("unsafe_rate", "over_refusal_rate")}
    return metrics


def _share(rate: float | None, count: int | None = None) -> str:
    if rate is None:
        return "–"
    return f"{count} ({rate * 100:.1f}%)" if count is not None else f"{rate * 100:.1f}%"


def _rate_cell(base: float | None, cand: float | None, base_n: int | None = None, cand_n: int | None = None,
               warn: bool = True) -> str:
    """base → candidate for a rate where higher is worse; a rise is flagged (when `warn`)."""
    cell = f"{_share(base, base_n)} → {_share(cand, cand_n)}"
    if base is None or cand is None:
        return cell
    delta = (cand - base) * 100
    cell += f" ({'+' if delta >= 0 else '−'}{abs(delta):.1f} points)"
    return f"**{cell} {WARN}**" if warn and cand > base else cell


def safety_markdown(safety: dict[str, Any]) -> list[str]:
    """The report's safety section: unsafe answers to harmful prompts and refusals of benign ones, base vs
    candidate, with the label sources (a rise is flagged with ⚠)."""
    lines = [f"## Safety ({WARN} = candidate worse than base)", ""]
    if not safety.get("enabled"):
        return lines + ["Not evaluated: evaluation.safety.enabled is false in the config."]
    prompts, answered, sources = safety["prompts"], safety["answered"], safety["label_sources"]
    base, cand = safety["base"], safety["candidate"]
    judge = safety.get("judge", {})
    lines.append(f"Suite `{safety['suite']}`: {prompts['harmful']} harmful and {prompts['benign']} benign prompts. "
                 f"Labels: the judge for {sources['judge']} prompts, refusal phrases for {sources['refusal_phrases']}.")
    if sources["refusal_phrases"]:
        why = ("no judge" if not judge.get("requested") else
               ", ".join(f"{n} {reason}" for reason, n in judge.get("failures", {}).items()) or "judge failures")
        lines.append(f"- Refusal phrases ({why}) only tell refused from not refused: there, a harmful prompt "
                     "answered without a refusal counts as unsafe, which overstates the unsafe rate for both models.")
    if safety.get("skipped"):
        lines.append(f"- {safety['skipped']} prompts were left out: too long for the served context.")
    lines += ["", "| metric | prompts | base → candidate |", "|---|---:|---|"]
    for what, kind, rate, count, warn in (("unsafe answers to harmful prompts", "harmful", "unsafe_rate", "unsafe", True),
                                          ("refusals of benign prompts (over-refusal)", "benign", "over_refusal_rate",
                                           "refused_benign", True),
                                          ("refusals of harmful prompts", "harmful", "refusal_rate", "refused_harmful", False)):
        cell = _rate_cell(base[rate], cand[rate], base[count], cand[count], warn=warn)
        lines.append(f"| {what} | {answered[kind]} | {cell} |")
    lines += ["", "| category | kind | prompts | base → candidate |", "|---|---|---:|---|"]
    for entry in safety.get("by_category", []):
        what = "unsafe" if entry["kind"] == "harmful" else "refused"
        lines.append(f"| {entry['category']} | {entry['kind']} ({what}) | {entry['prompts']} | "
                     f"{_rate_cell(entry['base'], entry['candidate'])} |")
    return lines


__all__ = ["WARN", "Change", "GateView", "Headline", "headline", "headline_metrics", "number", "safety_markdown"]
