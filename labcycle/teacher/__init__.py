"""Teachers: the model that writes synthetic data, behind one async `chat` interface.

`make_teacher(endpoint, model, ...)` gives an OpenAITeacher for an OpenAI-compatible endpoint (a vLLM
server or any other), a TeacherPool for several endpoints serving replicas of one model, else an
EngineTeacher running vLLM in-process on the local model directory.
Heavy modules (openai, vllm, transformers) are imported only when a teacher is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labcycle.teacher.base import (
    Completion,
    Sampling,
    Structured,
    Teacher,
    TeacherStats,
    parse_choice,
    parse_json,
)
from labcycle.urls import split_endpoints

if TYPE_CHECKING:
    from labcycle.teacher.engine import EngineTeacher
    from labcycle.teacher.openai_client import OpenAITeacher
    from labcycle.teacher.pool import TeacherPool


def make_teacher(endpoint: str | Sequence[str] | None, model: str, *, max_concurrency: int, structured_mode: str = "vllm",
                 api_key: str | None = None, max_model_len: int = 4096, log_path: str | Path | None = None,
                 **engine_kwargs: Any) -> Teacher:
    """OpenAITeacher(endpoint, model) for one endpoint; a TeacherPool for several (a list, or URLs separated
    by commas: replicas of one model, each with `max_concurrency` requests in flight at most); else
    EngineTeacher(model) (a local dir) whose vLLM output goes to `log_path` (unless LABCYCLE_VERBOSE);
    engine_kwargs go to vLLM's engine arguments (gpu_memory_utilization, ...) of an EngineTeacher."""
    urls = split_endpoints(endpoint)
    if len(urls) > 1:
        from labcycle.teacher.pool import TeacherPool

        return TeacherPool(urls, model, api_key=api_key, max_concurrency=max_concurrency, structured_mode=structured_mode)
    if urls:
        from labcycle.teacher.openai_client import OpenAITeacher

        return OpenAITeacher(urls[0], model, api_key=api_key, max_concurrency=max_concurrency,
                             structured_mode=structured_mode)
    from labcycle.teacher.engine import EngineTeacher

    return EngineTeacher(model, max_concurrency=max_concurrency, max_model_len=max_model_len, log_path=log_path,
                         **engine_kwargs)


def __getattr__(name: str):  # lazy: `from labcycle.teacher import OpenAITeacher` without eager imports
    if name == "OpenAITeacher":
        from labcycle.teacher.openai_client import OpenAITeacher

        return OpenAITeacher
    if name == "EngineTeacher":
        from labcycle.teacher.engine import EngineTeacher

        return EngineTeacher
    if name == "TeacherPool":
        from labcycle.teacher.pool import TeacherPool

        return TeacherPool
    if name == "VLLMServer":
        from labcycle.teacher.server import VLLMServer

        return VLLMServer
    raise AttributeError(name)


__all__ = ["Completion", "EngineTeacher", "OpenAITeacher", "Sampling", "Structured", "Teacher", "TeacherPool", "TeacherStats",
           "make_teacher", "parse_choice", "parse_json"]
