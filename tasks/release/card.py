"""The released model card: the skills phase's card (lineage, hyperparameters, loss) plus a release section."""

from __future__ import annotations

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
    lines += ["", "The full evaluation is in `eval_report.json`; the training data is described in `dataset_cards/`.", ""]
    return "\n".join(lines)
