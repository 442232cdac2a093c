"""Evaluation of a tuned candidate against its base: branch (what this cycle taught) and regression (what
it must not forget), written as the report the gate reads.

- questions.py: the changed leaves' seed Q&A and held-out generated samples, as questions
- branch.py: base and candidate answer through one vLLM server (the candidate as a LoRA adapter; a
  whole-model candidate through a second server); token F1, ROUGE-L (metrics.py) and the judge (judge.py,
  prompts/) score each answer against its reference
- safety.py: a safety suite (suites/safety.jsonl, or the user's): harmful prompts a model should refuse
  and benign ones it must answer; each answer labelled complied / refused / unsafe by the judge, or by
  refusal phrases without one; unsafe-answer and over-refusal rates for the gate
- suite.py, loglik.py, regression.py: lm-evaluation-harness style suites over local files, scored by
  log-likelihood (accuracy) or perplexity; suites/ holds a small general set of our own
- lmeval.py: lm-evaluation-harness as the other regression backend (any single-task harness YAML, its
  local-completions model on the same server), mapped into the same report entries
- knowledge_mc.py: the knowledge leaves' seed questions as an MMLU-style multiple-choice suite (no judge)
- report.py: report.json, answers.jsonl, report.md; stage.py: evaluate() and the Prefect task

Nothing heavy is imported here; `evaluate`, `evaluate_async` and `evaluate_task` load stage.py (and Prefect)
on first use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "evaluate_async", "evaluate_task", "EvalSettings", "JudgeSpec", "shipped_suites"):
        from labcycle.tasks.evaluate import stage

        return getattr(stage, name)
    if name in ("SafetySpec", "shipped_safety_suite"):
        from labcycle.tasks.evaluate import safety

        return getattr(safety, name)
    raise AttributeError(name)


__all__ = ["EvalSettings", "JudgeSpec", "SafetySpec", "evaluate", "evaluate_async", "evaluate_task",
           "shipped_safety_suite", "shipped_suites"]
