"""The teacher interface: one async `chat` call, whatever serves the model (a vLLM server, any
OpenAI-compatible endpoint, or vLLM in-process), plus tolerant parsers for what a model writes.

Nothing heavy is imported here: the parsers and dataclasses are used by code that must stay light.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from labcycle.errors import LabcycleError

# What labcycle sets for vLLM's CPU build unless the environment already does, for the in-process engine and the
# servers it starts alike: a 1 GiB KV cache and the loopback address as the engine's host.
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1"}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    n: int = 1
    seed: int | None = None
    ignore_eos: bool = False  # for benchmarks: always generate max_tokens

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Structured:
    choice: tuple[str, ...] | None = None  # the answer must be one of these strings
    json_schema: dict | None = None  # the answer must be JSON valid under this schema

    def __post_init__(self) -> None:
        if (self.choice is None) == (self.json_schema is None):
            raise ValueError("Structured needs exactly one of choice= or json_schema=")
        if self.choice is not None:
            if isinstance(self.choice, str) or not self.choice:
                raise ValueError("Structured.choice must be a non-empty sequence of strings")
            object.__setattr__(self, "choice", tuple(self.choice))


@dataclass
class Completion:
    texts: list[str]  # one per sample (n)
    prompt_tokens: int
    completion_tokens: int
    finish_reasons: list[str]


@dataclass
class TeacherStats:
    """Cumulative counters. Updated only from the event loop's thread, so no lock is needed."""

    requests: int = 0  # chat calls that reached the backend (their retries are counted in `retries`)
    retries: int = 0
    failures: int = 0  # calls that failed after all retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@runtime_checkable
class Teacher(Protocol):
    model: str
    stats: TeacherStats
    supports_structured: bool

    async def chat(self, messages: list[dict[str, str]], sampling: Sampling,
                   structured: Structured | None = None) -> Completion: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# Tolerant parsers


def _norm(s: str) -> str:
    return s.strip().strip("\"'`*.,;:!?()[]{} \t\r\n").casefold()


def parse_choice(text: str, choices: Sequence[str]) -> str | None:
    """The choice `text` names: exact match, then case-insensitive (ignoring quotes and punctuation
    around it), then the choice found earliest in the text (as a whole word; the longer one on a tie).
    None when no choice appears. Never raises."""
    try:
        if not isinstance(text, str):
            return None
        options = [c for c in choices if isinstance(c, str) and c]
        if not options:
            return None
        stripped = text.strip()
        for c in options:
            if text == c or stripped == c:
                return c
        folded = _norm(text)
        for c in options:
            if folded == _norm(c) and folded:
                return c
        best: tuple[int, int, str] | None = None
        lowered = text.casefold()
        for c in options:
            needle = c.strip().casefold()
            if not needle:
                continue
            # Whole-word match where the choice starts/ends with a word character.
            left = r"(?<!\w)" if re.match(r"\w", needle) else ""
            right = r"(?!\w)" if re.search(r"\w$", needle) else ""
            m = re.search(left + re.escape(needle) + right, lowered)
            if m and (best is None or (m.start(), -len(needle)) < (best[0], best[1])):
                best = (m.start(), -len(needle), c)
        return best[2] if best else None
    except Exception:  # noqa: BLE001 - a parser of model output must never raise
        return None


_OPEN = {"{": "}", "[": "]"}
_MAX_STARTS = 64  # bound the work on long garbage


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the bracket that closes text[start], honouring JSON strings; None if unclosed."""
    stack = [_OPEN[text[start]]]
    in_string = False
    escaped = False
    for i in range(start + 1, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in _OPEN:
            stack.append(_OPEN[ch])
        elif ch in "}]":
            if ch != stack[-1]:
                return None
            stack.pop()
            if not stack:
                return i + 1
    return None


def parse_json(text: str) -> Any | None:
    """JSON from model output: the whole text (json.loads with strict=False, so raw control
    characters inside strings are accepted), else the first balanced {...} or [...] span that parses,
    else None. Never raises."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        if not isinstance(text, str):
            return None
        try:
            return json.loads(text, strict=False)
        except Exception:  # noqa: BLE001
            pass
        starts = 0
        for m in re.finditer(r"[\[{]", text):
            starts += 1
            if starts > _MAX_STARTS:
                break
            end = _balanced_end(text, m.start())
            if end is None:
                continue
            try:
                return json.loads(text[m.start():end], strict=False)
            except Exception:  # noqa: BLE001
                continue
        return None
    except Exception:  # noqa: BLE001
        return None


__all__ = ["Completion", "Sampling", "Structured", "Teacher", "TeacherStats", "parse_choice", "parse_json"]


class PromptTooLong(LabcycleError):
    """One request's prompt does not fit the teacher's context: that row is dropped, the run goes on."""


class TeacherUnavailable(LabcycleError):
    """An endpoint that kept failing with connection errors, timeouts or 5xx (not 429): it looks down. A
    TeacherPool sends the request to another replica; alone, it is a transient failure like any other."""

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message, where, transient=True)
