"""The evaluate stage's settings: the config's evaluation section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class SafetyConfig:
    enabled: bool = True  # base and candidate answer a safety suite; the gate's safety rules read it
    suite: str | None = None  # a safety suite JSONL (schemas/safety-suite.schema.json); None: the shipped one
    judge: bool = True  # the evaluation's judge labels the answers; False (or no judge): refusal phrases only


@dataclass(frozen=True)
class RegressionConfig:
    backend: Literal["labcycle", "lm-eval"] = "labcycle"  # lm-eval: lm-evaluation-harness (labcycle[lmeval])


@dataclass(frozen=True)
class EvaluationConfig:
    endpoint: str | None = None  # a vLLM server on the student's base with runtime LoRA loading; None: start one
    served_base: str | None = None
    judge: bool = True
    suites: tuple[str, ...] | None = None  # None: the shipped general suites
    max_tokens: int = 256
    judge_max_tokens: int = 256
    concurrency: int = 8
    held_out_per_leaf: int | None = 10
    max_items: int | None = None
    max_model_len: int = 4096
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    knowledge_mc: bool = False  # the knowledge leaves' seed questions as multiple choice, scored by log-likelihood
    safety: SafetyConfig = field(default_factory=SafetyConfig)


def from_mapping(data: dict[str, Any]) -> EvaluationConfig:
    """The section as parsed (already checked against the config schema)."""
    suites = data.get("suites")
    regression = RegressionConfig(**(data.get("regression") or {}))
    if regression.backend == "lm-eval":
        from labcycle.tasks.evaluate.lmeval import require

        require()  # not installed: said now, not after the servers started
    return EvaluationConfig(**{**data, "suites": tuple(suites) if suites is not None else None,
                               "regression": regression, "safety": SafetyConfig(**(data.get("safety") or {}))})
