"""What generation reads: the run manifest's leaves with their qna.yaml and chunks (labcycle/leaves.py), the
pipeline spec for each leaf kind, (the teacher's settings: labcycle/teacher/settings.py)."""

from __future__ import annotations

import json
from pathlib import Path

from labcycle.errors import LabcycleError

from labcycle.leaves import LeafInput, read_leaves
from labcycle.tasks.generate.settings import GenerationConfig
from labcycle.tasks.generate.spec import PipelineSpec, load_spec, shipped_spec_path


def load_leaves(manifest_path: Path, cfg: GenerationConfig,
                taxonomy_root: Path | None = None) -> tuple[list[LeafInput], dict[str, PipelineSpec]]:
    """The manifest's leaves (labcycle.leaves.read_leaves: from the taxonomy root it names or from
    `taxonomy_root`) and the pipeline spec of each leaf kind among them."""
    leaves = read_leaves(manifest_path, taxonomy_root)
    specs: dict[str, PipelineSpec] = {}
    for leaf in leaves:
        if leaf.kind not in specs:
            specs[leaf.kind] = load_spec(Path(cfg.pipelines[leaf.kind]) if leaf.kind in cfg.pipelines
                                         else shipped_spec_path(leaf.kind))
    return leaves, specs


def only(leaves: list[LeafInput], wanted: list[str] | None) -> list[LeafInput]:
    """The leaves a run of the stage generates: all, or the group `wanted` names (a fanned-out run)."""
    if wanted is None:
        return leaves
    known = {leaf.id for leaf in leaves}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise LabcycleError(f"the leaves {unknown} are not in this run's manifest; a group names leaves of the "
                            "manifest it is given (was the run folder's taxonomy stage run again since?)")
    chosen = set(wanted)
    return [leaf for leaf in leaves if leaf.id in chosen]


def split(manifest_path: Path, groups: int) -> list[list[str]]:
    """The manifest's leaf ids in at most `groups` groups of about equal work, for as many runs of the
    stage. A knowledge leaf's work grows with its chunks (each is a context of its own), a skill's is one
    unit: the heaviest leaf goes to the lightest group first. The same manifest always splits the same way,
    so a rerun finds each leaf's cached work where it left it. No group is empty."""
    data = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    weights = {leaf["id"]: max(1, int(leaf.get("chunks") or 0)) for leaf in data["leaves"]}
    n = max(1, min(groups, len(weights)))
    loads = [0] * n
    chosen: list[list[str]] = [[] for _ in range(n)]
    for leaf_id in sorted(weights, key=lambda i: (-weights[i], i)):
        g = loads.index(min(loads))
        chosen[g].append(leaf_id)
        loads[g] += weights[leaf_id]
    return [sorted(group) for group in chosen]
