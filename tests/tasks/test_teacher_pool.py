"""TeacherPool: least-loaded dispatch over replicas of one model, failover with no request lost, health
probes, the all-down error; on loopback stubs (fast) and, once, on two real vLLM servers with one killed
mid-generation (slow)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from labcycle.errors import LabcycleError
from labcycle.teacher import Sampling, make_teacher
from labcycle.teacher.base import PromptTooLong
from labcycle.teacher.pool import TeacherPool
from labcycle.teacher.settings import TeacherConfig, teacher_config

PASSWORD = "pw-labcycle-pool-3c9e1a"


def ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"request {i}"}]


class Replica:
    """One stub replica of model "m": GET /v1/models, and POST /v1/chat/completions answering "echo: <the
    user message>" after `delay` s. kill() is a crash: requests in flight lose their connection unanswered,
    new ones are refused; start() again serves on the same port."""

    def __init__(self, delay: float = 0.0, status: int = 200, body: dict | None = None) -> None:
        self.delay, self.status, self.body = delay, status, body
        self.port: int | None = None
        self.prompts: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.dead = False
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _handler(self):  # noqa: ANN202
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})

            def do_POST(self) -> None:  # noqa: N802
                request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                prompt = request["messages"][-1]["content"]
                with stub.lock:
                    stub.prompts.append(prompt)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    end = time.monotonic() + stub.delay
                    while time.monotonic() < end and not stub.dead:
                        time.sleep(0.01)
                    if stub.dead:  # crashed mid-request: no answer, the connection just ends
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if stub.status != 200:
                        self._send(stub.status, stub.body or {"error": {"message": "stub error"}})
                        return
                    self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": f"echo: {prompt}"}}],
                                     "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def start(self) -> Replica:
        self.dead = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port or 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def kill(self) -> None:
        self.dead = True
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> Replica:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def pool_of(*replicas: Replica, **kwargs) -> TeacherPool:
    kwargs.setdefault("cooldown_s", 0.2)
    return TeacherPool([r.url for r in replicas], "m", **kwargs)


def test_requests_spread_over_replicas_and_each_keeps_its_cap():
    with Replica(delay=0.2) as a, Replica(delay=0.2) as b:
        async def go():
            pool = pool_of(a, b, max_concurrency=3)
            try:
                results = await asyncio.gather(*[pool.chat(ask(i), Sampling()) for i in range(16)])
                return results, pool.stats, pool.max_concurrency
            finally:
                await pool.aclose()

        results, stats, cap = asyncio.run(go())
    assert [c.texts for c in results] == [[f"echo: request {i}"] for i in range(16)]
    assert cap == 6 and len(a.prompts) == len(b.prompts) == 8  # least loaded, ties round robin: an even split
    assert a.max_in_flight == b.max_in_flight == 3  # each replica's own cap
    assert stats.requests == 16 and stats.failures == 0 and stats.retries == 0 and stats.in_flight == 0
    assert stats.max_in_flight == 16 and stats.prompt_tokens == 48 and stats.completion_tokens == 32


def test_the_least_loaded_replica_gets_the_request():
    with Replica(delay=0.5) as slow, Replica() as fast:
        async def go():
            pool = pool_of(slow, fast)
            try:
                busy = asyncio.ensure_future(pool.chat(ask(0), Sampling()))  # round robin: the first replica
                await asyncio.sleep(0.1)
                for i in range(1, 4):  # one at a time: the other replica has none in flight, the first has one
                    await pool.chat(ask(i), Sampling())
                await busy
                for i in range(4, 8):  # both idle again: ties alternate
                    await pool.chat(ask(i), Sampling())
            finally:
                await pool.aclose()

        asyncio.run(go())
    assert slow.prompts[0] == "request 0" and {"request 1", "request 2", "request 3"} <= set(fast.prompts)
    assert len(slow.prompts) == 3 and len(fast.prompts) == 5


def test_a_replica_that_dies_loses_no_request_and_comes_back_after_its_cooldown(caplog):
    with Replica(delay=0.3) as a, Replica(delay=0.3) as b:
        async def go():
            pool = pool_of(a, b, max_concurrency=4, cooldown_s=0.3)
            try:
                calls = [asyncio.ensure_future(pool.chat(ask(i), Sampling())) for i in range(20)]
                await asyncio.sleep(0.15)
                a.kill()  # four of its requests are in flight, six more wait for its cap
                results = await asyncio.gather(*calls)
                down = pool.healthy_endpoints()
                a.start()  # same port
                await asyncio.sleep(0.4)  # past the cooldown: the next request probes it
                for _ in range(50):
                    await pool.chat(ask(99), Sampling())
                    if a.url in pool.healthy_endpoints():
                        break
                    await asyncio.sleep(0.05)
                later = await asyncio.gather(*[pool.chat(ask(100 + i), Sampling()) for i in range(4)])
                return results, down, later, pool.stats, pool.failovers
            finally:
                await pool.aclose()

        results, down, later, stats, failovers = asyncio.run(go())
    assert [c.texts for c in results] == [[f"echo: request {i}"] for i in range(20)]  # every request answered
    assert down == [b.url]
    assert failovers >= 4 and stats.failures == 0 and stats.retries >= failovers
    assert all(f"request {i}" in b.prompts for i in range(20))  # what a lost was answered by b
    assert [c.texts for c in later] == [[f"echo: request {100 + i}"] for i in range(4)]
    assert any(p.startswith("request 10") for p in a.prompts)  # back: it takes requests again
    assert f"{a.url} is down" in caplog.text


def test_every_replica_down_is_one_clear_error_without_secrets():
    with Replica() as a, Replica() as b:
        a.kill()
        b.kill()
        urls = [a.url.replace("127.0.0.1", f"user:{PASSWORD}@127.0.0.1"), b.url]

        async def go():
            pool = TeacherPool(urls, "m", cooldown_s=0.1, all_down_timeout_s=1.0)
            try:
                started = time.monotonic()
                with pytest.raises(LabcycleError) as info:
                    await pool.chat(ask(0), Sampling())
                return info.value, time.monotonic() - started, pool.stats
            finally:
                await pool.aclose()

        err, took, stats = asyncio.run(go())
    msg = str(err)
    assert "every replica of teacher 'm' is down" in msg and a.url in msg and b.url in msg
    assert "\n" not in msg and err.transient and PASSWORD not in msg and PASSWORD not in repr(err)
    assert took < 10 and stats.failures == 1 and stats.in_flight == 0


def test_a_prompt_too_long_is_not_failed_over():
    too_long = {"object": "error", "code": 400, "message": "This model's maximum context length is 512 tokens. However, "
                "your prompt contains 900 input tokens"}
    with Replica(status=400, body=too_long) as a, Replica() as b:
        async def go():
            pool = pool_of(a, b)
            try:
                with pytest.raises(PromptTooLong):
                    await pool.chat(ask(0), Sampling())  # round robin: the first replica
                return pool.healthy_endpoints(), pool.failovers
            finally:
                await pool.aclose()

        healthy, failovers = asyncio.run(go())
    assert healthy == [a.url, b.url] and failovers == 0 and a.prompts == ["request 0"] and b.prompts == []


def test_a_replica_answering_500_is_failed_over_and_a_second_event_loop_works():
    with Replica(status=500) as a, Replica() as b:
        pool = pool_of(a, b, cooldown_s=30)

        async def go(i):
            return (await pool.chat(ask(i), Sampling())).texts

        assert asyncio.run(go(1)) == ["echo: request 1"]
        assert asyncio.run(go(2)) == ["echo: request 2"]  # a new loop: fresh clients and events
        asyncio.run(pool.aclose())
    assert a.prompts == ["request 1", "request 1"]  # one short retry, then the request moved on
    assert b.prompts == ["request 1", "request 2"] and pool.failovers == 1


def test_endpoints_in_config_and_on_the_command_line(tmp_path):
    cfg = TeacherConfig(model="m", endpoints=["http://a:1/v1", "http://b:2/v1"])
    assert cfg.urls == ["http://a:1/v1", "http://b:2/v1"]
    assert teacher_config(cfg, None, None, None).endpoint == "http://a:1/v1,http://b:2/v1"
    assert teacher_config(cfg, "http://c:3/v1", None, None).endpoint == "http://c:3/v1"  # the CLI replaces them
    assert teacher_config(TeacherConfig(model="m"), " http://a:1/v1 , http://b:2/v1", None, None).urls == cfg.urls
    with pytest.raises(LabcycleError, match="both endpoint and endpoints"):
        TeacherConfig(model="m", endpoint="http://x/v1", endpoints=["http://a:1/v1"])
    with pytest.raises(LabcycleError, match="not an http"):
        teacher_config(TeacherConfig(model="m"), "http://a:1/v1,b:2", None, None)
    with pytest.raises(LabcycleError, match="not an http") as info:
        teacher_config(TeacherConfig(model="m"), f"http://a:1/v1,u:{PASSWORD}@b:2/v1", None, None)
    assert PASSWORD not in str(info.value)
    pool = make_teacher("http://a:1/v1,http://b:2/v1", "m", max_concurrency=5, structured_mode="none")
    assert isinstance(pool, TeacherPool) and pool.max_concurrency == 10 and not pool.supports_structured
    with pytest.raises(LabcycleError, match="listed twice"):
        make_teacher(["http://a:1/v1", "http://a:1/v1/"], "m", max_concurrency=1)
    from labcycle.teacher.openai_client import OpenAITeacher

    assert isinstance(make_teacher("http://a:1/v1", "m", max_concurrency=1), OpenAITeacher)

    from labcycle.flows import config as config_module

    path = tmp_path / "labcycle.yaml"
    path.write_text("generation:\n  teacher:\n    model: m\n    endpoints: [http://a:1/v1, http://b:2/v1]\n")
    assert config_module.settings(str(path)).generation.teacher.urls == cfg.urls
    path.write_text("generation:\n  teacher:\n    model: m\n    endpoints: []\n")
    with pytest.raises(LabcycleError):
        config_module.settings(str(path))


def test_a_login_in_one_of_several_urls_is_held_apart(monkeypatch):
    from labcycle.urls import TEACHER_URL, hold_teacher_login, teacher_userinfo

    monkeypatch.delenv(TEACHER_URL, raising=False)
    bare = hold_teacher_login(f"http://u:{PASSWORD}@a:1/v1, http://b:2/v1")
    assert bare == "http://a:1/v1,http://b:2/v1" and PASSWORD not in bare
    assert teacher_userinfo("http://a:1/v1") == ("http://a:1/v1", f"u:{PASSWORD}")
    assert teacher_userinfo("http://b:2/v1") == ("http://b:2/v1", None)
    pool = make_teacher(bare, "m", max_concurrency=1)
    assert PASSWORD not in repr(pool)


# --------------------------------------------------------------------------------------------------
# Two real vLLM servers on the tiny model: one is killed mid-generation


@pytest.mark.slow
def test_a_real_replica_killed_mid_generation_loses_no_request(vllm_server, tiny_model, tmp_path):
    """The session's server and a second one on the same model; SIGKILL the second (its process group, like
    a crash) while it has requests in flight: every request still completes, on the survivor."""
    from labcycle.teacher.server import VLLMServer

    total, max_tokens = 32, 64
    with VLLMServer(tiny_model, log_path=tmp_path / "doomed.log", max_model_len=1024) as doomed:
        assert doomed.model == vllm_server.model
        killed_with: list[int] = []

        async def go():
            pool = TeacherPool([doomed.base_url, vllm_server.base_url], vllm_server.model, max_concurrency=4,
                               cooldown_s=60)
            done = 0

            async def one(i):
                nonlocal done
                c = await pool.chat([{"role": "user", "content": f"Write about topic {i}."}],
                                    Sampling(max_tokens=max_tokens, ignore_eos=True, temperature=1.0))
                done += 1
                return c

            try:
                calls = [asyncio.ensure_future(one(i)) for i in range(total)]
                victim = pool.replicas[0]
                deadline = time.monotonic() + 120
                while not (done >= 4 and victim.in_flight > 0) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert done < total, "every request finished before the kill: make them longer"
                killed_with.append(victim.in_flight)
                await asyncio.to_thread(doomed.kill)
                results = await asyncio.gather(*calls)
                return results, pool.stats, pool.failovers, pool.healthy_endpoints()
            finally:
                await pool.aclose()

        results, stats, failovers, healthy = asyncio.run(go())
        assert not doomed.alive()
    assert len(results) == total and all(len(c.texts) == 1 and c.completion_tokens == max_tokens for c in results)
    assert killed_with[0] > 0 and failovers >= 1  # requests were in flight on it, and they moved
    assert healthy == [vllm_server.base_url]
    assert stats.requests == total and stats.failures == 0 and stats.in_flight == 0
    assert stats.completion_tokens >= total * max_tokens  # what the dead one had generated is simply lost work
