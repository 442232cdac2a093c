"""The teacher's settings (the config's generation.teacher, which the evaluation's judge shares), with the
command line's overrides, and its API key from a Prefect Secret block."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from labcycle.errors import LabcycleError
from labcycle.urls import redact, split_endpoints


@dataclass(frozen=True)
class TeacherConfig:
    """endpoint: one OpenAI-compatible base URL, or several separated by commas; endpoints: the same as a list.
    Several are replicas of one model, served as a TeacherPool (labcycle/teacher/pool.py), each with
    max_concurrency requests in flight at most."""

    endpoint: str | None = None
    model: str | None = None
    max_concurrency: int = 32
    structured_mode: str = "vllm"
    max_model_len: int = 4096
    api_key_secret: str | None = None  # a Prefect Secret block's name
    endpoints: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.endpoints is not None:
            object.__setattr__(self, "endpoints", tuple(self.endpoints))
            if self.endpoint and split_endpoints(self.endpoint) != split_endpoints(self.endpoints):
                raise LabcycleError("generation.teacher has both endpoint and endpoints; keep one (endpoints: a list of "
                                    "replicas of one model, endpoint: one URL)")

    @property
    def urls(self) -> list[str]:
        """The teacher's endpoints: none (an in-process engine), one, or several replicas."""
        return split_endpoints(self.endpoint) or split_endpoints(self.endpoints)


def teacher_config(base: TeacherConfig, endpoint: str | None, model: str | None, max_concurrency: int | None) -> TeacherConfig:
    """The settings with the command line's overrides. `endpoint` (one URL or several separated by commas)
    replaces the config's endpoint(s); the result's `endpoint` holds all of them, separated by commas, for
    make_teacher."""
    urls = split_endpoints(endpoint) or base.urls
    for url in urls:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            shown = redact(url)
            shown = "…@" + shown.rsplit("@", 1)[1] if "@" in shown else shown  # never a password, URL or not
            raise LabcycleError(f"teacher endpoint {shown!r} is not an http(s) URL; write it as http://HOST:PORT/v1 "
                                "(several replicas: separated by commas, or a list in generation.teacher.endpoints)")
    cfg = replace(base, endpoint=",".join(urls) or None, endpoints=None, model=model or base.model,
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
