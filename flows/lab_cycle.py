"""The LAB cycle as one Prefect flow.

    labcycle run --taxonomy ROOT --output DIR [--config FILE | --profile demo] [--base REF|empty]
                 [--teacher-endpoint URL] [--teacher-model NAME] [--student-model DIR]
                 [--until taxonomy|generate|mix|tune|evaluate|cycle]

The taxonomy subflow (discover → validate → select changed leaves → fetch documents → chunk → manifest)
runs once; then cycle k = 1, 2, ... runs generate → mix → tune (knowledge, then skills) → evaluate →
gate, in RUN/cycle-<k>/. A passing candidate is released (after an optional approval); a failing one
loops back with the plan the gate wrote, until the policy's max_cycles. RUN/report.json holds every
cycle's decision and the released version.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.states import Failed

from labcycle.flows import config as config_module
from labcycle import profiles
from labcycle.env import default_run_dir
from labcycle.errors import LabcycleError
from labcycle.flows.remote import run_stage
from labcycle.flows.taxonomy import prepare_taxonomy
from labcycle.io import write_json
from labcycle.models import check_student
from labcycle.tasks import cycle as cycle_tasks
from labcycle.tasks.taxonomy.checkout import blank, checkout_task
from labcycle.tasks.gate import Plan, first_plan, gate_task, load_policy
from labcycle.tasks.taxonomy.manifest import lineage
from labcycle.tasks.mix import load_recipe, mix_task
from labcycle.tasks.release import release_task, request_approval
from labcycle.urls import hold_teacher_login

Stage = Literal["taxonomy", "generate", "mix", "tune", "evaluate", "cycle"]

# What a deployment's run (a push, the schedule, the UI) takes from Prefect Variables when it is not given.
CONFIG_VARIABLE = "labcycle_config"
TAXONOMY_REPO_VARIABLE = "labcycle_taxonomy_repo"


def _deployment_id() -> str | None:
    from prefect.runtime import deployment

    return deployment.id


def deployment_settings(config: str | None, profile: str | None,
                        taxonomy_repo: str | None) -> tuple[str | None, str | None]:
    """-> (config, taxonomy_repo) for this run. Outside a deployment: as given. A deployment's run fills
    what it lacks from the Prefect Variables labcycle_config and labcycle_taxonomy_repo, and never falls
    back to built-in defaults: with neither a config nor a profile it is refused before any work, so a
    push to a real taxonomy cannot train the demo's tiny random models."""
    if _deployment_id() is None:
        return config, taxonomy_repo
    from prefect.variables import Variable

    def variable(name: str) -> str | None:
        value = Variable.get(name, default=None)
        return blank(value) if isinstance(value, str) else None

    if not config and not profile:
        config = variable(CONFIG_VARIABLE)
    if not config and not profile:
        raise LabcycleError(
            f"this deployment run has no settings: set the Prefect Variable {CONFIG_VARIABLE} to the path of a "
            f"labcycle.yaml the worker can read (prefect variable set {CONFIG_VARIABLE} /path/to/labcycle.yaml), "
            "or give the run a config; runs of a deployment never fall back to built-in defaults (for the demo's "
            "tiny models, run the lab-cycle/demo deployment)")
    if config and not Path(config).is_file():
        raise LabcycleError(f"config {config!r} is not a file on this worker: give the path of a labcycle.yaml "
                            f"the worker can read (the run's config, or the Prefect Variable {CONFIG_VARIABLE})")
    return config, taxonomy_repo or variable(TAXONOMY_REPO_VARIABLE)


@flow(name="lab-cycle", log_prints=True)
def lab_cycle(taxonomy: str = "taxonomy", base: str | None = None, output: str | None = None, config: str | None = None,
              teacher_endpoint: str | None = None, teacher_model: str | None = None, max_concurrency: int | None = None,
              student_model: str | None = None, profile: str | None = None, until: Stage = "cycle",
              taxonomy_repo: str | None = None, branch: str | None = None, commit: str | None = None,
              max_cycles: int | None = None) -> Any:
    """Run the LAB cycle on a qna.yaml taxonomy.

    Args:
        taxonomy: the taxonomy root (a folder holding knowledge/, compositional_skills/, ...);
            ignored when taxonomy_repo is given.
        base: the git ref changed leaves are selected against; "empty" selects every leaf;
            default origin/main, else main.
        output: the run folder; default runs/<timestamp>.
        config: a labcycle.yaml; default: built-in defaults.
        teacher_endpoint: an OpenAI-compatible base URL; unset: an in-process vLLM engine.
        teacher_model: the served model name, or a local model folder for the in-process engine.
        max_concurrency: most teacher requests in flight at once.
        student_model: the base model to tune (a local model folder); default: the config's student.model.
        profile: named settings instead of a config ("demo": tiny models built on the fly, in-process teacher).
        until: the last stage to run ("cycle": the whole loop, up to the release).
        taxonomy_repo: a git URL (or local path) of the taxonomy repository: cloned into RUN/taxonomy/ at
            `commit`, else at the tip of `branch`, else of its default branch.
        branch: the branch to check out (a push's branch).
        commit: the commit to check out (a push's head commit).
        max_cycles: the most cycles before giving up; default: the gate policy's max_cycles.
    """
    run_dir = Path(output).resolve() if output else default_run_dir()
    # A login in the URL (a run started from the UI or an API) stays out of the stage runs' parameters and
    # messages; the teachers made in this process still send it.
    teacher_endpoint = hold_teacher_login(teacher_endpoint)
    taxonomy_repo, branch, commit = blank(taxonomy_repo), blank(branch), blank(commit)
    config, profile = blank(config), blank(profile)
    try:
        config, taxonomy_repo = deployment_settings(config, profile, taxonomy_repo)
    except LabcycleError as exc:
        return Failed(message=str(exc))
    if (branch or commit) and not taxonomy_repo:
        return Failed(message="branch and commit name what to check out of taxonomy_repo: give the repository's URL too")
    if taxonomy_repo:
        try:
            taxonomy = str(checkout_task(taxonomy_repo, run_dir / "taxonomy", branch, commit).root)
        except LabcycleError as exc:
            return Failed(message=str(exc))
    elif not Path(taxonomy).is_dir():
        variable = f", or set the Prefect Variable {TAXONOMY_REPO_VARIABLE}" if _deployment_id() else ""
        return Failed(message=f"taxonomy folder {taxonomy!r} not found here: give taxonomy_repo (the taxonomy's git URL) "
                              f"or a taxonomy folder this worker can read{variable}")
    if profile:
        if config:
            return Failed(message="give either a profile or a config, not both")
        try:
            chosen = profiles.apply(profile, run_dir, Path(taxonomy))
        except LabcycleError as exc:
            return Failed(message=str(exc))
        config = chosen["config"]
        teacher_model, student_model = teacher_model or chosen["teacher_model"], student_model or chosen["student_model"]

    prepared = prepare_taxonomy(taxonomy=taxonomy, base=base, output=str(run_dir), config=config, return_state=True)
    if not prepared.is_completed():
        return Failed(message=prepared.message)
    result: dict[str, Any] = {"run_dir": str(run_dir), **prepared.result()}
    if until == "taxonomy":
        return result
    if result["leaves"] == 0:
        # A push or a schedule that changed no leaf lands here too: a successful no-op, no teacher started.
        message = cycle_tasks.nothing_changed(Path(result["manifest"]))
        print(message)
        cycle_tasks.write_report(run_dir, [], released=None)
        return {**result, "cycles": [], "released": None, "nothing_changed": message}
    cfg = config_module.load(config)  # the taxonomy stage has loaded it already: it is valid
    student = student_model or cfg.student.model
    try:
        if until not in ("generate", "mix") and not student:
            # Found out now, not after hours of generation.
            raise LabcycleError("no student model to tune: pass --student-model DIR or set student.model in the "
                                "config (or stop earlier with --until mix)")
        if until not in ("generate", "mix") and not cfg.remote.deployments.get("tune"):
            check_student(student)  # a remote tune stage reads it on its GPU worker, not here
        policy = load_policy(cfg.gate.policy)
        if max_cycles is not None:
            if max_cycles < 1:
                raise LabcycleError(f"max_cycles must be 1 or more, not {max_cycles}")
            policy = replace(policy, max_cycles=max_cycles)
        recipe = load_recipe(cfg.mixing.recipe)
    except LabcycleError as exc:
        return Failed(message=str(exc))
    if recipe.tokenizer is None and student:  # the dataset card counts tokens as the student will see them
        recipe = replace(recipe, tokenizer=str(Path(student).resolve()))
    manifest = Path(result["manifest"])

    cycles: list[dict[str, Any]] = []
    plan = first_plan()
    while True:
        folder = run_dir / f"cycle-{plan.cycle}"
        write_json(folder / "plan.json", {**plan.to_json(), "changes": plan.describe()})
        step: dict[str, Any] = {"cycle": plan.cycle, "plan": plan.to_json(), "folder": str(folder)}
        cycles.append(step)

        # Each GPU stage runs in-process, or through its deployment when the config's remote section names one.
        generated = run_stage("generate", cfg, run_dir, manifest=str(manifest), output=str(folder / "generated"),
                              config=config, teacher_endpoint=teacher_endpoint, teacher_model=teacher_model,
                              max_concurrency=max_concurrency, plan=plan.to_json())
        if not generated.is_completed():
            return Failed(message=generated.message)
        step["generation"] = generated.result()
        if until == "generate":
            break
        try:
            mixed = mix_task(folder / "generated", folder / "mixed", recipe)
        except LabcycleError as exc:
            return Failed(message=str(exc))
        step["mix"] = mixed
        if until == "mix":
            break
        phases = [p for p in ("knowledge", "skills") if mixed["phases"][p]["samples"] > 0]
        data = {p: str(folder / "mixed" / mixed["phases"][p]["data"]) for p in phases}
        tuned = run_stage("tune", cfg, run_dir, output=str(folder / "tuned"),
                          phase="both" if len(phases) == 2 else phases[0], base_model=student,
                          knowledge_data=data.get("knowledge"), skills_data=data.get("skills"), config=config,
                          lineage=lineage(manifest), plan=plan.to_json())
        if not tuned.is_completed():
            return Failed(message=tuned.message)
        step["tuning"] = tuned.result()
        if until == "tune":
            break
        last = step["tuning"]["phases"][phases[-1]]
        candidate = Path(last["output"])
        evaluated = run_stage("evaluate", cfg, run_dir, manifest=str(manifest), candidate=str(candidate),
                              base_model=last["base_model"], output=str(folder / "eval"),
                              held_out=str(folder / "mixed" / mixed["held_out"]["data"]), config=config,
                              teacher_endpoint=teacher_endpoint, teacher_model=teacher_model,
                              max_concurrency=max_concurrency)
        if not evaluated.is_completed():
            return Failed(message=evaluated.message)
        report = evaluated.result()
        step["eval"] = str(folder / "eval" / "report.json")
        if until == "evaluate":
            break
        decision = gate_task(report, policy, plan.cycle, plan)
        write_json(folder / "eval" / "decision.json", decision.to_json())
        step.update(decision=decision.decision, reasons=list(decision.reasons),
                    headline=cycle_tasks.gated_report(folder / "eval", report, decision))
        cycle_tasks.write_report(run_dir, cycles, released=None)
        if decision.decision == "pass":
            step["release"] = _release(policy, run_dir, folder, candidate.parent, decision, manifest)
            break
        if decision.final:
            break
        plan = Plan.from_json(decision.next_plan)  # the gate's plan: a safety failure has its own on_fail steps

    released = next((c["release"].get("path") for c in cycles if c.get("release")), None)
    cycle_tasks.write_report(run_dir, cycles, released=released)
    return {**result, "cycles": cycles, "released": released,
            # The last cycle's stages, where the CLI's summary looks for them.
            **{k: cycles[-1][k] for k in ("generation", "mix", "tuning") if k in cycles[-1]}}


def _release(policy: Any, run_dir: Path, folder: Path, tuned: Path, decision: Any, manifest: Path) -> dict[str, Any]:
    candidate = cycle_tasks.candidate(tuned, folder, decision.to_json(), manifest)
    if policy.approval.required:
        answer = request_approval(cycle_tasks.summary(candidate, decision), policy.approval.timeout_s)
        if not answer["approved"]:
            return {"approved": False, **answer}
        candidate = replace(candidate, decision={**candidate.decision, "approval": answer})
    rel = policy.release
    return release_task(candidate, rel.registry_location(run_dir), rel.name, rel.hub_repo)
