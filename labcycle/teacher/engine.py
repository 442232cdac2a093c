"""A teacher run by vLLM in this process, behind the same async interface as OpenAITeacher.

vLLM's AsyncLLM (vllm/v1/engine/async_llm.py) batches concurrent requests continuously, so many
`chat` calls awaited together share one engine, exactly as they would share a server. The engine core
runs in a child process that vLLM starts itself; scripts that use this teacher need an
`if __name__ == "__main__":` guard where the platform spawns processes.

Creating the engine takes tens of seconds, so it happens once, on the first `chat`; the event loop is
blocked meanwhile (AsyncLLM must be built on the loop's thread). `aclose()` shuts it down.

Quiet by default: with a `log_path`, vLLM's output (engine config, OMP binding, the engine core's own
lines, the shutdown) goes to that file, not the console; LABCYCLE_VERBOSE=1 (`--verbose`) keeps it on
the console. The engine core is a child process, so the file is made its stdout and stderr while it
starts (it inherits them), and this process's `vllm` logger writes to the file until aclose().

Prompts are rendered with the model's own chat template (transformers' apply_chat_template, no
special tokens added again), then handed to vLLM's renderer as text: vLLM 0.32 deprecates passing raw
prompts to `generate`, and wants the output of `renderer.render_cmpl`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.reaper import collect, guard_children_started
from labcycle.teacher.base import CPU_ENV_DEFAULTS, Completion, PromptTooLong, Sampling, Structured, TeacherStats


_CONTEXT_LENGTH = re.compile(r"context length|maximum model length|too long|exceeds", re.I)


def verbose() -> bool:
    """LABCYCLE_VERBOSE=1 (the CLI's --verbose): engine and server output stays on the console."""
    return os.environ.get("LABCYCLE_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


class QuietVllm:
    """vLLM's output goes to `log_path` instead of the console.

    While the engine starts (`starting()`), file descriptors 1 and 2, sys.stdout/sys.stderr and vLLM's
    log handlers point at the file: the engine core, a child process started then, inherits them and
    keeps writing there, and what vLLM prints or logs at import goes there too. After the start, this
    process's `vllm` log handlers (vLLM reconfigures them while an engine starts) keep writing to the
    file until restore() gives each its own stream back."""

    def __init__(self, log_path: Path):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed in restore)
        self.original: dict[logging.StreamHandler, Any] = {}  # type: ignore[type-arg]
        self.logger = logging.getLogger("vllm")
        self.propagate = self.logger.propagate

    def _to_file(self, console: Any) -> None:
        """Every console handler of vLLM's logger writes to the file; `console` is what one made while the
        file stood in for sys.stdout gets back."""
        for handler in self.logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                if handler not in self.original:
                    self.original[handler] = console if handler.stream is self.file else handler.stream
                handler.setStream(self.file)

    @contextmanager
    def starting(self) -> Iterator[None]:
        streams = sys.stdout, sys.stderr
        for stream in streams:
            stream.flush()
        saved = os.dup(1), os.dup(2)
        # Before vLLM configures its logger (at its first import), its early warnings stay off the console.
        early = logging.StreamHandler(self.file)
        self._to_file(streams[0])
        self.logger.addHandler(early)
        self.logger.propagate = False
        try:
            os.dup2(self.file.fileno(), 1)
            os.dup2(self.file.fileno(), 2)
            sys.stdout = sys.stderr = self.file
            yield
        finally:
            self.file.flush()
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            self.logger.removeHandler(early)
            self.original.pop(early, None)
            self._to_file(streams[0])  # the handlers vLLM made while it started, too

    def restore(self) -> None:
        for handler, stream in self.original.items():
            handler.setStream(stream)
        self.original = {}
        self.logger.propagate = self.propagate
        self.file.close()


class EngineTeacher:
    supports_structured = True

    def __init__(self, model_dir: str | Path, max_model_len: int = 2048, dtype: str = "bfloat16",
                 max_concurrency: int = 64, *, compact_json: bool = True, log_path: str | Path | None = None,
                 **engine_kwargs: Any):
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path) if log_path is not None and not verbose() else None
        self._log: QuietVllm | None = None
        self.model = str(model_dir)
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.max_concurrency = max_concurrency
        self.compact_json = compact_json  # constrained JSON without free whitespace (a weak model fills it with blanks)
        self.engine_kwargs = engine_kwargs
        self.stats = TeacherStats()
        self._engine: Any = None
        self._tokenizer: Any = None
        self._lock: asyncio.Lock | None = None
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdogs: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"EngineTeacher(model_dir={str(self.model_dir)!r}, started={self._engine is not None})"

    # -- engine ------------------------------------------------------------------------------------
    def _build(self) -> Any:
        if self.log_path is None:
            return self._build_engine()
        if self._log is None:
            self._log = QuietVllm(self.log_path)
        with self._log.starting():
            return self._build_engine()

    def _build_engine(self) -> Any:
        for key, value in CPU_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if not (self.model_dir / "config.json").exists():
            raise LabcycleError("no model here (config.json missing)", where=str(self.model_dir))
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        kwargs: dict[str, Any] = {
            "model": str(self.model_dir),
            "max_model_len": self.max_model_len,
            "dtype": self.dtype,
            "disable_log_stats": True,
        }
        if current_platform.is_cpu():
            kwargs["enforce_eager"] = True
            # Seeded requests prefilled in chunks crash vLLM 0.32's CPU engine (see server.py).
            kwargs["enable_chunked_prefill"] = False
        if self.compact_json:
            # vLLM 0.32 ignores the per-request StructuredOutputsParams.disable_any_whitespace: only the
            # engine-wide setting reaches the grammar backend, and it needs a named backend, not "auto"
            # ("auto" picks xgrammar for nearly every request anyway, falling back to guidance).
            from vllm.config import StructuredOutputsConfig

            kwargs["structured_outputs_config"] = StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)
        kwargs.update(self.engine_kwargs)
        # EngineCore and its workers are child processes that outlive a killed parent: guard them.
        with guard_children_started(self._watchdogs):
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

    async def _ensure(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._engine is not None:
            if self._loop is not loop:
                raise LabcycleError("this EngineTeacher was started in another event loop; use one loop per "
                                    "engine (one asyncio.run for the whole job), or aclose() it first",
                                    where=str(self.model_dir))
            return self._engine
        if self._loop is not loop:
            self._loop, self._lock, self._sem = loop, None, None
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._engine is None:
                try:
                    self._engine = self._build()
                except LabcycleError:
                    raise
                except Exception as exc:  # vLLM's startup errors are long; the log above them says more
                    raise LabcycleError(f"vLLM could not start: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                                        where=str(self.model_dir)) from exc
        return self._engine

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        self._loop = None
        if engine is not None:
            engine.shutdown()
        watchdogs, self._watchdogs = self._watchdogs, []
        collect(watchdogs)
        log, self._log = self._log, None
        if log is not None:
            log.restore()

    async def __aenter__(self) -> EngineTeacher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the call ------------------------------------------------------------------------------------
    def _sampling_params(self, sampling: Sampling, structured: Structured | None) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        so = None
        if structured is not None:
            if structured.choice is not None:
                so = StructuredOutputsParams(choice=list(structured.choice))
            else:
                so = StructuredOutputsParams(json=structured.json_schema, disable_any_whitespace=self.compact_json)
        return SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, seed=sampling.seed, ignore_eos=sampling.ignore_eos,
                              structured_outputs=so, output_kind=RequestOutputKind.FINAL_ONLY)

    async def chat(self, messages: list[dict[str, str]], sampling: Sampling,
                   structured: Structured | None = None) -> Completion:
        engine = await self._ensure()
        try:
            from vllm.exceptions import VLLMClientError
        except ImportError:  # older vLLM
            VLLMClientError = ValueError  # noqa: N806
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrency)
        text = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        params = self._sampling_params(sampling, structured)
        async with self._sem:
            self.stats.requests += 1
            self.stats.enter()
            try:
                renderer = getattr(engine, "renderer", None)
                if renderer is not None and hasattr(renderer, "render_cmpl_async"):
                    # The template already holds the special tokens: tokenize without adding more.
                    (prompt,) = await renderer.render_cmpl_async([{"prompt": text}], renderer.default_chat_tok_params)
                else:  # older vLLM: a text prompt; pre-tokenize to avoid adding BOS twice
                    prompt = {"prompt_token_ids": self._tokenizer.encode(text, add_special_tokens=False)}
                final = None
                async for out in engine.generate(prompt, params, request_id=uuid.uuid4().hex):
                    final = out
            except LabcycleError:
                self.stats.failures += 1
                raise
            except (VLLMClientError, ValueError, TypeError) as exc:  # the request's fault (prompt too long, bad schema)
                self.stats.failures += 1
                detail = " ".join(str(exc).split())[:300]
                if _CONTEXT_LENGTH.search(detail):
                    raise PromptTooLong(f"prompt too long for the teacher: {detail}", where=str(self.model_dir)) from exc
                raise LabcycleError(f"vLLM rejected the request: {' '.join(str(exc).split())[:300]}",
                                    where=str(self.model_dir)) from exc
            except Exception as exc:
                self.stats.failures += 1
                raise LabcycleError(f"vLLM engine failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                                    where=str(self.model_dir), transient=True) from exc
            finally:
                self.stats.leave()
        if final is None:
            self.stats.failures += 1
            raise LabcycleError("vLLM returned no output", where=str(self.model_dir), transient=True)
        outputs = sorted(final.outputs, key=lambda o: o.index)
        completion = Completion(
            texts=[o.text for o in outputs],
            prompt_tokens=len(final.prompt_token_ids or []),
            completion_tokens=sum(len(o.token_ids) for o in outputs),
            finish_reasons=[str(o.finish_reason or "") for o in outputs],
        )
        self.stats.prompt_tokens += completion.prompt_tokens
        self.stats.completion_tokens += completion.completion_tokens
        return completion
