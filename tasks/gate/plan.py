"""Plans: what each cycle changes, relative to the user's config. Cycle 1 runs the config as it is; each
failed cycle's next one applies the policy's next on_fail step (or safety.on_fail step) on top."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from labcycle.tasks.gate.policy import DIGITS, PLAN_TYPES, GatePolicy, Step


@dataclass(frozen=True)
class Plan:
    cycle: int
    samples_per_seed_factor: float = 1.0
    sampling_seed_offset: int = 0
    judge_strictness: int = 0
    epochs_add: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(cycle=int(data["cycle"]), **{k: cast(data[k]) for k, cast in PLAN_TYPES.items() if k in data})

    def describe(self) -> str:
        changes = [f"samples per seed x{self.samples_per_seed_factor:g}" if self.samples_per_seed_factor != 1 else "",
                   f"sampling seeds +{self.sampling_seed_offset}" if self.sampling_seed_offset else "",
                   f"judge thresholds +{self.judge_strictness}" if self.judge_strictness else "",
                   f"epochs +{self.epochs_add:g}" if self.epochs_add else ""]
        return ", ".join(c for c in changes if c) or "the config as it is"


def first_plan() -> Plan:
    return Plan(cycle=1)


def next_plan(previous: Plan, policy: GatePolicy, safety: bool = False) -> Plan:
    """The plan of the cycle after `previous`: its on_fail step (the last one repeats) on top of `previous`;
    with `safety` (a safety rule failed), its safety.on_fail step instead."""
    steps = (policy.safety.on_fail if safety else policy.on_fail) or (Step(),)
    step = steps[min(previous.cycle, len(steps)) - 1]
    return Plan(cycle=previous.cycle + 1,
                samples_per_seed_factor=round(previous.samples_per_seed_factor * step.samples_per_seed_factor, DIGITS),
                sampling_seed_offset=previous.sampling_seed_offset + step.sampling_seed_offset,
                judge_strictness=previous.judge_strictness + step.judge_strictness,
                epochs_add=round(previous.epochs_add + step.epochs_add, DIGITS))


def plan_for(cycle: int, policy: GatePolicy) -> Plan:
    """The plan of `cycle` when every earlier cycle failed."""
    plan = first_plan()
    while plan.cycle < cycle:
        plan = next_plan(plan, policy)
    return plan
