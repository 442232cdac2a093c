"""Two-phase tuning of the student: knowledge (phase 1), then skills (phase 2).

    labcycle tune --phase knowledge|skills|both --base-model DIR [--knowledge-data PATH]
                  [--skills-data PATH] --output DIR [--config FILE]

Its own flow so that it can be deployed to a GPU work pool (the deployment tune/gpu:
deployments/prefect.yaml; lab_cycle runs it there through flows/remote.py); without a GPU it runs
in-process (tiny models on CPU). Also a subflow of lab_cycle. Each phase writes OUTPUT/<phase>/ (adapter/, model_card.md,
loss.png, log_history.json, result.json); started again on the same inputs after a kill, it resumes
from the last checkpoint.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.states import Failed

from labcycle.errors import LabcycleError
from labcycle.flows import config as config_module
from labcycle.flows import remote
from labcycle.flows.config import Config
from labcycle.io import write_json
from labcycle.tasks.tune import trainer
from labcycle.tasks.tune.settings import with_plan
from labcycle.tasks.tune.stage import phase2_start, plan_phases, publish_tuned, tune_phase_task


@flow(name="tune", log_prints=False)
@remote.portable("tune")
def tune(output: str, phase: Literal["knowledge", "skills", "both"] = "both", base_model: str | None = None,
         knowledge_data: str | None = None, skills_data: str | None = None, config: Config | str | None = None,
         lineage: dict[str, Any] | None = None, plan: dict[str, Any] | None = None, storage: str | None = None) -> Any:
    """Tune the student on the mixed phase data.

    Args:
        output: where OUTPUT/knowledge/ and OUTPUT/skills/ go.
        phase: knowledge, skills, or both (knowledge first, skills starting from its result).
        base_model: a local Hugging Face model folder; default: the config's student.model.
        knowledge_data: phase-1 data: JSONL in chat `messages` format or a saved HF dataset folder.
        skills_data: phase-2 data, likewise.
        config: a labcycle.yaml, or the config lab_cycle parsed; its `tuning` section.
        lineage: what the model cards record about the data (taxonomy commit, leaves); set by lab_cycle.
        plan: a later cycle's changes (tasks/gate/plan.py, as JSON): epochs_add adds epochs to both phases.
        storage: set by lab_cycle for a remote run (flows/remote.py, `portable`): the run's mirror in shared
            storage. output and the data are then relative to it (base_model too when it is in the
            mirror); the inputs are fetched first and the output sent back after.
    """
    try:
        cfg = config_module.settings(config)
        chosen = plan_phases(phase, base_model or cfg.student.model, knowledge_data, skills_data)
    except LabcycleError as exc:
        return Failed(message=str(exc))
    settings = with_plan(cfg.tuning, plan)
    out = Path(output)
    base = chosen["base_model"]
    results: dict[str, Any] = {}
    try:
        if "knowledge" in chosen["phases"]:
            # Merge mode needs phase 1 merged, whatever tuning.merge says: phase 2 trains on top of it.
            s1 = replace(settings, merge=True) if settings.phase2_start == "merge" else settings
            r1 = tune_phase_task("knowledge", base, knowledge_data, s1, None, lineage)
            results["knowledge"] = publish_tuned(r1, out / "knowledge")
        if "skills" in chosen["phases"]:
            base2, init = phase2_start(results.get("knowledge") or trainer.read_result(out / "knowledge"), base, settings)
            r2 = tune_phase_task("skills", base2, skills_data, settings, init, lineage)
            results["skills"] = publish_tuned(r2, out / "skills")
    except LabcycleError as exc:
        return Failed(message=f"{exc} (finished work is kept: once that is fixed, a rerun resumes from it)")
    summary = {"output": str(out), "base_model": base, "phases": {k: _brief(v) for k, v in results.items()}}
    write_json(out / "tune.json", summary)
    return summary


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("output", "merged", "base_model", "init_adapter", "samples", "metrics", "resumed_from_step")
    return {k: result.get(k) for k in keys}
