"""The mixing stage: generated samples (and user datasets) become the two training sets of the LAB method.

    labcycle mix --generated RUN/generated --output RUN/mixed --recipe taxonomy/recipe.yaml

Phase 1 (knowledge) trains on the knowledge leaves' Q&A twice over: as generated, and RAFT-style, with the
question shown beside its source chunk and distractor chunks (sometimes distractors only, so the answer
must come from memory). Phase 2 (skills) trains on the skills leaves' samples plus a replay of phase 1, so
tuning on skills does not wash out the knowledge. User datasets join either phase, and a source too small
to matter in its phase is repeated until it reaches the recipe's min_share.

- recipe.py: the recipe (YAML, schemas/recipe.schema.json) as typed objects
- data.py: reading samples.jsonl files (user chat datasets: labcycle/chat_data.py, JSONL, Parquet, save_to_disk
  folders)
- phases.py: building the phase sets (grounded copies, per-leaf sampling, replay, weights, upsampling)
- card.py: sample lengths and the dataset cards
- core.py: mix(), the pure core that writes OUTPUT/
- stage.py: mix_task, the cached Prefect task (imported on first use: reading a recipe needs no Prefect)
"""

from __future__ import annotations

from typing import Any

from labcycle.tasks.mix.core import mix
from labcycle.tasks.mix.recipe import Recipe, load_recipe, recipe_from_mapping

__all__ = ["Recipe", "load_recipe", "mix", "mix_task", "recipe_from_mapping"]


def __getattr__(name: str) -> Any:
    if name == "mix_task":
        from labcycle.tasks.mix.stage import mix_task

        return mix_task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
