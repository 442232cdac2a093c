"""Several replicas of one teacher model behind the one Teacher interface, with least-loaded dispatch,
health checks and failover.

    pool = TeacherPool(["http://a:8000/v1", "http://b:8000/v1"], "my-teacher", max_concurrency=32)

Each request goes to the healthy replica with the fewest of the pool's requests in flight (queued on its
cap included); ties go round robin. Every replica is an OpenAITeacher with its own cap (`max_concurrency`
is per replica), so the pool's `max_concurrency` is their sum.

Failover: a replica whose request keeps failing with connection errors, timeouts or 5xx gives up after a
short retry budget (`down_retries`, not the long backoff a lone endpoint gets), is marked down, and the
request is sent again to another healthy replica: no sample is lost, the request simply runs elsewhere.
Answers that are about the request (a prompt too long for the context, other 4xx) are never failed over,
and a busy replica (429 and the like) keeps its own retries with backoff rather than being marked down.
A down replica is probed (GET /v1/models, which must list the model) after a cooldown that doubles while
it stays down (up to `max_cooldown_s`), and takes requests again once a probe succeeds. A request that
finds every replica down waits, probing, up to `all_down_timeout_s`, then fails with one clear line that
names the endpoints (their URLs without any user:password) and why each is down. A replica that hangs
without closing its connections is noticed only when a request to it times out (`timeout_s`).

`stats` adds up the replicas' counters: `requests` counts the pool's chat calls once however many
replicas they tried, `retries` includes the failovers, and in_flight/max_in_flight are the pool's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.teacher.base import Completion, Sampling, Structured, TeacherStats, TeacherUnavailable
from labcycle.teacher.openai_client import one_line

log = logging.getLogger(__name__)


class _Replica:
    def __init__(self, teacher: Any, cooldown_s: float) -> None:
        self.teacher = teacher
        self.in_flight = 0  # the pool's requests on it, those waiting for its cap included
        self.up = True
        self.retry_at = 0.0  # monotonic time of its next probe while down
        self.cooldown_s = cooldown_s
        self.probing = False
        self.reason = ""  # why it is down

    @property
    def url(self) -> str:
        return self.teacher.base_url


class TeacherPool:
    """Replicas of one model at `endpoints` (OpenAI-compatible base URLs), as one teacher."""

    def __init__(self, endpoints: Sequence[str], model: str, api_key: str | None = None, max_concurrency: int = 32,
                 *, structured_mode: str = "vllm", timeout_s: float = 600, down_retries: int = 1,
                 cooldown_s: float = 5.0, max_cooldown_s: float = 60.0, all_down_timeout_s: float = 120.0,
                 probe_timeout_s: float = 5.0, max_failovers: int | None = None, **teacher_kwargs: Any):
        from labcycle.teacher.openai_client import OpenAITeacher

        urls = [u.strip() for u in endpoints if u and u.strip()]
        if not urls:
            raise LabcycleError("no teacher endpoint given; set generation.teacher.endpoints (or --teacher-endpoint URL[,URL...])")
        replicas = [_Replica(OpenAITeacher(u, model, api_key=api_key, max_concurrency=max_concurrency, timeout_s=timeout_s,
                                           structured_mode=structured_mode, down_retries=down_retries, **teacher_kwargs),
                             cooldown_s) for u in urls]
        shown = [r.url.rstrip("/") for r in replicas]
        repeated = sorted({u for u in shown if shown.count(u) > 1})
        if repeated:
            raise LabcycleError(f"teacher endpoint {repeated[0]} is listed twice; list each replica once in "
                                "generation.teacher.endpoints (or --teacher-endpoint)")
        self.replicas = replicas
        self.model = model
        self.max_concurrency = max_concurrency * len(replicas)
        self.structured_mode = structured_mode
        self.supports_structured = structured_mode != "none"
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.all_down_timeout_s = all_down_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.max_failovers = 2 * len(replicas) if max_failovers is None else max_failovers
        self.failovers = 0  # requests sent again to another replica
        self._own = TeacherStats()  # requests, failures, in_flight, max_in_flight of the pool's own calls
        self._next = 0  # round robin among the least loaded
        self._changed: asyncio.Event | None = None
        self._probes: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def endpoints(self) -> list[str]:
        return [r.url for r in self.replicas]

    def __repr__(self) -> str:
        return f"TeacherPool(endpoints={self.endpoints!r}, model={self.model!r}, max_concurrency={self.max_concurrency})"

    @property
    def stats(self) -> TeacherStats:
        parts = [r.teacher.stats for r in self.replicas]
        return TeacherStats(requests=self._own.requests, retries=sum(p.retries for p in parts) + self.failovers,
                            failures=self._own.failures, prompt_tokens=sum(p.prompt_tokens for p in parts),
                            completion_tokens=sum(p.completion_tokens for p in parts), in_flight=self._own.in_flight,
                            max_in_flight=self._own.max_in_flight)

    def healthy_endpoints(self) -> list[str]:
        return [r.url for r in self.replicas if r.up]

    # -- state ---------------------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new asyncio.run: the old loop's event and probe tasks are gone
            self._loop = loop
            self._changed = asyncio.Event()
            self._probes = set()
            for r in self.replicas:
                r.probing = False

    def _notify(self) -> None:
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    def _mark_down(self, replica: _Replica, exc: BaseException) -> None:
        if not replica.up:
            return
        replica.up = False
        replica.reason = one_line(getattr(exc, "message", None) or str(exc), 200)
        replica.retry_at = time.monotonic() + replica.cooldown_s
        up = len(self.healthy_endpoints())
        log.warning("teacher replica %s is down (%s); its requests go to the %d other healthy replica(s), and it is "
                    "probed again in %.0f s", replica.url, replica.reason, up, replica.cooldown_s)
        self._notify()

    def _start_due_probes(self) -> None:
        now = time.monotonic()
        for r in self.replicas:
            if not r.up and not r.probing and now >= r.retry_at:
                r.probing = True
                task = asyncio.get_running_loop().create_task(self._probe(r))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)

    async def _probe(self, replica: _Replica) -> None:
        try:
            try:
                ok, why = await asyncio.wait_for(replica.teacher.probe(), self.probe_timeout_s)
            except asyncio.TimeoutError:
                ok, why = False, f"no answer to GET /models within {self.probe_timeout_s:.0f} s"
            except Exception as exc:  # noqa: BLE001 - any failure means: still down
                ok, why = False, one_line(getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}", 200)
        finally:
            replica.probing = False
        if ok:
            replica.up, replica.reason, replica.cooldown_s = True, "", self.base_cooldown_s
            log.warning("teacher replica %s is back and takes requests again", replica.url)
        else:
            replica.reason = why or replica.reason
            replica.cooldown_s = min(self.max_cooldown_s, replica.cooldown_s * 2)
            replica.retry_at = time.monotonic() + replica.cooldown_s
        self._notify()

    def _pick(self) -> _Replica | None:
        up = [r for r in self.replicas if r.up]
        if not up:
            return None
        least = min(r.in_flight for r in up)
        n = len(self.replicas)
        for k in range(n):
            i = (self._next + k) % n
            r = self.replicas[i]
            if r.up and r.in_flight == least:
                self._next = (i + 1) % n
                return r
        return None  # unreachable

    async def _acquire(self) -> _Replica:
        deadline: float | None = None
        while True:
            self._start_due_probes()
            replica = self._pick()
            if replica is not None:
                return replica
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.all_down_timeout_s
            if now >= deadline:
                raise self._all_down_error()
            changed = self._changed
            assert changed is not None
            next_probe = min((r.retry_at for r in self.replicas if not r.up and not r.probing), default=deadline)
            try:
                await asyncio.wait_for(changed.wait(), max(0.01, min(deadline, next_probe) - now))
            except asyncio.TimeoutError:
                pass

    def _all_down_error(self) -> LabcycleError:
        why = "; ".join(f"{r.url}: {r.reason or 'down'}" for r in self.replicas)
        return LabcycleError(f"every replica of teacher {self.model!r} is down and none came back within "
                             f"{self.all_down_timeout_s:.0f} s ({why}); start the servers again, or fix "
                             "generation.teacher.endpoints / --teacher-endpoint", transient=True)

    # -- the call ------------------------------------------------------------------------------------
    async def chat(self, messages: list[dict[str, str]], sampling: Sampling,
                   structured: Structured | None = None) -> Completion:
        self._bind_loop()
        self._own.requests += 1
        self._own.enter()
        try:
            moved = 0
            while True:
                replica = await self._acquire()
                replica.in_flight += 1
                try:
                    return await replica.teacher.chat(messages, sampling, structured)
                except TeacherUnavailable as exc:
                    self._mark_down(replica, exc)
                    if moved >= self.max_failovers:
                        raise LabcycleError(f"a request to teacher {self.model!r} failed on {moved + 1} replicas in turn; "
                                            f"last: {one_line(exc.message, 200)}", transient=True) from exc
                    moved += 1
                    self.failovers += 1
                finally:
                    replica.in_flight -= 1
        except LabcycleError:
            self._own.failures += 1
            raise
        finally:
            self._own.leave()

    async def aclose(self) -> None:
        probes, self._probes = list(self._probes), set()
        for task in probes:
            task.cancel()
        if probes and self._loop is asyncio.get_running_loop():
            await asyncio.gather(*probes, return_exceptions=True)
        for r in self.replicas:
            await r.teacher.aclose()

    async def __aenter__(self) -> TeacherPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
