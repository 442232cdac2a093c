"""The Prefect task of the mixing stage.

Its cache key is (every input samples.jsonl, the recipe's digest, the user datasets' and tokenizer's
files, the output folder), and a key is only given while OUTPUT holds that exact mix intact, so
- an unchanged input is a cache hit (persisted result), and even without Prefect's cache (a new Prefect
  home) a complete OUTPUT is not mixed again;
- a deleted or damaged OUTPUT is never "served" from the cache: the mix runs and writes it again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from labcycle.tasks.mix.core import input_key, mix, read_complete
from labcycle.tasks.mix.recipe import Recipe


def _task_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    p = parameters
    output = Path(p["output"]).resolve()
    key = input_key(Path(p["generated"]), p["recipe"])
    # A cached result is only worth serving while the files it describes are there; otherwise run (no key).
    if read_complete(output, key) is None:
        return None
    return "mix-" + hashlib.sha256(f"{key}\0{output}".encode()).hexdigest()[:32]


# log_prints off: datasets' fingerprinting (dill) reads globals by capturing dis.dis's printout, which
# log_prints would divert into the run's log as bytecode (and out of dill's reach).
@task(name="mix", task_run_name="mix: {output}", cache_key_fn=_task_cache_key, persist_result=True,
      result_serializer="json", log_prints=False)
def mix_task(generated: Path, output: Path, recipe: Recipe) -> dict[str, Any]:
    """mix(), skipped when OUTPUT already holds the mix of these exact inputs."""
    done = read_complete(Path(output), input_key(Path(generated), recipe))
    if done is not None:
        return done
    summary = mix(Path(generated), Path(output), recipe)
    if summary["warnings"]:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            logger = get_run_logger()
        except MissingContextError:  # called as mix_task.fn(...)
            import logging

            logger = logging.getLogger(__name__)
        for w in summary["warnings"]:
            logger.warning(w)
    return summary
