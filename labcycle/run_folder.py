"""The run folder: where every stage of a run reads and writes, known in one place.

    RUN/taxonomy/                 a cloned taxonomy (runs started from a repository)
    RUN/validation.json           the taxonomy stage's report
    RUN/documents/<leaf-id>/      chunks of each knowledge leaf's documents
    RUN/manifest.json             the selected leaves; what every later stage reads
    RUN/cycle-<k>/plan.json       what cycle k changes (the gate's plan)
    RUN/cycle-<k>/generated/      generate
    RUN/cycle-<k>/mixed/          mix
    RUN/cycle-<k>/tuned/          tune
    RUN/cycle-<k>/eval/           evaluate (report.json, report.md), the gate's decision.json
    RUN/report.json               every cycle's decision and the released version
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CycleFolder:
    """RUN/cycle-<number>/."""

    root: Path
    number: int

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def mixed(self) -> Path:
        return self.root / "mixed"

    @property
    def tuned(self) -> Path:
        return self.root / "tuned"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def eval_report(self) -> Path:
        return self.eval / "report.json"

    @property
    def decision(self) -> Path:
        return self.eval / "decision.json"


@dataclass(frozen=True)
class RunFolder:
    """RUN/: an absolute path, so that what the stages record about it holds wherever they run."""

    root: Path

    @classmethod
    def at(cls, output: str | Path | None) -> RunFolder:
        """The folder `output` names, or a new runs/<timestamp> when it names none."""
        from labcycle.env import default_run_dir

        return cls(Path(output).resolve() if output else default_run_dir())

    @property
    def taxonomy(self) -> Path:
        return self.root / "taxonomy"

    @property
    def validation(self) -> Path:
        return self.root / "validation.json"

    @property
    def documents(self) -> Path:
        return self.root / "documents"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def cycle(self, number: int) -> CycleFolder:
        return CycleFolder(self.root / f"cycle-{number}", number)
