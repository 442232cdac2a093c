"""Synthetic data generation for the leaves of a run, on a teacher model served by vLLM.

    labcycle generate --taxonomy ROOT [--base REF] --output DIR [--teacher-endpoint URL]
                      [--teacher-model NAME] [--max-concurrency N] [--config FILE]

One task per leaf, all awaited together in one event loop so that a single teacher client caps the
requests in flight across every leaf. Also a subflow of lab_cycle, and deployable on its own (the
deployment generate/gpu: deployments/prefect.yaml; lab_cycle runs it there through flows/remote.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.states import Failed

from labcycle.errors import LabcycleError
from labcycle.io import link_tree, write_json
from labcycle.flows import config as config_module
from labcycle.flows import remote
from labcycle.flows.config import Config
from labcycle.tasks.generate import inputs, report
from labcycle.tasks.generate.stage import generate_leaf_task, publish_generated
from labcycle.teacher import make_teacher
from labcycle.teacher.settings import api_key, teacher_config


@flow(name="generate", log_prints=True)
@remote.portable("generate")
async def generate(manifest: str, output: str, config: Config | str | None = None, teacher_endpoint: str | None = None,
                   teacher_model: str | None = None, max_concurrency: int | None = None,
                   plan: dict[str, Any] | None = None, taxonomy_root: str | None = None,
                   storage: str | None = None, leaves: list[str] | None = None) -> Any:
    """Generate samples for every leaf of a run manifest into OUTPUT/<leaf-id>/.

    Args:
        manifest: the run's manifest.json (from the taxonomy stage).
        output: where samples.jsonl and yield.json go, one folder per leaf.
        config: a labcycle.yaml, or the config lab_cycle parsed; its `generation` section, overridden by the
            arguments below.
        teacher_endpoint: an OpenAI-compatible base URL; unset: an in-process vLLM engine.
        teacher_model: the served model name, or a local model folder for the in-process engine.
        max_concurrency: most teacher requests in flight at once, across all leaves.
        plan: a later cycle's changes (tasks/gate/plan.py, as JSON): more samples, other seeds, stricter judges.
        taxonomy_root: where the leaves' qna.yaml files are; default: the root the manifest names.
        storage: set by lab_cycle for a remote run (flows/remote.py, `portable`): the run's mirror in shared
            storage. manifest, output and taxonomy_root are then relative to it; the inputs are fetched
            first and the output sent back after.
        leaves: only these leaf ids of the manifest (one group of a fanned-out stage, `run_generate`); unset:
            every leaf.
    """
    try:
        cfg = config_module.settings(config).generation
        teacher_cfg = teacher_config(cfg.teacher, teacher_endpoint, teacher_model, max_concurrency)
        every, specs = inputs.load_leaves(Path(manifest), cfg, Path(taxonomy_root) if taxonomy_root else None)
        chosen = inputs.only(every, leaves)
        key = await api_key(teacher_cfg)
    except LabcycleError as exc:
        return Failed(message=str(exc))
    out = Path(output)
    teacher = make_teacher(teacher_cfg.endpoint, teacher_cfg.model, max_concurrency=teacher_cfg.max_concurrency,
                           structured_mode=teacher_cfg.structured_mode, max_model_len=teacher_cfg.max_model_len,
                           api_key=key, log_path=out / "teacher.log")
    tracker = await report.ProgressTracker.start(chosen, cfg, plan)
    try:
        # Every leaf runs to its end even when another fails, so whatever finished is kept and published.
        results = await asyncio.gather(*(
            generate_leaf_task(leaf, specs[leaf.kind], teacher, cfg.settings_for(leaf.id, plan), tracker.update) for leaf in chosen
        ), return_exceptions=True)
    finally:
        await teacher.aclose()
    published = [publish_generated(r, out) for r in results if isinstance(r, dict)]
    summary = await report.finish(published, teacher, out, tracker)
    failures = [f"{leaf.id}: {r}" for leaf, r in zip(chosen, results) if isinstance(r, BaseException)]
    if failures:
        return Failed(message="generation failed for " + "; ".join(failures) + " (finished work is kept: once that is fixed, a rerun resumes from it)")
    return summary


def run_generate(remote_settings: Any, run_dir: Path, **params: Any) -> Any:
    """The generate stage as lab_cycle runs it: in-process or on its deployment (remote.run_stage), or, with
    remote.leaf_groups > 1, fanned out: the manifest's leaves split into that many groups of about equal
    work (inputs.split), each one run of the deployment writing its own OUTPUT-groups/<k>/, started
    together so that the pool's workers generate side by side. Their leaves are then gathered into OUTPUT
    as one run would have left them, with one summary. Each leaf keeps its own cache on the worker that
    generates it, and the same manifest always splits the same way, so a rerun resumes leaf by leaf.
    -> the stage's final state: Failed, naming the groups that failed, when any did; the leaves that
    finished are gathered all the same."""
    import time

    from prefect.states import Completed

    groups = remote_settings.leaf_groups
    if groups <= 1 or "generate" not in remote_settings.deployments:
        return remote.run_stage(generate, remote_settings, run_dir, **params)
    out = Path(params["output"])
    split = inputs.split(Path(params["manifest"]), groups)
    folders = [out.with_name(f"{out.name}-groups") / str(k + 1) for k in range(len(split))]
    started = time.monotonic()
    states = remote.run_groups(generate, remote_settings, run_dir,
                               [{"leaves": ids, "output": str(folder)} for ids, folder in zip(split, folders)], **params)
    for ids, folder in zip(split, folders):
        gather(folder, out, ids)
    parts = [{**s.result(), "ran_as": s.message} for s in states if s.is_completed()]
    failed = [f"group {k + 1} of {len(split)} ({len(ids)} leaves): {s.message}"
              for k, (ids, s) in enumerate(zip(split, states)) if not s.is_completed()]
    summary = report.combine(parts, time.monotonic() - started)
    write_json(out / "summary.json", summary)
    if failed:
        return Failed(message="; ".join(failed) + " (the leaves that finished are kept in "
                      f"{out}: once that is fixed, a rerun resumes from them)")
    return Completed(data={**summary, "output": str(out)}, message=f"{len(split)} runs of {remote_settings.deployments['generate']}")


def gather(group_output: Path, output: Path, leaf_ids: list[str]) -> None:
    """A group's published leaves (their samples and yield report) into the stage's output folder, as hard
    links where the filesystem allows. A leaf the group did not finish has no folder, and is left out."""
    for leaf_id in leaf_ids:
        if (group_output / leaf_id).is_dir():
            link_tree(group_output / leaf_id, output / leaf_id)
