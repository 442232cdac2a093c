"""The evaluate stage's settings: the config's evaluation section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from labcycle.teacher.settings import TeacherConfig, teacher_config


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


def evaluation_inputs(ev: EvaluationConfig, teacher: TeacherConfig, teacher_endpoint: str | None = None,
                      teacher_model: str | None = None, max_concurrency: int | None = None) -> dict[str, Any]:
    """The evaluate task's keyword arguments from its settings: the judge is the generation teacher (built
    inside the evaluation), with at most min(the teacher's max_concurrency, evaluation.concurrency)
    requests in flight, so --max-concurrency reaches it as it reaches generation; the suites are the
    configured ones or the shipped general set, the safety suite the configured one or the shipped one
    (None when evaluation.safety.enabled is false)."""
    from labcycle.tasks.evaluate.safety import SafetySpec
    from labcycle.tasks.evaluate.stage import JudgeSpec, shipped_suites

    judge = None
    if ev.judge:
        t = teacher_config(teacher, teacher_endpoint, teacher_model, max_concurrency)
        judge = JudgeSpec(endpoint=t.endpoint, model=t.model, structured_mode=t.structured_mode,
                          max_model_len=t.max_model_len, max_concurrency=min(t.max_concurrency, ev.concurrency),
                          api_key_secret=t.api_key_secret)
    suites = [Path(p) for p in ev.suites] if ev.suites is not None else shipped_suites()
    safety = (SafetySpec(suite=Path(ev.safety.suite) if ev.safety.suite else None, judge=ev.safety.judge)
              if ev.safety.enabled else None)
    return {"endpoint": ev.endpoint, "served_base": ev.served_base, "judge": judge, "suites": suites, "safety": safety,
            "max_tokens": ev.max_tokens, "judge_max_tokens": ev.judge_max_tokens, "concurrency": ev.concurrency,
            "held_out_per_leaf": ev.held_out_per_leaf, "max_items": ev.max_items, "max_model_len": ev.max_model_len,
            "regression_backend": ev.regression.backend, "knowledge_mc": ev.knowledge_mc}
