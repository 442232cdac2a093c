"""The generate stage's settings: the config's generation section (its teacher: labcycle/teacher/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from labcycle.teacher.settings import TeacherConfig


@dataclass(frozen=True)
class GenerationConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    samples_per_seed: int = 30
    max_rounds: int = 3
    max_units_per_round: int = 64
    max_tokens_cap: int | None = None
    pipelines: dict[str, str] = field(default_factory=dict)
    leaves: dict[str, dict[str, int]] = field(default_factory=dict)

    def settings_for(self, leaf_id: str, plan: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
        """A leaf's settings; `plan` is a later cycle's Plan (the gate's) as JSON."""
        import math

        from labcycle.tasks.generate.runner import GenerationSettings

        plan = plan or {}
        per_leaf = self.leaves.get(leaf_id, {})
        samples = per_leaf.get("samples_per_seed", self.samples_per_seed)
        factor = plan.get("samples_per_seed_factor", 1.0)
        return GenerationSettings(samples_per_seed=samples if factor == 1 else math.ceil(samples * factor),
                                  max_rounds=self.max_rounds, max_units_per_round=self.max_units_per_round,
                                  max_tokens_cap=self.max_tokens_cap, seed_offset=plan.get("sampling_seed_offset", 0),
                                  judge_strictness=plan.get("judge_strictness", 0))


def from_mapping(data: dict[str, Any]) -> GenerationConfig:
    """The section as parsed (already checked against the config schema)."""
    rest = {k: v for k, v in data.items() if k != "teacher"}
    return GenerationConfig(teacher=TeacherConfig(**data.get("teacher", {})), **rest)
