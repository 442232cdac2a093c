"""A teacher behind an OpenAI-compatible HTTP endpoint (a vLLM server, or any other).

Our own retry loop replaces the openai client's (its max_retries is 0): exponential backoff with full
jitter on 429, 408/409/425, 5xx, connection errors and timeouts, honouring Retry-After; other 4xx are
user mistakes and raise at once. One asyncio.Semaphore per teacher caps requests in flight.

The API key (sent as a bearer token) comes from the argument, else LABCYCLE_TEACHER_API_KEY, else
OPENAI_API_KEY, else "EMPTY" (vLLM without --api-key accepts anything). A user:password in the URL, or
in LABCYCLE_TEACHER_URL for this same URL (where the CLI puts --teacher-endpoint), is sent as HTTP basic
auth. Neither appears in logs, reprs or error messages: `base_url` is the URL without it, and every
message built from a server's answer is scrubbed of both.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import re
import time
import urllib.request
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.teacher.base import Completion, PromptTooLong, Sampling, Structured, TeacherStats, TeacherUnavailable
from labcycle.urls import basic_auth, redact, scrub, secrets_of, teacher_userinfo

log = logging.getLogger(__name__)

STRUCTURED_MODES = ("vllm", "response_format", "none")
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


def resolve_api_key(api_key: str | None) -> str:
    return api_key or os.environ.get("LABCYCLE_TEACHER_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"


def _redact(text: str, secret: str) -> str:
    if secret and secret != "EMPTY" and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after_s(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_detail(exc: Any) -> str:
    """The server's own error message from an openai APIStatusError, else its str()."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
    return getattr(exc, "message", None) or str(exc)


# vLLM, OpenAI and llama.cpp word it differently; all mention the context length or the token limit.
_CONTEXT_LENGTH = re.compile(r"context length|context window|maximum context|maximum model length|too many tokens|"
                             r"exceeds the limit", re.I)


class OpenAITeacher:
    """Chat with `model` at `base_url` (".../v1").

    structured_mode: "vllm" sends vLLM's `structured_outputs` ({"choice": [...]} or {"json": schema});
    "response_format" sends OpenAI's `response_format={"type": "json_schema", ...}` (a choice becomes
    an object {"answer": <enum>} whose answer is unwrapped back into the text); "none" sends no
    constraint and callers rely on parse_choice / parse_json.

    compact_json: with vLLM, constrained JSON gets no free whitespace between tokens
    (`disable_any_whitespace`); otherwise a weak model can fill max_tokens with blanks and never
    close the object.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_concurrency: int = 32,
                 timeout_s: float = 600, max_retries: int = 6, *, structured_mode: str = "vllm",
                 backoff_base_s: float = 0.5, backoff_max_s: float = 60.0, retry_after_max_s: float = 60.0,
                 compact_json: bool = True, down_retries: int | None = None):
        if structured_mode not in STRUCTURED_MODES:
            raise LabcycleError(f"unknown structured_mode {structured_mode!r}; use one of {', '.join(STRUCTURED_MODES)}")
        if max_concurrency < 1:
            raise LabcycleError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.base_url, userinfo = teacher_userinfo(base_url.rstrip("/"))
        self._auth = basic_auth(userinfo)
        self.model = model
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        # Retries on connection errors, timeouts and 5xx (an endpoint that looks down); 408/409/425/429 (busy)
        # get max_retries. A TeacherPool keeps this short, so that a dead replica's requests move on quickly.
        self.down_retries = max_retries if down_retries is None else down_retries
        self.structured_mode = structured_mode
        self.supports_structured = structured_mode != "none"
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.compact_json = compact_json
        self.stats = TeacherStats()
        self._api_key = resolve_api_key(api_key)
        self._secrets = [*secrets_of(userinfo), *([self._api_key] if len(self._api_key) >= 4 and self._api_key != "EMPTY" else [])]
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _hide(self, text: str) -> str:
        return scrub(text, self._secrets)

    def __repr__(self) -> str:
        return f"OpenAITeacher(base_url={self.base_url!r}, model={self.model!r}, max_concurrency={self.max_concurrency})"

    # -- plumbing ----------------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        """The client's connections and the semaphore belong to one event loop: when called from a new
        loop (e.g. a second asyncio.run), start fresh ones rather than fail."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._sem = None
            self._client = None  # the old one's connections died with their loop

    def _get_client(self) -> Any:
        if self._client is None:
            import openai

            http_client = openai.DefaultAsyncHttpxClient(auth=self._auth) if self._auth else None
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key,
                                              timeout=self.timeout_s, max_retries=0, http_client=http_client)
        return self._client

    def _semaphore(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrency)
        return self._sem

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.close()

    async def __aenter__(self) -> OpenAITeacher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt)))

    def _request(self, messages: list[dict[str, str]], sampling: Sampling,
                 structured: Structured | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "n": sampling.n,
        }
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        extra: dict[str, Any] = {}
        if sampling.ignore_eos and self.structured_mode == "vllm":
            extra["ignore_eos"] = True  # a vLLM extension; other endpoints would reject it
        if structured is not None and self.structured_mode == "vllm":
            if structured.choice is not None:
                extra["structured_outputs"] = {"choice": list(structured.choice)}
            else:
                extra["structured_outputs"] = {"json": structured.json_schema}
                if self.compact_json:
                    extra["structured_outputs"]["disable_any_whitespace"] = True
        elif structured is not None and self.structured_mode == "response_format":
            if structured.choice is not None:
                schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": list(structured.choice)}},
                          "required": ["answer"], "additionalProperties": False}
                kwargs["response_format"] = {"type": "json_schema",
                                             "json_schema": {"name": "choice", "schema": schema, "strict": True}}
            else:
                kwargs["response_format"] = {"type": "json_schema",
                                             "json_schema": {"name": "output", "schema": structured.json_schema}}
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    def _completion(self, response: Any, structured: Structured | None) -> Completion:
        choices = sorted(response.choices or [], key=lambda c: c.index)
        texts = [(c.message.content or "") if c.message is not None else "" for c in choices]
        if structured is not None and structured.choice is not None and self.structured_mode == "response_format":
            from labcycle.teacher.base import parse_json

            unwrapped = []
            for t in texts:
                obj = parse_json(t)
                unwrapped.append(obj["answer"] if isinstance(obj, dict) and isinstance(obj.get("answer"), str) else t)
            texts = unwrapped
        usage = response.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
        return Completion(texts=texts, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          finish_reasons=[str(c.finish_reason or "") for c in choices])

    async def _models_hint(self) -> str:
        try:
            names = await asyncio.wait_for(_list_models(self._get_client()), timeout=5)
        except Exception:  # noqa: BLE001 - only a hint
            return ""
        return f"; the endpoint serves: {', '.join(names[:20]) or '(nothing)'}"

    async def probe(self) -> tuple[bool, str]:
        """(True, "") when GET /models answers and lists this teacher's model, else (False, why)."""
        import openai

        self._bind_loop()
        try:
            names = await _list_models(self._get_client())
        except openai.OpenAIError as exc:
            return False, self._hide(one_line(f"GET /models failed: {type(exc).__name__}: {exc}"))
        if self.model not in names:
            return False, self._hide(one_line(f"model {self.model!r} not served (it serves: {', '.join(names[:10]) or 'nothing'})"))
        return True, ""

    # -- the call ------------------------------------------------------------------------------------
    async def chat(self, messages: list[dict[str, str]], sampling: Sampling,
                   structured: Structured | None = None) -> Completion:
        import openai

        self._bind_loop()
        client = self._get_client()
        kwargs = self._request(messages, sampling, structured)
        sem = self._semaphore()
        attempt = 0
        while True:
            wait: float | None = None
            reason = ""
            busy = False  # 408/409/425/429: the endpoint is up, only busy
            async with sem:
                if attempt == 0:
                    self.stats.requests += 1
                else:
                    self.stats.retries += 1
                self.stats.enter()
                try:
                    response = await client.chat.completions.create(**kwargs)
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    detail = self._hide(one_line(_error_detail(exc)))
                    if status in RETRYABLE_STATUS or status >= 500:
                        reason = f"HTTP {status}: {detail}"
                        busy = status in RETRYABLE_STATUS
                        wait = retry_after_s(exc.response.headers if exc.response is not None else None)
                        if wait is not None:
                            wait = min(wait, self.retry_after_max_s)
                    else:
                        self.stats.failures += 1
                        raise self._fatal(status, detail, await self._models_hint() if status == 404 else "") from exc
                except (openai.APIConnectionError, asyncio.TimeoutError) as exc:  # APITimeoutError is a subclass
                    reason = self._hide(one_line(f"{type(exc).__name__}: {exc}"))
                except openai.OpenAIError as exc:
                    self.stats.failures += 1
                    raise LabcycleError(self._hide(one_line(f"teacher {self.model!r} at {self.base_url} gave an unusable answer: {exc}"))) from exc
                else:
                    completion = self._completion(response, structured)
                    self.stats.prompt_tokens += completion.prompt_tokens
                    self.stats.completion_tokens += completion.completion_tokens
                    return completion
                finally:
                    self.stats.leave()
            # Retry outside the semaphore, so waiting never holds a slot.
            if attempt >= (self.max_retries if busy else self.down_retries):
                self.stats.failures += 1
                message = (f"teacher {self.model!r} at {self.base_url} still failing after {attempt + 1} attempts "
                           f"({reason}); check the server and try again")
                if busy:
                    raise LabcycleError(message, transient=True)
                raise TeacherUnavailable(message)
            delay = wait if wait is not None else self._backoff(attempt)
            log.info("teacher %s at %s: %s; retry %d/%d in %.2fs", self.model, self.base_url, reason, attempt + 1,
                     self.max_retries if busy else self.down_retries, delay)
            await asyncio.sleep(delay)
            attempt += 1

    def _fatal(self, status: int, detail: str, hint: str) -> LabcycleError:
        if status == 404:
            msg = f"teacher model {self.model!r} not found at {self.base_url} (HTTP 404: {detail}){hint}"
        elif status in (401, 403):
            msg = (f"teacher endpoint {self.base_url} refused the API key (HTTP {status}: {detail}); set "
                   "LABCYCLE_TEACHER_API_KEY (or OPENAI_API_KEY, or generation.teacher.api_key_secret), or "
                   "LABCYCLE_TEACHER_URL to the URL with its user:password")
        elif status == 400 and _CONTEXT_LENGTH.search(detail):
            return PromptTooLong(self._hide(f"prompt too long for teacher {self.model!r} (HTTP 400: {detail})"))
        else:
            msg = f"teacher {self.model!r} at {self.base_url} rejected the request (HTTP {status}: {detail})"
        return LabcycleError(self._hide(msg))


async def _list_models(client: Any) -> list[str]:
    page = await client.models.list()
    return [m.id for m in page.data]


async def list_models(base_url: str, api_key: str | None = None) -> list[str]:
    """Model ids served at `base_url` (".../v1")."""
    import openai

    key = resolve_api_key(api_key)
    shown, userinfo = teacher_userinfo(base_url.rstrip("/"))
    auth = basic_auth(userinfo)
    client = openai.AsyncOpenAI(base_url=shown, api_key=key, max_retries=2, timeout=30,
                                http_client=openai.DefaultAsyncHttpxClient(auth=auth) if auth else None)
    try:
        return await _list_models(client)
    except openai.OpenAIError as exc:
        message = scrub(_redact(one_line(f"cannot list models at {shown}: {exc}"), key), secrets_of(userinfo))
        raise LabcycleError(message, transient=True) from exc
    finally:
        await client.close()


def server_root(base_url: str) -> str:
    """"http://h:p/v1" -> "http://h:p"."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {metric name: value summed over all label sets}."""
    totals: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name = line[: line.index("{")]
            rest = line[line.rindex("}") + 1:].split()
        else:
            name, *rest = line.split()
        if not rest:
            continue
        try:
            value = float(rest[0])
        except ValueError:
            continue
        if value != value:  # NaN
            continue
        totals[name] = totals.get(name, 0.0) + value
    return totals


def metrics(base_url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """The vLLM server's Prometheus /metrics, summed over labels: e.g. "vllm:request_success_total",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_running"."""
    url = server_root(base_url) + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - a URL we were given
            text = resp.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise LabcycleError(f"cannot read metrics at {redact(url)}: {exc}", transient=True) from exc
    return parse_prometheus(text)
