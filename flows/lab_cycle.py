"""The LAB cycle as one Prefect flow.

    labcycle run --taxonomy ROOT [--base REF|empty] [--output RUN_DIR] [--config labcycle.yaml]
                 [--teacher-endpoint URL] [--teacher-model NAME] [--student-model DIR]
                 [--until taxonomy|generate|mix|tune]

Stages so far: the taxonomy subflow (discover → validate → select changed leaves → fetch documents →
chunk → manifest), the generate subflow (one task per leaf, teacher on vLLM, judge filters), mix (the
phase-1 knowledge set and the phase-2 skills set), and the tune subflow (knowledge, then skills).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.states import Failed
from prefect.utilities.asyncutils import run_coro_as_sync

from labcycle import config as config_module
from labcycle.env import default_run_dir
from labcycle.errors import LabcycleError
from labcycle.flows.generate import generate
from labcycle.flows.taxonomy import prepare_taxonomy
from labcycle.flows.tune import tune
from labcycle.tasks.manifest import lineage
from labcycle.tasks.mix import load_recipe, mix_task


@flow(name="lab-cycle", log_prints=True)
def lab_cycle(taxonomy: str = "taxonomy", base: str | None = None, output: str | None = None, config: str | None = None,
              teacher_endpoint: str | None = None, teacher_model: str | None = None, max_concurrency: int | None = None,
              student_model: str | None = None,
              until: Literal["taxonomy", "generate", "mix", "tune"] = "tune") -> Any:
    """Run the LAB cycle on a qna.yaml taxonomy.

    Args:
        taxonomy: the taxonomy root (a folder holding knowledge/, compositional_skills/, ...).
        base: the git ref changed leaves are selected against; "empty" selects every leaf;
            default origin/main, else main.
        output: the run folder; default runs/<timestamp>.
        config: a labcycle.yaml; default: built-in defaults.
        teacher_endpoint: an OpenAI-compatible base URL; unset: an in-process vLLM engine.
        teacher_model: the served model name, or a local model folder for the in-process engine.
        max_concurrency: most teacher requests in flight at once.
        student_model: the base model to tune (a local model folder); default: the config's student.model.
        until: the last stage to run.
    """
    run_dir = Path(output).resolve() if output else default_run_dir()
    prepared = prepare_taxonomy(taxonomy=taxonomy, base=base, output=str(run_dir), config=config, return_state=True)
    if not prepared.is_completed():
        return Failed(message=prepared.message)
    result: dict[str, Any] = {"run_dir": str(run_dir), **prepared.result()}
    if until == "taxonomy":
        return result
    cfg = config_module.load(config)  # the taxonomy stage has loaded it already: it is valid
    if until == "tune" and not (student_model or cfg.student.model):
        # Found out now, not after hours of generation.
        return Failed(message="no student model to tune: pass --student-model DIR or set student.model in the config "
                              "(or stop earlier with --until mix)")

    generated = run_coro_as_sync(generate(manifest=result["manifest"], output=str(run_dir / "generated"), config=config,
                                          teacher_endpoint=teacher_endpoint, teacher_model=teacher_model,
                                          max_concurrency=max_concurrency, return_state=True))
    if not generated.is_completed():
        return Failed(message=generated.message)
    result["generation"] = generated.result()
    if until == "generate":
        return result

    student = student_model or cfg.student.model
    try:
        recipe = load_recipe(cfg.mixing.recipe)
        if recipe.tokenizer is None and student:  # the dataset card counts tokens as the student will see them
            recipe = replace(recipe, tokenizer=str(Path(student).resolve()))
        mixed = mix_task(run_dir / "generated", run_dir / "mixed", recipe)
    except LabcycleError as exc:
        return Failed(message=str(exc))
    result["mix"] = mixed
    if until == "mix":
        return result

    phases = [p for p in ("knowledge", "skills") if mixed["phases"][p]["samples"] > 0]
    data = {p: str(run_dir / "mixed" / mixed["phases"][p]["data"]) for p in phases}
    tuned = tune(output=str(run_dir / "tuned"), phase="both" if len(phases) == 2 else phases[0],
                 base_model=student, knowledge_data=data.get("knowledge"),
                 skills_data=data.get("skills"), config=config, lineage=lineage(Path(result["manifest"])),
                 return_state=True)
    if not tuned.is_completed():
        return Failed(message=tuned.message)
    result["tuning"] = tuned.result()
    return result
