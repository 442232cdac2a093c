"""The loop's own records: RUN/report.json (every cycle's decision and the released version), and the
release candidate a passing cycle hands to tasks/release."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labcycle.io import write_json

REPORT = "report.json"


def write_report(run_dir: Path, cycles: list[dict[str, Any]], released: str | None) -> Path:
    """RUN/report.json: {"headline": the last decided cycle's headline lines, "cycles": [{"cycle", "decision",
    "reasons", "headline", "plan", ...}], "released": the version's path or null}. Paths are relative to the
    run folder (a registry outside it: its own location), so the file can be shared as it is. Rewritten after
    every cycle, so a crash leaves the decisions made so far."""
    from labcycle.shareable import relative, scrub

    keep = ("cycle", "decision", "reasons", "headline", "plan", "folder", "eval", "release")
    rows = scrub([{k: c[k] for k in keep if k in c} for c in cycles], [run_dir])
    # A registry outside the run folder stays as configured: it is where readers find the release.
    shown = relative(released, [run_dir]) if released and Path(released).is_relative_to(run_dir) else released
    report: dict[str, Any] = {}
    decided = [c for c in rows if c.get("headline")]
    if decided:
        report["headline"] = decided[-1]["headline"]["lines"]
        # What a person reads rather than this file: the evaluation, and the released model's card.
        report["readable"] = [f"cycle-{decided[-1]['cycle']}/eval/report.md", *([f"{shown}/README.md"] if shown else [])]
    report["cycles"] = rows
    report["released"] = shown
    return write_json(Path(run_dir) / REPORT, report)


def gated_report(eval_dir: Path, report: dict[str, Any], decision: Any) -> dict[str, Any]:
    """After the gate: eval/report.md again with the headline first; -> the headline as JSON (full precision),
    for RUN/report.json and the CLI's summary."""
    from labcycle.tasks.evaluate.headline import headline
    from labcycle.tasks.evaluate.report import write_gated

    write_gated(eval_dir, report, decision)
    return headline(report, decision).to_json()


def nothing_changed(manifest: Path) -> str:
    """The one line for a run whose taxonomy has no leaf changed since its base."""
    base = json.loads(Path(manifest).read_text(encoding="utf-8"))["taxonomy"].get("base") or "the base"
    return (f"nothing to do: no leaf changed since {base}; pass --base <ref> to compare with another ref, "
            "or --base empty to take every leaf")


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


def candidate(tuned: Path, folder: Path, decision: dict[str, Any], manifest: Path):  # type: ignore[no-untyped-def]
    """The release candidate of a cycle folder: its last tuned phase, eval report and dataset cards."""
    from labcycle.tasks.release import Candidate

    report_path = folder / "eval" / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    cards = tuple(sorted((folder / "mixed").glob("*/dataset_card.md")))
    commit = json.loads(Path(manifest).read_text(encoding="utf-8"))["taxonomy"]["commit"]
    return Candidate(tuned=tuned, eval_report=report_path, dataset_cards=cards, decision=decision,
                     taxonomy_commit=commit, metrics=headline_metrics(report), run_dir=Path(manifest).parent)


def summary(candidate: Any, decision: Any) -> str:
    """What the approver reads above the form in the Prefect UI."""
    lines = [f"Candidate: {candidate.tuned}", f"Taxonomy commit: {candidate.taxonomy_commit or 'n/a'}", "",
             "Gate:", *[f"- {r}" for r in decision.reasons]]
    return "\n".join(lines)


def evaluation_inputs(cfg: Any, teacher_endpoint: str | None, teacher_model: str | None,
                      max_concurrency: int | None) -> dict[str, Any]:
    """The evaluate task's settings from the config: the judge is the generation teacher (built inside the
    evaluation), the suites the configured ones or the shipped general set, the safety suite the configured
    one or the shipped one (None when evaluation.safety.enabled is false)."""
    from labcycle.tasks.evaluate import JudgeSpec, SafetySpec, shipped_suites
    from labcycle.teacher.settings import teacher_config

    ev = cfg.evaluation
    judge = None
    if ev.judge:
        t = teacher_config(cfg.generation.teacher, teacher_endpoint, teacher_model, max_concurrency)
        judge = JudgeSpec(endpoint=t.endpoint, model=t.model, structured_mode=t.structured_mode,
                          max_model_len=t.max_model_len, max_concurrency=ev.concurrency, api_key_secret=t.api_key_secret)
    suites = [Path(p) for p in ev.suites] if ev.suites is not None else shipped_suites()
    safety = (SafetySpec(suite=Path(ev.safety.suite) if ev.safety.suite else None, judge=ev.safety.judge)
              if ev.safety.enabled else None)
    return {"endpoint": ev.endpoint, "served_base": ev.served_base, "judge": judge, "suites": suites, "safety": safety,
            "max_tokens": ev.max_tokens, "judge_max_tokens": ev.judge_max_tokens, "concurrency": ev.concurrency,
            "held_out_per_leaf": ev.held_out_per_leaf, "max_items": ev.max_items, "max_model_len": ev.max_model_len}
