"""What generation reads: the run manifest's leaves with their qna.yaml and chunks, the pipeline spec
for each leaf kind, (the teacher's settings: labcycle/teacher/settings.py)."""

from __future__ import annotations

import json
from pathlib import Path

from labcycle.errors import LabcycleError
from labcycle.io import read_jsonl
from labcycle.tasks.generate.runner import LeafInput
from labcycle.tasks.generate.settings import GenerationConfig
from labcycle.tasks.generate.spec import PipelineSpec, load_spec, shipped_spec_path
from labcycle.yaml_reader import read_yaml


def load_leaves(manifest_path: Path, cfg: GenerationConfig,
                taxonomy_root: Path | None = None) -> tuple[list[LeafInput], dict[str, PipelineSpec]]:
    """The manifest's leaves, read from the taxonomy root it names or from `taxonomy_root` (a copy of the
    leaves elsewhere, e.g. on a GPU worker: flows/remote.py)."""
    if not manifest_path.is_file():
        raise LabcycleError("run manifest not found; run the taxonomy stage first (labcycle run)", where=str(manifest_path))
    manifest = json.loads(manifest_path.read_text())
    root = Path(taxonomy_root) if taxonomy_root else Path(manifest["taxonomy"]["root"])
    run_dir = manifest_path.parent
    specs: dict[str, PipelineSpec] = {}
    leaves = []
    for entry in manifest["leaves"]:
        kind = entry["kind"]
        if kind not in specs:
            specs[kind] = load_spec(Path(cfg.pipelines[kind]) if kind in cfg.pipelines else shipped_spec_path(kind))
        parsed = read_yaml(root / entry["path"])
        if parsed.problems or not isinstance(parsed.data, dict):
            raise LabcycleError("the leaf changed since it was validated; run the taxonomy stage again", where=entry["id"])
        chunks_file = run_dir / "documents" / entry["id"] / "chunks.jsonl"
        chunks = read_jsonl(chunks_file) if kind == "knowledge" and chunks_file.exists() else []
        leaves.append(LeafInput(id=entry["id"], kind=kind, hash=entry["hash"], qna=parsed.data, chunks=chunks))
    return leaves, specs
