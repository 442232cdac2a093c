"""Named settings for `labcycle run --profile NAME` (and the lab_cycle flow's `profile` parameter).

A profile is a labcycle.yaml shipped with labcycle, plus the models it names. `demo` builds a tiny
random model from the taxonomy's own text (once, under $LABCYCLE_HOME/models/) and uses it as both
teacher (in-process vLLM) and student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from labcycle.env import state_dir
from labcycle.errors import LabcycleError
from labcycle.io import write_text_atomic

PROFILES_DIR = Path(__file__).parent
NAMES = ("demo",)
# Keys holding paths that resolve against the profile file's folder.
_PATHS = (("generation", "pipelines", "*"), ("mixing", "recipe"), ("gate", "policy"))


def resolved_config(name: str) -> dict[str, Any]:
    """The profile's config with its relative paths made absolute."""
    if name not in NAMES:
        raise LabcycleError(f"unknown profile {name!r}; known: {', '.join(NAMES)}")
    data = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    for path in _PATHS:
        node = data
        for key in path[:-1]:
            node = node.get(key, {})
        keys = list(node) if path[-1] == "*" else [path[-1]]
        for key in keys:
            if isinstance(node.get(key), str):
                node[key] = str((PROFILES_DIR / node[key]).resolve())
    return data


def tiny_model(taxonomy: Path) -> Path:
    """The demo's model: built once from the taxonomy's text, then reused."""
    from labcycle.models import build_tiny, taxonomy_corpus

    folder = state_dir() / "models" / "tiny"
    if not (folder / "config.json").exists():
        build_tiny(folder, seed=0, texts=taxonomy_corpus(taxonomy))
    return folder


def apply(name: str, run_dir: Path, taxonomy: Path) -> dict[str, str]:
    """Write the profile's config into the run folder; -> {config, teacher_model, student_model}."""
    config = write_text_atomic(Path(run_dir) / f"profile-{name}.yaml",
                               f"# labcycle profile {name!r}, as this run used it\n" + yaml.safe_dump(resolved_config(name), sort_keys=False))
    model = str(tiny_model(Path(taxonomy)))
    return {"config": str(config), "teacher_model": model, "student_model": model}
