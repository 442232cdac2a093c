"""The LAB cycle as one Prefect flow.

    labcycle run --taxonomy ROOT [--base REF|empty] [--output RUN_DIR] [--config labcycle.yaml]
                 [--teacher-endpoint URL] [--teacher-model NAME] [--until taxonomy|generate]

Stages so far: the taxonomy subflow (discover → validate → select changed leaves → fetch documents →
chunk → manifest), then the generate subflow (one task per leaf, teacher on vLLM, judge filters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.states import Failed
from prefect.utilities.asyncutils import run_coro_as_sync

from labcycle.env import default_run_dir
from labcycle.flows.generate import generate
from labcycle.flows.taxonomy import prepare_taxonomy


@flow(name="lab-cycle", log_prints=True)
def lab_cycle(taxonomy: str = "taxonomy", base: str | None = None, output: str | None = None, config: str | None = None,
              teacher_endpoint: str | None = None, teacher_model: str | None = None, max_concurrency: int | None = None,
              until: Literal["taxonomy", "generate"] = "generate") -> Any:
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
        until: the last stage to run.
    """
    run_dir = Path(output).resolve() if output else default_run_dir()
    prepared = prepare_taxonomy(taxonomy=taxonomy, base=base, output=str(run_dir), config=config, return_state=True)
    if not prepared.is_completed():
        return Failed(message=prepared.message)
    result: dict[str, Any] = {"run_dir": str(run_dir), **prepared.result()}
    if until == "taxonomy":
        return result

    generated = run_coro_as_sync(generate(manifest=result["manifest"], output=str(run_dir / "generated"), config=config,
                                          teacher_endpoint=teacher_endpoint, teacher_model=teacher_model,
                                          max_concurrency=max_concurrency, return_state=True))
    if not generated.is_completed():
        return Failed(message=generated.message)
    return {**result, "generation": generated.result()}
