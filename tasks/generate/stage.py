"""Prefect tasks of the generation stage.

Each leaf is one task whose cache key is (leaf content hash, pipeline spec + prompts hash, teacher,
generation settings). Its work folder lives under $LABCYCLE_HOME/cache/generated/<key>/, so
- an unchanged leaf is a Prefect cache hit (persisted result) and sends no request to the teacher;
- even without Prefect's cache (a new Prefect home), a leaf whose work folder is complete is not redone;
- a crashed run resumes from the leaf's journal, whichever run folder the next run writes to.
The run folder gets a copy of each leaf's samples.jsonl and yield.json (publish_generated).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from labcycle.env import state_dir
from labcycle.errors import LabcycleError, retry_if_transient
from labcycle.tasks.generate import runner
from labcycle.tasks.generate.runner import GenerationSettings, LeafInput
from labcycle.tasks.generate.spec import PipelineSpec


# Bumped whenever what the runner or the blocks produce from the same inputs changes, so that cached
# generation made by older code is not served as if it were current.
GENERATION_FORMAT = 2


def cache_key(leaf_hash: str, spec_digest: str, teacher_model: str, settings: GenerationSettings) -> str:
    payload = json.dumps({"format": GENERATION_FORMAT, "leaf": leaf_hash, "spec": spec_digest, "teacher": teacher_model,
                          "settings": settings.to_json()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def work_dir(key: str) -> Path:
    return state_dir() / "cache" / "generated" / key


def _task_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    p = parameters
    return "generate-" + cache_key(p["leaf"].hash, p["spec"].digest, p["teacher"].model, p["settings"])


@task(name="generate leaf", task_run_name="generate: {leaf.id}", cache_key_fn=_task_cache_key, persist_result=True,
      result_serializer="json", retries=1, retry_delay_seconds=30, retry_condition_fn=retry_if_transient)
async def generate_leaf_task(leaf: LeafInput, spec: PipelineSpec, teacher: Any, settings: GenerationSettings,
                             progress: Any = None) -> dict[str, Any]:
    """One leaf's samples; resumable, and skipped entirely when its work folder is already complete."""
    folder = work_dir(cache_key(leaf.hash, spec.digest, teacher.model, settings))
    complete = runner.read_complete(folder)
    if complete is not None:
        return complete
    result = await runner.generate_leaf(leaf, spec, teacher, settings, folder, progress)
    return runner.read_complete(folder) or result.to_json()


@task(name="publish generated", task_run_name="publish: {report[leaf_id]}")
def publish_generated(report: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Copy a leaf's samples and yield report from its work folder into the run folder."""
    src = Path(report["work_dir"])
    if not (src / runner.SAMPLES).exists():
        raise LabcycleError(f"the cached generation in {src} is gone (cache folder cleaned?); rerun with "
                            "PREFECT_TASKS_REFRESH_CACHE=true to generate it again", where=report["leaf_id"])
    dest = out_dir / report["leaf_id"]
    dest.mkdir(parents=True, exist_ok=True)
    for name in (runner.SAMPLES, runner.YIELD):
        tmp = dest / f".{name}.tmp"
        shutil.copyfile(src / name, tmp)
        tmp.replace(dest / name)
    return report
