"""Prefect tasks of the tuning stage.

Each phase is one task whose cache key is (phase, base model fingerprint, training data fingerprint,
the adapter it starts from, the method and that phase's settings). Its work folder lives under
$LABCYCLE_HOME/cache/tuned/<key>/, so
- an unchanged phase is a Prefect cache hit (persisted result) and trains nothing;
- a killed run resumes from the work folder's last checkpoint, whichever output the next run names;
- a complete work folder is never trained again, even without Prefect's cache.
The output folder gets the phase's adapter, model card, loss plot and history (publish_tuned), as hard
links where the filesystem allows, so a merged model is not stored twice.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from labcycle.env import state_dir
from labcycle.errors import LabcycleError
from labcycle.io import link_tree, write_json
from labcycle.tasks.tune import card, distributed, trainer
from labcycle.fingerprint import fingerprint_path, model_fingerprint
from labcycle.tasks.tune.settings import TuneSettings

# Bumped whenever what the trainer produces from the same inputs changes.
# 2: a packed micro-batch is one row; the effective batch counts samples. 3: a phase too small for
# data.MIN_STEPS steps trains with a smaller effective batch; the last steps are logged.
TUNE_FORMAT = 3
PUBLISHED = ("model_card.md", "loss.png", "log_history.json")


def cache_key(phase: str, base_model: str, data: str, settings: TuneSettings, init_adapter: str | None) -> str:
    payload = json.dumps({"format": TUNE_FORMAT, "phase": phase, "base": model_fingerprint(Path(base_model)),
                          "data": fingerprint_path(Path(data)), "settings": settings.digest_for(phase),
                          "init": fingerprint_path(Path(init_adapter)) if init_adapter else None}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def work_dir(key: str) -> Path:
    return state_dir() / "cache" / "tuned" / key


def _task_cache_key(context: TaskRunContext, p: dict[str, Any]) -> str:
    return f"tune-{p['phase']}-" + cache_key(p["phase"], p["base_model"], p["data"], p["settings"], p.get("init_adapter"))


class _Reporter:
    """Mirrors training progress into the Prefect log and a progress artifact, at most every few seconds."""

    def __init__(self, phase: str):
        from prefect.artifacts import create_progress_artifact
        from prefect.logging import get_run_logger

        self.phase = phase
        self.logger = get_run_logger()
        self.artifact = create_progress_artifact(progress=0.0, key=f"tuning-progress-{phase}", description=f"{phase} phase: steps done")
        self.last = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        from prefect.artifacts import update_progress_artifact

        if event["phase"] != self.phase:
            return
        if event.get("notice"):
            self.logger.warning(f"{self.phase}: {event['notice']}")
            return
        rate = f", {event['tokens_per_s']:.0f} tokens/s" if event.get("tokens_per_s") else ""
        loss = f", loss {event['loss']:.4f}" if event.get("loss") is not None else ""
        held = f", held-out loss {event['eval_loss']:.4f}" if event.get("eval_loss") is not None else ""
        self.logger.info(f"{self.phase}: step {event['step']}/{event['max_steps']}{loss}{held}{rate}")
        now = time.monotonic()
        if event["max_steps"] and (now - self.last > 5 or event["step"] >= event["max_steps"]):
            self.last = now
            update_progress_artifact(self.artifact, progress=100.0 * event["step"] / event["max_steps"])


# log_prints off: datasets' fingerprinting (dill) reads globals by capturing dis.dis's printout, which
# log_prints would divert into the run's log as bytecode; progress reaches the log through _Reporter.
@task(name="tune phase", task_run_name="tune: {phase}", cache_key_fn=_task_cache_key, persist_result=True,
      result_serializer="json", log_prints=False)
def tune_phase_task(phase: str, base_model: str, data: str, settings: TuneSettings, init_adapter: str | None = None,
                    lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """One phase, trained (or resumed) in its work folder; a table artifact of its loss curve."""
    from prefect.artifacts import create_table_artifact

    folder = work_dir(cache_key(phase, base_model, data, settings, init_adapter))
    lineage = {**(lineage or {}), "base_model_fingerprint": model_fingerprint(Path(base_model))[:16]}
    reporter = _Reporter(phase)
    trainer.LISTENERS.append(reporter)
    try:
        # One process, or tuning.processes data-parallel ones whose progress reaches the reporter all the same.
        result = distributed.run_phase(phase, Path(base_model), Path(data), folder, settings,
                                       init_adapter=Path(init_adapter) if init_adapter else None, lineage=lineage)
    finally:
        trainer.LISTENERS.remove(reporter)
    if result["samples"].get("too_long"):
        reporter.logger.warning(f"{phase}: left out {result['samples']['too_long']} samples longer than max_length "
                                f"({settings.phase(phase).max_length} tokens): their answers would have been cut off")
    history = json.loads((folder / "log_history.json").read_text(encoding="utf-8"))
    create_table_artifact(card.loss_rows(history), key=f"tuning-loss-{phase}",
                          description=f"{phase} phase: loss per logged step (plot: loss.png in the output folder)")
    return result


@task(name="publish tuned", task_run_name="publish: {result[phase]}")
def publish_tuned(result: dict[str, Any], dest: Path) -> dict[str, Any]:
    """The phase's adapter (or model), merged model, model card, loss plot and history into dest."""
    src = Path(result["work_dir"])
    if not Path(result["output"]).exists():
        raise LabcycleError(f"the cached tuning result in {src} is gone (cache folder cleaned?); rerun with "
                            "PREFECT_TASKS_REFRESH_CACHE=true to train it again", where=result["phase"])
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("adapter", "model", "merged", *PUBLISHED):
        if (src / name).exists():
            link_tree(src / name, tmp / name)
    published = dict(result)
    published["output"] = str(dest / Path(result["output"]).name)
    published["merged"] = str(dest / "merged") if result.get("merged") else None
    write_json(tmp / trainer.RESULT, published)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return published


def plan_phases(phase: str, base_model: str | None, knowledge_data: str | None, skills_data: str | None) -> dict[str, Any]:
    """The phases to run and the base model, after checking every input a user can get wrong."""
    if not base_model:
        raise LabcycleError("no student model: pass --base-model DIR or set student.model in the config")
    trainer.check_model_dir(Path(base_model))
    phases = ("knowledge", "skills") if phase == "both" else (phase,)
    for name, data in (("knowledge", knowledge_data), ("skills", skills_data)):
        if name in phases and not data:
            raise LabcycleError(f"the {name} phase needs data: pass --{name}-data PATH (JSONL in chat `messages` "
                                "format or a saved HF dataset, e.g. the mix stage's OUTPUT/" + name + ")")
        if name in phases and not Path(data).exists():  # type: ignore[arg-type]
            raise LabcycleError(f"{name} data not found", where=str(data))
    return {"phases": phases, "base_model": base_model}


def phase2_start(phase1: dict[str, Any] | None, base: str, settings: Any) -> tuple[str, str | None]:
    """(base model, adapter to continue) for the skills phase.

    continue (default): phase 2 keeps training phase 1's adapter on the same base. The result is one
    adapter on the original base, which vLLM serves with --enable-lora next to the base for the eval
    gate, and the 4-bit base is never written. merge: phase 1 is merged into a full-precision copy of
    the base and phase 2 trains a new adapter on that; its adapter then only fits the merged model.
    full fine-tuning: phase 2 starts from phase 1's weights.
    """
    if phase1 is None:
        return base, None  # skills alone, no phase 1 in this output: a new adapter on the base
    if settings.method == "full":
        return phase1["output"], None
    if settings.phase2_start == "merge":
        if not phase1.get("merged"):
            raise LabcycleError("phase2_start is merge but the knowledge phase has no merged model; rerun the "
                                "knowledge phase with this config", where=phase1["output"])
        return phase1["merged"], None
    return base, phase1["output"]
