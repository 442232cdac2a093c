"""The evaluation of a cycle's candidate: branch (judge + reference metrics on the changed leaves) and
regression suites, candidate adapter against its base, on one vLLM server.

    evaluate(manifest="RUN/manifest.json", candidate="RUN/cycle-1/tuned/skills/adapter", base_model=DIR,
             output="RUN/cycle-1/eval", held_out="RUN/cycle-1/mixed/held_out.jsonl", config=FILE)

Its own flow so that it can be deployed to a GPU work pool (the deployment evaluate/gpu:
deployments/prefect.yaml; lab_cycle runs it there through flows/remote.py); otherwise a subflow of
lab_cycle. Writes OUTPUT/report.json, report.md and answers.jsonl (tasks/evaluate/stage.py).

`evaluate_candidate` is `labcycle evaluate`: the taxonomy subflow, this one, and the gate, for a candidate
tuned anywhere (no generated data, so only the selected leaves' seed questions are asked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.states import Failed

from labcycle.errors import LabcycleError
from labcycle.flows import config as config_module
from labcycle.flows import remote
from labcycle.flows.config import Config
from labcycle.flows.taxonomy import prepare_taxonomy
from labcycle.io import write_json
from labcycle.tasks import gate
from labcycle.tasks.evaluate import evaluate_task
from labcycle.tasks.evaluate.settings import evaluation_inputs
from labcycle.tasks.evaluate import report as report_io


@flow(name="evaluate", log_prints=True)
@remote.portable("evaluate")
def evaluate(manifest: str, candidate: str, base_model: str, output: str, held_out: str | None = None,
             config: Config | str | None = None, teacher_endpoint: str | None = None, teacher_model: str | None = None,
             max_concurrency: int | None = None, taxonomy_root: str | None = None, storage: str | None = None) -> Any:
    """Evaluate a candidate adapter against its base model; returns the report (OUTPUT/report.json).

    Args:
        manifest: the run's manifest.json: the leaves whose seed questions are asked.
        candidate: the candidate's LoRA adapter folder (the last tuned phase's adapter/).
        base_model: the model the adapter was trained on.
        output: where report.json, report.md and answers.jsonl go.
        held_out: held-out generated samples (the mix stage's held_out.jsonl), asked besides the seeds.
        config: a labcycle.yaml, or the config lab_cycle parsed; its `evaluation` section, and the teacher
            that judges.
        teacher_endpoint: the judge's OpenAI-compatible base URL; unset: an in-process vLLM engine.
        teacher_model: the judge's served model name, or a local model folder for the in-process engine.
        max_concurrency: most judge requests in flight at once (evaluation.concurrency caps it too).
        taxonomy_root: where the leaves' qna.yaml files are; default: the root the manifest names.
        storage: set by lab_cycle for a remote run (flows/remote.py, `portable`): the run's mirror in shared
            storage. manifest, candidate, output, held_out and taxonomy_root are then relative to it
            (base_model too when it is in the mirror); the inputs are fetched first and the output sent back after.
    """
    try:
        cfg = config_module.settings(config)
        return evaluate_task(Path(manifest), Path(candidate), Path(base_model), Path(output),
                             held_out=Path(held_out) if held_out else None,
                             taxonomy_root=Path(taxonomy_root) if taxonomy_root else None,
                             **evaluation_inputs(cfg.evaluation, cfg.generation.teacher, teacher_endpoint, teacher_model,
                                                 max_concurrency))
    except LabcycleError as exc:
        return Failed(message=f"{exc} (finished work is kept: once that is fixed, a rerun resumes from it)")


@flow(name="evaluate-candidate", log_prints=True)
def evaluate_candidate(taxonomy: str, base_model: str, candidate: str, output: str, base: str | None = None,
                       config: str | None = None, policy: str | None = None) -> Any:
    """Evaluate a candidate against its base on a taxonomy's selected leaves, then apply a gate policy:
    `labcycle evaluate`. Returns a report.Summary (decision None without a policy).

    Args:
        taxonomy: the taxonomy root.
        base_model: the model the candidate was tuned from (a local model folder).
        candidate: a PEFT adapter folder, or a whole model folder (fully fine-tuned or merged).
        output: the folder for manifest.json, validation.json, documents/ (the taxonomy stage's), report.json,
            report.md, answers.jsonl (the evaluation's) and decision.json (the gate's).
        base: the git ref the changed leaves are selected against; "empty" selects every leaf;
            default origin/main, else main.
        config: a labcycle.yaml: its taxonomy, chunking and evaluation sections, and the teacher that judges.
        policy: a gate policy (schemas/gate.schema.json); None: no decision.
    """
    out = Path(output).resolve()
    try:
        rules = gate.load_policy(policy) if policy else None  # a mistake in it costs no evaluation
        cfg = config_module.load(config)  # once, for both subflows
    except LabcycleError as exc:
        return Failed(message=str(exc))
    prepared = prepare_taxonomy(taxonomy=taxonomy, base=base, output=str(out), config=cfg, return_state=True)
    if not prepared.is_completed():
        return Failed(message=prepared.message)
    evaluated = evaluate(manifest=prepared.result()["manifest"], candidate=candidate, base_model=base_model,
                         output=str(out), config=cfg, return_state=True)
    if not evaluated.is_completed():
        return Failed(message=evaluated.message)
    report = evaluated.result()
    decision = None
    if rules is not None:
        try:
            decision = gate.decide_alone(report, rules, source=str(out / report_io.REPORT))
        except LabcycleError as exc:
            return Failed(message=str(exc))
        write_json(out / "decision.json", decision.to_json())
    else:
        (out / "decision.json").unlink(missing_ok=True)  # an earlier run's decision is not this one's
    report_io.write_gated(out, report, decision)  # the headline first; ⚠ only on what the gate checked
    return report_io.summary(report, out, decision)
