"""What generation reads: the run manifest's leaves with their qna.yaml and chunks, the pipeline spec
for each leaf kind, and the teacher settings (config, overridden by command-line arguments)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from labcycle.config import GenerationConfig, TeacherConfig
from labcycle.errors import LabcycleError
from labcycle.io import read_jsonl
from labcycle.tasks.generate.runner import LeafInput
from labcycle.tasks.generate.spec import PipelineSpec, load_spec, shipped_spec_path
from labcycle.yaml_reader import read_yaml


def teacher_config(base: TeacherConfig, endpoint: str | None, model: str | None, max_concurrency: int | None) -> TeacherConfig:
    cfg = replace(base, endpoint=endpoint or base.endpoint, model=model or base.model,
                  max_concurrency=max_concurrency or base.max_concurrency)
    if not cfg.model:
        raise LabcycleError("no teacher model: pass --teacher-model (a served model name, or a local model folder "
                            "for the in-process engine) or set generation.teacher.model in the config")
    if not cfg.endpoint and not Path(cfg.model).is_dir():
        raise LabcycleError(f"teacher model folder {cfg.model!r} not found; with no --teacher-endpoint the teacher runs "
                            "in-process and needs a local model folder (labcycle models build-tiny DIR makes one for smoke runs)")
    return cfg


async def api_key(cfg: TeacherConfig) -> str | None:
    """The key from the named Prefect Secret block, if one is configured; else None (the teacher client
    then reads LABCYCLE_TEACHER_API_KEY or OPENAI_API_KEY)."""
    if not cfg.api_key_secret:
        return None
    from prefect.blocks.system import Secret

    try:
        secret = await Secret.aload(cfg.api_key_secret)
    except ValueError as exc:
        raise LabcycleError(f"Prefect Secret block {cfg.api_key_secret!r} not found; create it (prefect block create secret) "
                            "or unset generation.teacher.api_key_secret") from exc
    return secret.get()


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
