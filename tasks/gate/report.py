"""The gate's decision rendered for people: the markdown of the Prefect artifact "gate-decision"."""

from __future__ import annotations

import json

from labcycle.tasks.gate.rules import Decision


def markdown(decision: Decision) -> str:
    """The decision as a Prefect markdown artifact: the outcome, notes, then a table of the rules, failing first."""
    details = {r.detail for r in decision.rules}
    lines = [f"# Gate: {decision.decision} (cycle {decision.cycle})", "", decision.reasons[0], ""]
    notes = [f"- {r}" for r in decision.reasons[1:] if r not in details]
    lines += [*notes, ""] if notes else []
    lines += ["| rule | result | detail |", "|---|---|---|"]
    for r in sorted(decision.rules, key=lambda r: r.passed):
        body = r.detail.removeprefix(f"{r.name}: ").rsplit(": ", 1)[0]  # without the name and the verdict
        lines.append(f"| {r.name} | {'pass' if r.passed else '**FAIL**'} | {body} |")
    if decision.next_plan:
        lines += ["", f"Next cycle's plan: `{json.dumps(decision.next_plan, sort_keys=True)}`"]
    return "\n".join(lines) + "\n"

