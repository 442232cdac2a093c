"""The teacher's settings (the config's generation.teacher, which the evaluation's judge shares), with the
command line's overrides, and its API key from a Prefect Secret block."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from labcycle.errors import LabcycleError


@dataclass(frozen=True)
class TeacherConfig:
    endpoint: str | None = None
    model: str | None = None
    max_concurrency: int = 32
    structured_mode: str = "vllm"
    max_model_len: int = 4096
    api_key_secret: str | None = None  # a Prefect Secret block's name


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
