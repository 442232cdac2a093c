"""What the loop keeps between stages: typed views of the stage results it passes on, one cycle's record,
RUN/report.json (every cycle's decision and the released version), and the release candidate a passing
cycle hands to the release stage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcycle.io import write_json
from labcycle.run_folder import CycleFolder, RunFolder

PHASES = ("knowledge", "skills")


class StageFailed(Exception):
    """A stage ended in a failed state; its message says what and where."""


def completed(state: Any) -> Any:
    """The result of a finished stage run, or StageFailed with its message."""
    if not state.is_completed():
        raise StageFailed(state.message)
    return state.result()


@dataclass(frozen=True)
class Mixed:
    """What tuning and evaluation read of the mix stage's summary: each phase's data, the held-out samples."""

    data: dict[str, Path]  # phase -> its data.jsonl, for the phases that have samples, knowledge first
    held_out: Path

    @classmethod
    def read(cls, folder: Path, summary: dict[str, Any]) -> Mixed:
        data = {p: folder / summary["phases"][p]["data"] for p in PHASES if summary["phases"][p]["samples"] > 0}
        return cls(data=data, held_out=folder / summary["held_out"]["data"])

    @property
    def phase(self) -> str:
        """The tune stage's phase parameter: both, or the one phase that has data."""
        return "both" if len(self.data) == 2 else next(iter(self.data))


@dataclass(frozen=True)
class Tuned:
    """What evaluation and release read of the tune stage's summary: the last phase's model and its base."""

    candidate: Path  # the last phase's adapter/ (or model/)
    base_model: str

    @classmethod
    def read(cls, summary: dict[str, Any]) -> Tuned:
        last = summary["phases"][[p for p in PHASES if p in summary["phases"]][-1]]
        return cls(candidate=Path(last["output"]), base_model=last["base_model"])


@dataclass
class CycleRecord:
    """One cycle as RUN/report.json and the run's result show it; filled in as its stages finish."""

    folder: CycleFolder
    plan: dict[str, Any]
    generation: dict[str, Any] | None = None
    mix: dict[str, Any] | None = None
    tuning: dict[str, Any] | None = None
    eval: str | None = None
    decision: str | None = None
    reasons: list[str] = field(default_factory=list)
    headline: dict[str, Any] | None = None
    release: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"cycle": self.folder.number, "plan": self.plan, "folder": str(self.folder.root)}
        for key in ("generation", "mix", "tuning", "eval", "decision"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.decision is not None:
            data.update(reasons=list(self.reasons), headline=self.headline)
        if self.release is not None:
            data["release"] = self.release
        return data


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
    return write_json(RunFolder(Path(run_dir)).report, report)


def gated_report(eval_dir: Path, report: dict[str, Any], decision: Any) -> dict[str, Any]:
    """After the gate: eval/report.md again with the headline first; -> the headline as JSON (full precision),
    for RUN/report.json and the CLI's summary."""
    from labcycle.headline import headline
    from labcycle.tasks.evaluate.report import write_gated

    write_gated(eval_dir, report, decision)
    return headline(report, decision).to_json()


def nothing_changed(manifest: Path) -> str:
    """The one line for a run whose taxonomy has no leaf changed since its base."""
    base = json.loads(Path(manifest).read_text(encoding="utf-8"))["taxonomy"].get("base") or "the base"
    return (f"nothing to do: no leaf changed since {base}; pass --base <ref> to compare with another ref, "
            "or --base empty to take every leaf")


def nothing_to_do(run: RunFolder, result: dict[str, Any]) -> dict[str, Any]:
    """A run with no leaf changed since its base: says so in one line, writes a report with no cycles, and
    returns the run's result."""
    message = nothing_changed(run.manifest)
    print(message)
    write_report(run.root, [], released=None)
    return {**result, "cycles": [], "released": None, "nothing_changed": message}


def candidate(tuned: Path, folder: CycleFolder, decision: dict[str, Any], manifest: Path) -> Any:
    """The release candidate of a cycle folder: its last tuned phase, eval report and dataset cards."""
    from labcycle.headline import headline_metrics
    from labcycle.tasks.release import Candidate

    report = json.loads(folder.eval_report.read_text(encoding="utf-8"))
    cards = tuple(sorted(folder.mixed.glob("*/dataset_card.md")))
    commit = json.loads(Path(manifest).read_text(encoding="utf-8"))["taxonomy"]["commit"]
    return Candidate(tuned=tuned, eval_report=folder.eval_report, dataset_cards=cards, decision=decision,
                     taxonomy_commit=commit, metrics=headline_metrics(report), run_dir=Path(manifest).parent)


def approval_summary(candidate: Any, decision: Any) -> str:
    """What the approver reads above the form in the Prefect UI."""
    lines = [f"Candidate: {candidate.tuned}", f"Taxonomy commit: {candidate.taxonomy_commit or 'n/a'}", "",
             "Gate:", *[f"- {r}" for r in decision.reasons]]
    return "\n".join(lines)
