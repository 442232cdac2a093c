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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.states import Failed

from labcycle import profiles
from labcycle.errors import LabcycleError
from labcycle.flows import config as config_module
from labcycle.flows import records
from labcycle.flows.config import Config
from labcycle.flows.evaluate import evaluate
from labcycle.flows.generate import run_generate
from labcycle.flows.records import CycleRecord, Mixed, StageFailed, Tuned, completed
from labcycle.flows.remote import run_stage
from labcycle.flows.taxonomy import prepare_taxonomy
from labcycle.flows.tune import tune
from labcycle.io import write_json
from labcycle.models import check_student
from labcycle.run_folder import CycleFolder, RunFolder
from labcycle.tasks.gate import Plan, first_plan, gate_task, load_policy
from labcycle.tasks.mix import load_recipe, mix_task
from labcycle.tasks.release import release_task, request_approval
from labcycle.tasks.taxonomy.checkout import blank, checkout_task
from labcycle.tasks.taxonomy.manifest import lineage
from labcycle.tasks.tune.distributed import job_variables
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
        max_concurrency: most teacher requests in flight at once, in generation and as the evaluation's judge.
        student_model: the base model to tune (a local model folder); default: the config's student.model.
        profile: named settings instead of a config ("demo": tiny models built on the fly, in-process teacher).
        until: the last stage to run ("cycle": the whole loop, up to the release).
        taxonomy_repo: a git URL (or local path) of the taxonomy repository: cloned into RUN/taxonomy/ at
            `commit`, else at the tip of `branch`, else of its default branch.
        branch: the branch to check out (a push's branch).
        commit: the commit to check out (a push's head commit).
        max_cycles: the most cycles before giving up; default: the gate policy's max_cycles.
    """
    run = RunFolder.at(output)
    try:
        setup = _setup(run, taxonomy, config, profile, taxonomy_repo, branch, commit, teacher_endpoint, teacher_model,
                       student_model)
        result = {"run_dir": str(run.root), **completed(prepare_taxonomy(taxonomy=setup.taxonomy, base=base,
                                                                          output=str(run.root), config=setup.cfg,
                                                                          return_state=True))}
        if until == "taxonomy":
            return result
        if result["leaves"] == 0:  # a push or a schedule that changed no leaf: a successful no-op, no teacher started
            return records.nothing_to_do(run, result)
        policy, recipe = _loop_settings(setup, until, max_cycles)
        cfg = setup.cfg.with_teacher(setup.teacher_endpoint, setup.teacher_model, max_concurrency)
        cycles: list[CycleRecord] = []
        plan = first_plan()
        while True:
            folder = run.cycle(plan.cycle)
            write_json(folder.plan, {**plan.to_json(), "changes": plan.describe()})
            cycle = CycleRecord(folder, plan.to_json())
            cycles.append(cycle)
            # generate → mix → tune → evaluate → gate; a GPU stage runs here or through its deployment (remote:)
            cycle.generation = completed(run_generate(cfg.remote, run.root, manifest=str(run.manifest),
                                                      output=str(folder.generated), config=cfg, plan=plan.to_json()))
            if until == "generate":
                break
            cycle.mix = mix_task(folder.generated, folder.mixed, recipe)
            mixed = Mixed.read(folder.mixed, cycle.mix)
            if until == "mix":
                break
            # on the GPU pool: as many GPUs as tuning.processes trains on (deployments/README.md)
            cycle.tuning = completed(run_stage(tune, cfg.remote, run.root, job_variables(cfg.tuning.processes),
                                               output=str(folder.tuned),
                                               phase=mixed.phase, base_model=setup.student,
                                               knowledge_data=_str(mixed.data.get("knowledge")),
                                               skills_data=_str(mixed.data.get("skills")), config=cfg,
                                               lineage=lineage(run.manifest), plan=plan.to_json()))
            tuned = Tuned.read(cycle.tuning)
            if until == "tune":
                break
            report = completed(run_stage(evaluate, cfg.remote, run.root, manifest=str(run.manifest),
                                         candidate=str(tuned.candidate), base_model=tuned.base_model,
                                         output=str(folder.eval), held_out=str(mixed.held_out), config=cfg))
            cycle.eval = str(folder.eval_report)
            if until == "evaluate":
                break
            decision = gate_task(report, policy, plan.cycle, plan)
            write_json(folder.decision, decision.to_json())
            cycle.decision, cycle.reasons = decision.decision, list(decision.reasons)
            cycle.headline = records.gated_report(folder.eval, report, decision)
            records.write_report(run.root, [c.to_json() for c in cycles], released=None)
            if decision.decision == "pass":
                cycle.release = _release(policy, run, folder, tuned.candidate.parent, decision)
                break
            if decision.final:
                break
            plan = Plan.from_json(decision.next_plan)  # the gate's plan: a safety failure has its own on_fail steps
    except (LabcycleError, StageFailed) as exc:
        return Failed(message=str(exc))
    released = next((c.release.get("path") for c in cycles if c.release), None)
    steps = [c.to_json() for c in cycles]
    records.write_report(run.root, steps, released=released)
    return {**result, "cycles": steps, "released": released,
            # The last cycle's stages, where the CLI's summary looks for them.
            **{k: steps[-1][k] for k in ("generation", "mix", "tuning") if k in steps[-1]}}


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


@dataclass(frozen=True)
class Setup:
    """What a run works on, settled before any stage: the taxonomy folder, the config (parsed once, here),
    the models, and the teacher's URL without its login."""

    taxonomy: str
    cfg: Config
    student: str | None
    teacher_endpoint: str | None
    teacher_model: str | None


def _setup(run: RunFolder, taxonomy: str, config: str | None, profile: str | None, taxonomy_repo: str | None,
           branch: str | None, commit: str | None, teacher_endpoint: str | None, teacher_model: str | None,
           student_model: str | None) -> Setup:
    # A login in the URL (a run started from the UI or an API) stays out of the stage runs' parameters and
    # messages; the teachers made in this process still send it.
    teacher_endpoint = hold_teacher_login(teacher_endpoint)
    taxonomy_repo, branch, commit = blank(taxonomy_repo), blank(branch), blank(commit)
    config, profile = blank(config), blank(profile)
    config, taxonomy_repo = deployment_settings(config, profile, taxonomy_repo)
    if (branch or commit) and not taxonomy_repo:
        raise LabcycleError("branch and commit name what to check out of taxonomy_repo: give the repository's URL too")
    if taxonomy_repo:
        taxonomy = str(checkout_task(taxonomy_repo, run.taxonomy, branch, commit).root)
    elif not Path(taxonomy).is_dir():
        variable = f", or set the Prefect Variable {TAXONOMY_REPO_VARIABLE}" if _deployment_id() else ""
        raise LabcycleError(f"taxonomy folder {taxonomy!r} not found here: give taxonomy_repo (the taxonomy's git URL) "
                            f"or a taxonomy folder this worker can read{variable}")
    if profile:
        if config:
            raise LabcycleError("give either a profile or a config, not both")
        chosen = profiles.apply(profile, run.root, Path(taxonomy))
        config = chosen["config"]
        teacher_model, student_model = teacher_model or chosen["teacher_model"], student_model or chosen["student_model"]
    cfg = config_module.load(config)
    return Setup(taxonomy=taxonomy, cfg=cfg, student=student_model or cfg.student.model,
                 teacher_endpoint=teacher_endpoint, teacher_model=teacher_model)


def _loop_settings(setup: Setup, until: Stage, max_cycles: int | None) -> tuple[Any, Any]:
    """(gate policy, mixing recipe): every mistake in them, and a missing student, found before generation."""
    if until not in ("generate", "mix") and not setup.student:
        raise LabcycleError("no student model to tune: pass --student-model DIR or set student.model in the "
                            "config (or stop earlier with --until mix)")
    if until not in ("generate", "mix") and not setup.cfg.remote.deployments.get("tune"):
        check_student(setup.student)  # a remote tune stage reads it on its GPU worker, not here
    policy = load_policy(setup.cfg.gate.policy)
    if max_cycles is not None:
        if max_cycles < 1:
            raise LabcycleError(f"max_cycles must be 1 or more, not {max_cycles}")
        policy = replace(policy, max_cycles=max_cycles)
    recipe = load_recipe(setup.cfg.mixing.recipe)
    if recipe.tokenizer is None and setup.student:  # the dataset card counts tokens as the student will see them
        recipe = replace(recipe, tokenizer=str(Path(setup.student).resolve()))
    return policy, recipe


def _release(policy: Any, run: RunFolder, folder: CycleFolder, tuned: Path, decision: Any) -> dict[str, Any]:
    candidate = records.candidate(tuned, folder, decision.to_json(), run.manifest)
    if policy.approval.required:
        answer = request_approval(records.approval_summary(candidate, decision), policy.approval.timeout_s)
        if not answer["approved"]:
            return {"approved": False, **answer}
        candidate = replace(candidate, decision={**candidate.decision, "approval": answer})
    rel = policy.release
    return release_task(candidate, rel.registry_location(run.root), rel.name, rel.hub_repo)
