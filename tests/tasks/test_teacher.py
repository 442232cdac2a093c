"""Teachers against a real vLLM server (and vLLM in-process) on a tiny random model, plus a loopback stub
for faults vLLM cannot be made to produce (429 with Retry-After, 503, 401 echoing the key)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labcycle.errors import LabcycleError
from labcycle.teacher import Sampling, Structured, TeacherStats, make_teacher, parse_choice, parse_json
from labcycle.teacher.openai_client import OpenAITeacher, list_models, metrics, parse_prometheus, retry_after_s
from tests import genhelp

SECRET = "sk-labcycle-test-5f2b9c1e7d"
MESSAGES = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------------------------------
# Parsers and small pieces (fast)


def test_parse_choice_examples():
    choices = ("YES", "NO", "MAYBE")
    assert parse_choice("YES", choices) == "YES"
    assert parse_choice("  no \n", choices) == "NO"
    assert parse_choice('"maybe".', choices) == "MAYBE"
    assert parse_choice("I think the answer is no, not yes.", choices) == "NO"
    assert parse_choice("nothing here; yesterday is not a choice", choices) is None
    assert parse_choice("score: 10", ("1", "10")) == "10"
    assert parse_choice("", choices) is None
    assert parse_choice("yes", ()) is None


def test_parse_json_examples():
    assert parse_json('{"a": 1}') == {"a": 1}
    assert parse_json('{"a": "line\nbreak\x07"}') == {"a": "line\nbreak\x07"}  # raw control chars: strict=False
    assert parse_json('Sure! ```json\n{"a": [1, {"b": "}"}]}\n``` done') == {"a": [1, {"b": "}"}]}
    assert parse_json("prefix [1, 2, 3] suffix {") == [1, 2, 3]
    assert parse_json('{broken} then {"ok": true}') == {"ok": True}
    assert parse_json("3") == 3
    assert parse_json("no json here") is None
    assert parse_json('{"unclosed": [1, 2') is None
    assert parse_json("[" * 100_000) is None
    assert parse_json(None) is None  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list('{}[]",:\\ \n\x00abcYESno1\u00e9') + ["yes", "NO", '{"a": ', "[1, "]),
                max_size=80).map("".join),
       st.lists(st.text(max_size=6), max_size=4))
def test_parsers_never_raise(text, choices):
    parse_json(text)
    got = parse_choice(text, choices)
    assert got is None or got in choices


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_parsers_never_raise_on_bytes_garbage(data):
    text = data.decode("latin-1")
    parse_json(text)
    parse_choice(text, ("a", "b"))


def test_dataclasses_to_json_and_structured_validation():
    assert Sampling(n=2, seed=7).to_json() == {"temperature": 0.7, "top_p": 1.0, "max_tokens": 512, "n": 2,
                                               "seed": 7, "ignore_eos": False}
    assert TeacherStats(requests=3).to_json()["requests"] == 3
    assert Structured(choice=["a", "b"]).choice == ("a", "b")
    with pytest.raises(ValueError):
        Structured()
    with pytest.raises(ValueError):
        Structured(choice=("a",), json_schema={})


def test_retry_after_values():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "1500"}) == 1.5
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= retry_after_s({"retry-after": date}, now=now) <= 31
    assert retry_after_s({"retry-after": "garbage"}) is None
    assert retry_after_s({}) is None


def test_parse_prometheus_sums_labels():
    text = (
        "# HELP vllm:request_success_total x\n# TYPE vllm:request_success_total counter\n"
        'vllm:request_success_total{finished_reason="stop",model_name="m"} 3.0\n'
        'vllm:request_success_total{finished_reason="length",model_name="m"} 4.0\n'
        'vllm:num_requests_running{model_name="m {weird}"} 2.0\n'
        "process_open_fds 12\n"
    )
    assert parse_prometheus(text) == {"vllm:request_success_total": 7.0, "vllm:num_requests_running": 2.0,
                                      "process_open_fds": 12.0}


def test_make_teacher_dispatch(tmp_path):
    from labcycle.teacher.engine import EngineTeacher

    t = make_teacher("http://127.0.0.1:9/v1", "m", max_concurrency=3, structured_mode="none", api_key=SECRET)
    assert isinstance(t, OpenAITeacher) and t.max_concurrency == 3 and not t.supports_structured
    assert SECRET not in repr(t)
    e = make_teacher(None, str(tmp_path), max_concurrency=5)
    assert isinstance(e, EngineTeacher) and e.max_concurrency == 5
    with pytest.raises(LabcycleError):
        make_teacher("http://x/v1", "m", max_concurrency=1, structured_mode="guided")


def test_request_body_per_structured_mode():
    schema = {"type": "object"}
    vllm_body = OpenAITeacher("http://x/v1", "m")._request(MESSAGES, Sampling(seed=1, ignore_eos=True),
                                                          Structured(choice=("a", "b")))
    assert vllm_body["extra_body"] == {"ignore_eos": True, "structured_outputs": {"choice": ["a", "b"]}}
    assert vllm_body["seed"] == 1
    body = OpenAITeacher("http://x/v1", "m")._request(MESSAGES, Sampling(), Structured(json_schema=schema))
    assert body["extra_body"]["structured_outputs"]["json"] == schema
    rf = OpenAITeacher("http://x/v1", "m", structured_mode="response_format")._request(
        MESSAGES, Sampling(ignore_eos=True), Structured(json_schema=schema))
    assert rf["response_format"]["type"] == "json_schema" and "extra_body" not in rf
    none = OpenAITeacher("http://x/v1", "m", structured_mode="none")._request(MESSAGES, Sampling(), Structured(json_schema=schema))
    assert "response_format" not in none and "extra_body" not in none


# --------------------------------------------------------------------------------------------------
# A loopback stub for faults (fast)


def _completion_body(content: str = "ok") -> dict:
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


class Stub:
    """Answers POST /v1/chat/completions from a script of (status, headers, body) in order; the last repeats."""

    def __init__(self, script):
        self.script = list(script)
        self.calls: list[tuple[float, dict]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                stub.calls.append((time.monotonic(), headers))
                status, reply_headers, body = stub.script[min(len(stub.calls), len(stub.script)) - 1]
                if callable(body):
                    body = body(headers)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in reply_headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_honour_retry_after_then_succeed():
    err = {"error": {"message": "slow down", "type": "rate_limit"}}
    script = [(429, {"Retry-After": "1"}, err), (503, {}, {"error": {"message": "overloaded"}}), (200, {}, _completion_body("hello"))]
    with Stub(script) as stub:
        async def go():
            t = OpenAITeacher(stub.base_url, "stub", max_retries=3, backoff_base_s=0.05)
            try:
                return await t.chat(MESSAGES, Sampling(max_tokens=4)), t.stats
            finally:
                await t.aclose()

        completion, stats = run(go())
    assert completion.texts == ["hello"] and completion.prompt_tokens == 5 and completion.completion_tokens == 1
    assert len(stub.calls) == 3
    assert stats.requests == 1 and stats.retries == 2 and stats.failures == 0
    assert stub.calls[1][0] - stub.calls[0][0] >= 0.95  # Retry-After: 1 was honoured
    assert stub.calls[2][0] - stub.calls[1][0] < 1.0  # the 503 had none: a short jittered backoff


def test_gives_up_as_transient_after_max_retries():
    with Stub([(503, {}, {"error": {"message": "down"}})]) as stub:
        async def go():
            t = OpenAITeacher(stub.base_url, "stub", max_retries=2, backoff_base_s=0.01)
            try:
                with pytest.raises(LabcycleError) as info:
                    await t.chat(MESSAGES, Sampling(max_tokens=4))
                return info.value, t.stats
            finally:
                await t.aclose()

        err, stats = run(go())
    assert err.transient and "503" in str(err) and "3 attempts" in str(err)
    assert len(stub.calls) == 3 and stats.retries == 2 and stats.failures == 1


def test_connection_refused_is_transient():
    from labcycle.teacher.server import free_port

    async def go():
        t = OpenAITeacher(f"http://127.0.0.1:{free_port()}/v1", "m", api_key=SECRET, max_retries=1, backoff_base_s=0.01)
        try:
            with pytest.raises(LabcycleError) as info:
                await t.chat(MESSAGES, Sampling(max_tokens=4))
            return info.value, t.stats
        finally:
            await t.aclose()

    err, stats = run(go())
    assert err.transient and stats.retries == 1 and stats.failures == 1
    assert SECRET not in str(err)


def test_one_teacher_across_event_loops():
    with Stub([(200, {}, _completion_body("again"))]) as stub:
        t = OpenAITeacher(stub.base_url, "stub", max_concurrency=2)
        assert run(t.chat(MESSAGES, Sampling())).texts == ["again"]
        assert run(t.chat(MESSAGES, Sampling())).texts == ["again"]  # a second asyncio.run: fresh client and semaphore
        run(t.aclose())
    assert t.stats.requests == 2 and t.stats.prompt_tokens == 10


def test_api_key_resolution_and_never_in_messages(monkeypatch):
    def echo_key(headers):  # a server that (unwisely) echoes the key it was given
        return {"error": {"message": f"Incorrect API key provided: {headers.get('authorization', '')}"}}

    monkeypatch.setenv("LABCYCLE_TEACHER_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-should-not-be-used")
    with Stub([(401, {}, echo_key)]) as stub:
        async def go():
            t = OpenAITeacher(stub.base_url, "stub", max_retries=3)
            try:
                with pytest.raises(LabcycleError) as info:
                    await t.chat(MESSAGES, Sampling(max_tokens=4))
                return info.value, t
            finally:
                await t.aclose()

        err, teacher = run(go())
    assert stub.calls[0][1]["authorization"] == f"Bearer {SECRET}"
    assert len(stub.calls) == 1 and not err.transient  # 401 is not retried
    assert "401" in str(err) and "API key" in str(err)
    for text in (str(err), repr(err), err.message, repr(teacher), json.dumps(teacher.stats.to_json())):
        assert SECRET not in text


# vLLM's own words (vllm/renderers/params.py, vllm/v1/engine/input_processor.py) for a prompt that does not fit.
VLLM_TOO_LONG = [
    "This model's maximum context length is 512 tokens. However, your prompt contains 1873 input tokens, which "
    "exceeds this limit even without any output tokens. Please reduce the length of the input prompt.",
    "The decoder prompt (length 1873) is longer than the maximum model length of 512. Make sure that "
    "`max_model_len` is no smaller than the number of text tokens.",
]


@pytest.mark.parametrize("message", VLLM_TOO_LONG)
def test_prompt_longer_than_the_context_gets_context_advice(tmp_path, message):
    from labcycle.tasks.generate import runner
    from labcycle.teacher.base import PromptTooLong

    body = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
    with Stub([(400, {}, body)]) as stub:
        async def go():
            t = OpenAITeacher(stub.base_url, "stub", max_retries=3)
            try:
                with pytest.raises(PromptTooLong):
                    await t.chat(MESSAGES, Sampling(max_tokens=4))
                settings = runner.GenerationSettings(samples_per_seed=1, max_rounds=2, max_units_per_round=2)
                return await runner.generate_leaf(genhelp.leaf("knowledge", f"too-long-{len(message)}"),
                                                  genhelp.permissive_spec("knowledge", tmp_path / "specs"), t,
                                                  settings, tmp_path / "work")
            finally:
                await t.aclose()

        result = run(go())
    assert result.kept == 0 and len(stub.calls) == 1 + result.units  # a 400 is never retried
    advice = json.loads((tmp_path / "work" / "yield.json").read_text())["advice"]
    assert "--max-model-len" in advice and "chunking.max_words" in advice
    assert "max_rounds" not in advice and "seeds" not in advice


# --------------------------------------------------------------------------------------------------
# The real vLLM server (one per session)


@pytest.mark.slow
def test_chat_n3_counts_tokens_and_server_metrics(vllm_server):
    before = metrics(vllm_server.base_url)

    async def go():
        t = OpenAITeacher(vllm_server.base_url, vllm_server.model)
        try:
            # The base model first; adapters other tests loaded into this shared server follow it.
            assert (await list_models(vllm_server.base_url))[0] == vllm_server.model
            return await t.chat(MESSAGES, Sampling(n=3, max_tokens=12, seed=1)), t.stats
        finally:
            await t.aclose()

    c, stats = run(go())
    assert len(c.texts) == 3 and len(c.finish_reasons) == 3
    assert c.prompt_tokens > 0 and 3 <= c.completion_tokens <= 36
    assert stats.requests == 1 and stats.completion_tokens == c.completion_tokens
    after = metrics(vllm_server.base_url)
    assert after["vllm:request_success_total"] - before.get("vllm:request_success_total", 0) == 3  # n=3: 3 sequences
    assert after["vllm:generation_tokens_total"] - before.get("vllm:generation_tokens_total", 0) == c.completion_tokens
    assert "vllm:num_requests_running" in after


@pytest.mark.slow
def test_choice_is_always_one_of_the_choices(vllm_server):
    choices = ("yes", "no", "maybe")

    async def go():
        t = OpenAITeacher(vllm_server.base_url, vllm_server.model)
        try:
            return await asyncio.gather(*[
                t.chat([{"role": "user", "content": f"Question {i}?"}], Sampling(n=2, max_tokens=8, temperature=1.0),
                       Structured(choice=choices))
                for i in range(8)
            ])
        finally:
            await t.aclose()

    texts = [text for c in run(go()) for text in c.texts]
    assert len(texts) == 16 and set(texts) <= set(choices)
    assert all(parse_choice(t, choices) == t for t in texts)


@pytest.mark.slow
def test_json_schema_output_parses_and_validates(vllm_server):
    schema = {"type": "object",
              "properties": {"verdict": {"type": "string", "enum": ["YES", "NO"]},
                             "score": {"type": "integer", "minimum": 0, "maximum": 5},
                             "reason": {"type": "string", "maxLength": 24}},
              "required": ["verdict", "score", "reason"], "additionalProperties": False}

    async def go():
        t = OpenAITeacher(vllm_server.base_url, vllm_server.model)
        try:
            return await asyncio.gather(*[
                t.chat([{"role": "user", "content": f"Judge answer {i} as JSON."}], Sampling(max_tokens=200, temperature=1.0),
                       Structured(json_schema=schema))
                for i in range(5)
            ])
        finally:
            await t.aclose()

    for c in run(go()):
        assert c.finish_reasons == ["stop"], c.texts
        obj = parse_json(c.texts[0])
        assert obj is not None, c.texts[0]
        jsonschema.validate(obj, schema)


@pytest.mark.slow
def test_response_format_mode_against_vllm(vllm_server):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}

    async def go():
        t = OpenAITeacher(vllm_server.base_url, vllm_server.model, structured_mode="response_format")
        try:
            return await asyncio.gather(
                t.chat(MESSAGES, Sampling(n=3, max_tokens=40, temperature=1.0), Structured(choice=("left", "right"))),
                t.chat(MESSAGES, Sampling(max_tokens=40, temperature=1.0), Structured(json_schema=schema)))
        finally:
            await t.aclose()

    chose, js = run(go())
    assert set(chose.texts) <= {"left", "right"}  # {"answer": ...} unwrapped
    jsonschema.validate(parse_json(js.texts[0]), schema)


@pytest.mark.slow
def test_a_prompt_longer_than_the_servers_context_is_prompt_too_long(vllm_server):
    from labcycle.teacher.base import PromptTooLong

    async def go():
        t = OpenAITeacher(vllm_server.base_url, vllm_server.model, max_retries=2)
        try:
            with pytest.raises(PromptTooLong) as info:  # 4096 tokens of context; this is far more
                await t.chat([{"role": "user", "content": "risk register " * 6000}], Sampling(max_tokens=8))
            return info.value, t.stats
        finally:
            await t.aclose()

    err, stats = run(go())
    assert stats.retries == 0 and "prompt too long" in str(err)


@pytest.mark.slow
def test_concurrency_never_exceeds_the_cap(vllm_server):
    before = metrics(vllm_server.base_url)["vllm:request_success_total"]

    async def go():
        t = OpenAITeacher(vllm_server.base_url, vllm_server.model, max_concurrency=4)
        try:
            results = await asyncio.gather(*[
                # 128 tokens each: long enough a run that the /metrics sampler catches the server at work
                t.chat([{"role": "user", "content": f"Write about topic {i}."}], Sampling(max_tokens=128, ignore_eos=True))
                for i in range(40)
            ])
            return results, t.stats
        finally:
            await t.aclose()

    with genhelp.server_load(vllm_server.base_url) as seen:
        results, stats = run(go())
    assert len(results) == 40 and all(c.completion_tokens == 128 for c in results)  # ignore_eos: always max_tokens
    assert stats.requests == 40 and stats.in_flight == 0
    assert stats.max_in_flight == 4  # 40 calls queued at once fill every slot, never more
    # The server's own gauges, sampled: never above the cap. (Whether a sample catches it working depends on
    # when vLLM refreshes them; a busy CI machine once saw 0 throughout, so that is not asserted.)
    assert seen and max(seen) <= 4, max(seen)
    assert metrics(vllm_server.base_url)["vllm:request_success_total"] - before == 40


@pytest.mark.slow
def test_unknown_model_is_a_clear_error_not_retried(vllm_server):
    async def go():
        t = OpenAITeacher(vllm_server.base_url, "no-such-model", api_key=SECRET, max_retries=5)
        try:
            with pytest.raises(LabcycleError) as info:
                await t.chat(MESSAGES, Sampling(max_tokens=4))
            return info.value, t.stats
        finally:
            await t.aclose()

    err, stats = run(go())
    msg = str(err)
    assert "no-such-model" in msg and "404" in msg and vllm_server.model in msg  # names what the endpoint serves
    assert "\n" not in msg and not err.transient
    assert stats.requests == 1 and stats.retries == 0 and stats.failures == 1
    assert SECRET not in msg and SECRET not in repr(err)


@pytest.mark.slow
def test_server_kill_and_restart(vllm_server):
    """A crash (SIGKILL) makes calls fail as transient; restart() serves again at the same address.
    Runs after the other server tests: it resets the server's metrics."""
    url = vllm_server.base_url
    watchdog = vllm_server.watchdog  # labcycle.reaper: stops the server's process group if we are killed
    assert watchdog is not None and watchdog.poll() is None
    vllm_server.kill()
    assert not vllm_server.alive() and not vllm_server.healthy()
    assert watchdog.poll() == 0 and vllm_server.watchdog is None  # it ended with the server it guarded

    async def call(retries):
        t = OpenAITeacher(url, vllm_server.model, max_retries=retries, backoff_base_s=0.01)
        try:
            return await t.chat(MESSAGES, Sampling(max_tokens=4))
        finally:
            await t.aclose()

    with pytest.raises(LabcycleError) as info:
        run(call(1))
    assert info.value.transient
    vllm_server.restart()
    assert vllm_server.base_url == url and vllm_server.alive()
    assert vllm_server.watchdog is not None and vllm_server.watchdog.poll() is None  # a new one for the new server
    assert len(run(call(0)).texts) == 1


# --------------------------------------------------------------------------------------------------
# vLLM in-process (one engine start)


@pytest.mark.slow
def test_engine_teacher_in_process(tiny_model, tmp_path, capfd, monkeypatch, request):
    from labcycle.teacher.engine import EngineTeacher

    monkeypatch.delenv("LABCYCLE_VERBOSE", raising=False)
    import logging

    # vLLM's suppress_logging() sets logging.disable(INFO) and, without a try/finally, leaves it set when an
    # exception passes through (an earlier test's failing engine, in this long-lived process): INFO lines are
    # then dropped everywhere. A user's process starts with logging on.
    previous = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    request.addfinalizer(lambda: logging.disable(previous))
    log = tmp_path / "teacher.log"
    capfd.readouterr()

    async def go():
        t = EngineTeacher(tiny_model, max_model_len=1024, max_concurrency=8, log_path=log)
        try:
            sampled = await t.chat(MESSAGES, Sampling(n=2, max_tokens=10, seed=3))
            chosen = await asyncio.gather(*[
                t.chat([{"role": "user", "content": f"Pick {i}"}], Sampling(max_tokens=8, temperature=1.0),
                       Structured(choice=("alpha", "beta")))
                for i in range(6)
            ])
            return sampled, chosen, t.stats
        finally:
            await t.aclose()

    sampled, chosen, stats = run(go())
    assert len(sampled.texts) == 2 and sampled.prompt_tokens > 0 and 2 <= sampled.completion_tokens <= 20
    assert all(c.texts[0] in ("alpha", "beta") for c in chosen)
    assert stats.requests == 7 and stats.failures == 0 and stats.in_flight == 0
    assert 1 < stats.max_in_flight <= 6  # the six choice calls were in the engine together
    # Quiet: vLLM's start, its engine core's lines and its shutdown are in the log file, not on the console.
    console = "".join(capfd.readouterr())
    written = log.read_text(encoding="utf-8", errors="replace")
    # The engine core's own lines, or (when this long-lived test process has vLLM's INFO logging off) its
    # checkpoint-loading progress, which it writes to the stderr it inherited.
    assert "EngineCore" in written or "checkpoint shards" in written, written[-2000:]
    assert "EngineCore" not in console and "vllm" not in console.lower(), console[-2000:]
    import logging

    assert all(getattr(h, "stream", None) is None or not getattr(h.stream, "name", "").endswith("teacher.log")
               for h in logging.getLogger("vllm").handlers)  # the console is back


def test_verbose_keeps_engine_output_on_the_console(monkeypatch, tmp_path):
    from labcycle.teacher.engine import EngineTeacher

    monkeypatch.setenv("LABCYCLE_VERBOSE", "1")
    assert EngineTeacher(tmp_path, log_path=tmp_path / "teacher.log").log_path is None
    monkeypatch.delenv("LABCYCLE_VERBOSE")
    assert EngineTeacher(tmp_path, log_path=tmp_path / "teacher.log").log_path == tmp_path / "teacher.log"


def test_the_server_starts_as_vllm_serve_does_without_a_deprecation_warning(vllm_server):
    """The current entry point (`vllm serve`), not the deprecated api_server module whose warning lands in
    every evaluation's server log."""
    from labcycle.teacher.server import serve_entry_point

    command = vllm_server.command()
    assert command[1:2 + len(serve_entry_point())] == ["-m", *serve_entry_point()]
    assert "vllm.entrypoints.openai.api_server" not in command, command
    log = vllm_server.log_path.read_text(encoding="utf-8", errors="replace")
    # vLLM's own internals may still warn (torch's reduce_op); the entry point's deprecation is gone.
    assert "openai.api_server" not in log and "use `vllm serve`" not in log.lower(), log[-3000:]
