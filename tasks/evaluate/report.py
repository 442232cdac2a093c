"""The evaluation report: report.json (the shape tasks/gate/rules.py reads), answers.jsonl (every question's
answers, judgements and scores; every suite document's log-likelihoods; every safety prompt's answers and
labels) and report.md (base vs candidate tables, drops flagged with ⚠, shown as the Prefect artifact
"eval-report"). Once a gate has decided, report.md is written again with the headline first (what improved,
what regressed, what the gate checked: labcycle/headline.py), and ⚠ only on the metrics the gate
checked; a drop in a metric shown for reference is marked ↓ and said to be not gated."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labcycle.headline import WARN, headline_metrics, safety_markdown
from labcycle.io import write_json, write_jsonl, write_text_atomic

REPORT, ANSWERS, MARKDOWN = "report.json", "answers.jsonl", "report.md"
SIDES = ("base", "candidate")
DIGITS = 4
DOWN = "↓"  # a drop in a metric the gate did not check


def _round_scores(block: dict[str, Any]) -> None:
    for side in SIDES:
        if isinstance(block.get(side), dict):
            block[side] = {m: (None if v is None else round(v, DIGITS)) for m, v in block[side].items()}


def build(branch: dict[str, Any], regression: dict[str, Any], extra: dict[str, Any],
          safety: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report: branch, regression and safety (tasks/evaluate/safety.py; None: not evaluated) as the gate
    reads them (scores rounded to 4 digits), plus `extra` (models, settings, timings, ...). Per-document
    suite details move to answers.jsonl."""
    for leaf in branch["leaves"].values():
        _round_scores(leaf)
    _round_scores(branch["overall"])
    for block in branch["by_kind"].values():
        _round_scores(block)
    for entry in regression["suites"].values():
        for side in SIDES:
            entry[side] = round(entry[side], 6)
        for key in ("acc_norm", "word_perplexity"):
            if key in entry:
                entry[key] = {s: round(v, 6) for s, v in entry[key].items()}
        entry.pop("details", None)
    return {"branch": branch, "regression": regression, "safety": safety or {"enabled": False}, **extra}


def answer_rows(records: list[dict[str, Any]], suites: dict[str, dict[str, Any]],
                safety: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    rows = [{"type": "branch", **r} for r in records]
    for name, entry in suites.items():
        rows += [{"type": "regression", "suite": name, **d} for d in entry.get("details", [])]
    rows += [{"type": "safety", **r} for r in safety or []]
    return rows


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if metric in ("judge", "perplexity") else f"{value:.3f}"


def _pair(block: dict[str, Any], metric: str, higher_is_better: bool = True, gated: bool = True) -> tuple[str, bool]:
    base, cand = block["base"].get(metric), block["candidate"].get(metric)
    if base is None or cand is None:
        return f"{_fmt(base, metric)} → {_fmt(cand, metric)}", False
    worse = cand < base if higher_is_better else cand > base
    delta = cand - base
    cell = f"{_fmt(base, metric)} → {_fmt(cand, metric)} ({'+' if delta >= 0 else '−'}{_fmt(abs(delta), metric)})"
    if not worse:
        return cell, False
    return (f"**{cell} {WARN}**" if gated else f"{cell} {DOWN}"), worse


def markdown(report: dict[str, Any], notes: list[str] | None = None, decision: Any = None) -> str:
    """report.md; with the gate's `decision` (a tasks.gate.Decision or its JSON), the headline comes first and
    ⚠ marks drops only in what the gate checked."""
    from labcycle.headline import GateView, headline

    branch, suites = report["branch"], report["regression"]["suites"]
    models = report.get("models", {})
    gate = GateView.of(decision)
    primary = gate.metric if gate and gate.metric else "judge" if branch["judge_available"] else "rouge_l"
    lines = ["# Evaluation: candidate vs base", ""]
    if gate:
        lines += [*headline(report, decision).markdown(level=2)]
    if models:
        lines.append(f"Base `{models.get('base')}`, candidate `{models.get('candidate')}`, judge "
                     f"{'`' + str(models.get('judge')) + '`' if models.get('judge') else 'none'}.")
    judge = branch.get("judge", {})
    if branch["judge_available"]:
        failures = ", ".join(f"{n} {why}" for why, n in judge.get("failures", {}).items())
        lines.append(f"Judge: {judge.get('judged_pairs')} question pairs scored 1-10"
                     + (f"; {judge.get('failed_pairs')} pairs left out for both models ({failures})." if failures else "."))
    elif judge.get("requested"):
        lines.append("Judge: no judgement could be read; judge-free metrics only (the gate uses its fallback metric).")
    else:
        lines.append("Judge: none configured; judge-free metrics only (the gate uses its fallback metric).")
    lines += [f"- {n}" for n in notes or []]
    names = {"judge": "judge (1-10)", "token_f1": "token F1", "rouge_l": "ROUGE-L"}
    if gate:
        legend = (f"{WARN} = candidate below base in {names[primary] if primary in names else primary}, which the gate "
                  f"checked; {DOWN} = below base in a metric shown for reference, not gated")
        columns = " | ".join(f"{names[m]}{' (gated)' if m == primary else ' (not gated)'}" for m in names)
    else:
        legend = f"{WARN} = candidate below base; main metric: {primary}"
        columns = " | ".join(names.values())
    lines += ["", f"## Branch: changed leaves ({legend})", "",
              f"| leaf | kind | questions | {columns} |", "|---|---|---:|---|---|---|"]

    def row(name: str, kind: str, questions: Any, block: dict[str, Any]) -> str:
        cells = {m: _pair(block, m, gated=gate is None or m == primary) for m in ("judge", "token_f1", "rouge_l")}
        label = f"**{name}** {WARN}" if cells[primary][1] else name
        return f"| {label} | {kind} | {questions} | " + " | ".join(cells[m][0] for m in ("judge", "token_f1", "rouge_l")) + " |"

    for leaf_id, leaf in branch["leaves"].items():
        lines.append(row(f"`{leaf_id}`", leaf["kind"], leaf["questions"], leaf))
    for kind, block in branch["by_kind"].items():
        lines.append(row(f"all {kind}", kind, f"{block['leaves']} leaves", block))
    lines.append(row("overall", "", f"{branch['overall']['leaves']} leaves", branch["overall"]))
    if branch.get("skipped_questions"):
        lines += ["", f"{branch['skipped_questions']} questions were left out: too long for the served context."]
    lines += ["", *safety_markdown(report.get("safety") or {"enabled": False})]
    lines += ["", f"## Regression suites ({WARN} = candidate worse than base)", ""]
    if not suites:
        lines.append("No regression suites configured.")
    else:
        lines += ["| suite | metric | items | base → candidate |", "|---|---|---:|---|"]
        for name, entry in suites.items():
            gated = gate is None or f"regression/{name}" in gate.rules
            cell, worse = _pair(entry_block(entry), entry["metric"], entry["higher_is_better"], gated)
            label = (f"**{name}** {WARN}" if gated else f"{name} {DOWN} (not gated)") if worse else name
            lines.append(f"| {label} | {entry['metric']}{' (lower is better)' if not entry['higher_is_better'] else ''} "
                         f"| {entry['items']} | {cell} |")
        for name, entry in suites.items():
            if isinstance(entry.get("leaves"), dict) and entry["leaves"]:
                # knowledge_mc: the changed knowledge leaves' seed questions as multiple choice, per leaf
                lines += ["", f"### {name}: per leaf (accuracy, multiple choice from the leaf's seed answers)", "",
                          "| leaf | items | base → candidate |", "|---|---:|---|"]
                for leaf, score in entry["leaves"].items():
                    cell, _ = _pair({side: {"accuracy": score[side]} for side in SIDES}, "accuracy", gated=False)
                    lines.append(f"| `{leaf}` | {score['items']} | {cell} |")
    return "\n".join(lines) + "\n"


def entry_block(entry: dict[str, Any]) -> dict[str, Any]:
    return {side: {entry["metric"]: entry[side]} for side in SIDES}


def write_gated(out_dir: Path, report: dict[str, Any], decision: Any) -> str:
    """report.md again, once the gate has decided on it: the headline first, ⚠ only on what the gate checked
    (decision None: as the evaluation wrote it)."""
    md = markdown(report, report.get("notes") or [], decision)
    write_text_atomic(Path(out_dir) / MARKDOWN, md)
    return md


def write(out_dir: Path, report: dict[str, Any], rows: list[dict[str, Any]], notes: list[str] | None = None) -> str:
    """Writes answers.jsonl, report.md, then report.json last (its presence marks a finished evaluation);
    returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / ANSWERS, rows)
    md = markdown(report, notes)
    write_text_atomic(out_dir / MARKDOWN, md)
    write_json(out_dir / REPORT, report)
    return md


@dataclass(frozen=True)
class Comparison:
    """One headline number, base vs candidate."""

    metric: str
    base: float | None
    candidate: float | None


@dataclass(frozen=True)
class Summary:
    """An evaluation's outcome as `labcycle evaluate` prints it: the gate's decision ("pass"/"fail", None
    without a policy) and reasons, and the headline metrics: each regression suite by its name, plus
    "branch/overall" and the safety rates ("safety/unsafe_rate", ...), names no suite can take (a suite's
    name has no slash)."""

    decision: str | None
    reasons: tuple[str, ...]
    metrics: dict[str, Comparison]
    report: str  # report.md

    def to_json(self) -> dict[str, Any]:
        return {"decision": self.decision, "reasons": list(self.reasons),
                "metrics": {name: asdict(c) for name, c in self.metrics.items()}}


def summary(report: dict[str, Any], out_dir: Path, decision: Any = None) -> Summary:
    """The Summary of `report` (written to out_dir) and the gate's Decision on it (tasks/gate/rules.py; None: no
    policy). The branch metric is the one the gate compared, else judge when the report has judge scores."""
    head = headline_metrics(report)
    metrics = {name: Comparison(e["metric"], e["base"], e["candidate"]) for name, e in head["regression"].items()}
    metric = decision.metric if decision is not None else (
        "judge" if report.get("branch", {}).get("judge_available") else "rouge_l")
    sides = {side: (head["branch"][side] or {}).get(metric) for side in SIDES}
    metrics["branch/overall"] = Comparison(metric, sides["base"], sides["candidate"])
    for rate, values in head.get("safety", {}).items():
        metrics[f"safety/{rate}"] = Comparison("rate", values["base"], values["candidate"])
    return Summary(decision=decision.decision if decision is not None else None,
                   reasons=tuple(decision.reasons) if decision is not None else (),
                   metrics=metrics, report=str(Path(out_dir) / MARKDOWN))


__all__ = ["ANSWERS", "MARKDOWN", "REPORT", "Comparison", "Summary", "answer_rows", "build", "markdown", "summary",
           "write", "write_gated"]
