"""What generation reads: the run manifest's leaves with their qna.yaml and chunks (labcycle/leaves.py), the
pipeline spec for each leaf kind, (the teacher's settings: labcycle/teacher/settings.py)."""

from __future__ import annotations

from pathlib import Path

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
