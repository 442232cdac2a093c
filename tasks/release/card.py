"""The released model card: the skills phase's card (lineage, hyperparameters, loss) plus a release section
with the gate's decision, the headline metrics and the safety evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labcycle.tasks.release.candidate import Candidate


def _flat(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", round(v, 4) if isinstance(v, float) else v))
    return rows


def safety_section(report_path: Path) -> list[str]:
    """The eval report's safety results, base vs candidate, as the card's "Safety" section."""
    from labcycle.tasks.evaluate.report import safety_markdown

    try:
        report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    safety = report.get("safety") if isinstance(report, dict) else None
    if not isinstance(safety, dict):
        return ["### Safety", "", "The eval report has no safety results."]
    try:
        lines = safety_markdown(safety)
    except (KeyError, TypeError, AttributeError):  # a report edited by hand: say so rather than fail the release
        return ["### Safety", "", "The eval report's safety results are malformed; see `eval_report.json`."]
    return ["#" + lines[0], *lines[1:]]  # one level down: a section of the release


def release_card(base_card: str, candidate: Candidate, name: str, version: str, created: str, fingerprint: str) -> str:
    decision = candidate.decision or {}
    lines = [base_card.rstrip("\n"), "", "## Release", "",
             f"- Version: `{name}` {version}",
             f"- Released: {created}",
             f"- Taxonomy commit: `{candidate.taxonomy_commit or 'n/a'}`",
             f"- Fingerprint: `{fingerprint[:16]}` (model files and eval report)",
             f"- Gate decision: **{decision.get('decision', 'n/a')}**"]
    lines += [f"  - {reason}" for reason in decision.get("reasons") or []]
    if decision.get("approval"):
        lines.append(f"- Approval: {decision['approval']}")
    lines += ["", "### Evaluation summary", ""]
    rows = _flat(candidate.metrics or {})
    lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)] if rows else ["(no metrics given)"]
    lines += ["", *safety_section(candidate.eval_report)]
    lines += ["", "The full evaluation is in `eval_report.json`; the training data is described in `dataset_cards/`.", ""]
    return "\n".join(lines)
