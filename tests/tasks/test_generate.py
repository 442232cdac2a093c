"""Generation against a real vLLM server on a tiny random model: every shipped pipeline end to end, garbage
tolerance, resuming after a server crash, no requests for a complete leaf, one concurrency cap across leaves.

The teacher's text is noise, so the tests check behaviour (counts, files, schemas, resume semantics),
never content.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from labcycle.errors import LabcycleError
from labcycle.leaves import seed_examples
from labcycle.tasks.generate import blocks, runner, stage
from labcycle.tasks.generate.blocks import UnitContext
from labcycle.tasks.generate.runner import GenerationSettings
from labcycle.tasks.generate.spec import BlockSpec, load_spec, shipped_spec_path
from labcycle.teacher.openai_client import OpenAITeacher, metrics
from tests import genhelp

pytestmark = pytest.mark.slow

SMALL = GenerationSettings(samples_per_seed=1, max_rounds=1, max_units_per_round=2, max_tokens_cap=64)


def generate(server, leaf, spec, settings, work, **teacher_kw):
    """runner.generate_leaf with a fresh OpenAITeacher; returns (result, teacher stats)."""
    teacher = OpenAITeacher(server.base_url, server.model, **teacher_kw)

    async def go():
        try:
            return await runner.generate_leaf(leaf, spec, teacher, settings, work)
        finally:
            await teacher.aclose()

    try:
        return asyncio.run(go()), teacher.stats
    except BaseException as exc:
        exc.teacher_stats = teacher.stats  # type: ignore[attr-defined]
        raise


@pytest.mark.parametrize("variant", ["shipped", "permissive"])
@pytest.mark.parametrize("kind", genhelp.KINDS)
def test_every_pipeline_end_to_end(vllm_server, tmp_path, kind, variant):
    spec = load_spec(shipped_spec_path(kind)) if variant == "shipped" else genhelp.permissive_spec(kind, tmp_path / "specs")
    leaf = genhelp.leaf(kind, f"e2e-{variant}")
    progress: list[tuple[str, int, int]] = []
    teacher = OpenAITeacher(vllm_server.base_url, vllm_server.model)

    async def go():
        try:
            return await runner.generate_leaf(leaf, spec, teacher, SMALL, tmp_path / "work", lambda *a: progress.append(a))
        finally:
            await teacher.aclose()

    result = asyncio.run(go())
    report = genhelp.check_work_folder(tmp_path / "work", spec, result)
    n_seeds = len(leaf.qna["seed_examples"])
    assert result.target == n_seeds and result.rounds == 1 and result.resumed_units == 0
    assert 1 <= result.units <= SMALL.max_units_per_round
    assert result.requests == teacher.stats.requests > 0  # every request is accounted to a block
    assert result.prompt_tokens == teacher.stats.prompt_tokens and teacher.stats.failures == 0
    assert len(progress) == result.units and progress[-1][1:] == (result.kept, result.target)
    stats = report["blocks"]
    judges = [b.name for b in spec.blocks if b.type in blocks.TEACHER_TYPES - {"generate"}]
    assert stats[judges[0]]["requests"] > 0  # generated rows reached a judge
    # Structured outputs make a random teacher's judgements readable: judges drop rows on the verdict.
    assert sum(stats[j]["parse_failures"] for j in judges) < sum(stats[j]["requests"] for j in judges)
    if variant == "shipped":
        assert {"pii", "safety"} <= set(stats) and ("faithfulness" in stats or "grounding" in stats) == (kind != "freeform_skill")
    if variant == "permissive":
        assert result.kept > 0  # rows got through every judge into samples.jsonl
        for record in (json.loads(line) for line in genhelp.lines(tmp_path / "work" / runner.SAMPLES)):
            assert set(record["metadata"]["judge_scores"]) == set(judges)
            if kind == "knowledge":
                chunk = record["metadata"]["source_chunk"]
                assert any(c["source"] == chunk["source"] and c["start"] == chunk["start"] for c in leaf.chunks)


def test_unconstrained_garbage_is_counted_not_fatal(vllm_server, tmp_path):
    """structured_mode="none": the random teacher's raw text reaches the parsers; the run still completes."""
    spec = load_spec(shipped_spec_path("grounded_skill"))
    result, stats = generate(vllm_server, genhelp.leaf("grounded_skill", "none"), spec, SMALL, tmp_path / "work",
                             structured_mode="none")
    report = genhelp.check_work_folder(tmp_path / "work", spec, result)
    assert stats.failures == 0 and result.requests == stats.requests > 0
    assert sum(b["parse_failures"] for b in report["blocks"].values()) > 0
    assert report["below_target"] and report["advice"]  # says which block removed the most
    unparsable = [e for b in report["blocks"].values() for e in b["examples"] if e["reason"] == "unparsable output"]
    assert unparsable and all("output" in e for e in unparsable)


def test_resume_after_the_server_dies(vllm_server, tmp_path):
    """Kill the server (SIGKILL) once a round is journaled and the next has begun: the run fails as
    transient; after a restart a fresh run resumes, never asking again for a journaled unit."""
    spec = genhelp.permissive_spec("freeform_skill", tmp_path / "specs")
    leaf = genhelp.leaf("freeform_skill", "resume")
    settings = GenerationSettings(samples_per_seed=20, max_rounds=3, max_units_per_round=2, max_tokens_cap=64)
    work = tmp_path / "work"
    journal = work / runner.JOURNAL
    teacher = OpenAITeacher(vllm_server.base_url, vllm_server.model, max_concurrency=4, max_retries=1, backoff_base_s=0.05)
    killed = threading.Event()
    stop = threading.Event()

    def killer():
        # Wait for round 0 to be journaled, then for the first request of round 1, then crash the server.
        while not stop.is_set() and not (journal.exists() and len(journal.read_bytes().splitlines()) >= 2):
            time.sleep(0.005)
        seen = teacher.stats.requests
        while not stop.is_set() and teacher.stats.requests == seen:
            time.sleep(0.002)
        if not stop.is_set():
            vllm_server.kill()
            killed.set()

    async def go():
        try:
            return await runner.generate_leaf(leaf, spec, teacher, settings, work)
        finally:
            await teacher.aclose()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        with pytest.raises(LabcycleError) as info:
            asyncio.run(go())
    finally:
        stop.set()
        thread.join()
        if not vllm_server.alive():
            vllm_server.restart()
    assert killed.is_set()
    assert info.value.transient and teacher.stats.failures >= 1
    assert not (work / runner.YIELD).exists() and not (work / runner.SAMPLES).exists()  # not complete

    before_bytes = journal.read_bytes()
    before = runner.read_journal(journal)
    assert journal.read_bytes() == before_bytes  # whole lines only
    done_before = {e["unit"] for e in before}
    assert {"r0-u0", "r0-u1"} <= done_before and len(done_before) < 6
    records_before = {e["unit"]: [json.dumps(r, ensure_ascii=False) for r in e["records"]] for e in before}
    assert sum(map(len, records_before.values())) >= 1
    requests_before = sum(s["requests"] for e in before for s in e["stats"].values())

    result, stats = generate(vllm_server, leaf, spec, settings, work, max_concurrency=4)
    report = genhelp.check_work_folder(work, spec, result)
    assert result.resumed_units == len(before) >= 2
    assert result.rounds == 3 and result.units == 6  # nothing lost, nothing added
    # Only the units missing from the journal were asked for again.
    assert stats.requests == report["requests"] - requests_before > 0
    assert journal.read_bytes().startswith(before_bytes)  # journaled units were not rewritten
    final = genhelp.lines(work / runner.SAMPLES)
    assert len(set(json.loads(line)["id"] for line in final)) == len(final)
    for unit, lines in records_before.items():
        mine = [line for line in final if json.loads(line)["metadata"]["unit"] == unit]
        assert mine == lines  # byte-identical to what the journal held before the restart


def test_complete_leaf_sends_no_requests(vllm_server):
    """The stage task on a leaf whose work folder is complete reads it back; the server sees nothing."""
    spec = load_spec(shipped_spec_path("freeform_skill"))
    leaf = genhelp.leaf("freeform_skill", "complete")
    folder = stage.work_dir(stage.cache_key(leaf.hash, spec.digest, vllm_server.model, SMALL))

    def call():
        teacher = OpenAITeacher(vllm_server.base_url, vllm_server.model)

        async def go():
            try:
                return await stage.generate_leaf_task.fn(leaf, spec, teacher, SMALL)
            finally:
                await teacher.aclose()

        return asyncio.run(go()), teacher.stats

    first, stats = call()
    assert stats.requests > 0 and first["requests"] == stats.requests and first["work_dir"] == str(folder)
    genhelp.check_work_folder(folder, spec)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}

    before = metrics(vllm_server.base_url)
    second, stats = call()
    after = metrics(vllm_server.base_url)
    assert stats.requests == 0 and second == first == runner.read_complete(folder)
    for counter in ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        assert after[counter] == before[counter], counter
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files


def test_one_concurrency_cap_across_leaves(vllm_server, tmp_path):
    """Two leaves generated at once share one teacher: never more than its cap in flight, at the client or
    at the server. (Pipelines whose requests all have n=1: vLLM counts each of a request's n samples as
    a request of its own.)"""
    cap = 3
    specs = {kind: load_spec(shipped_spec_path(kind)) for kind in ("knowledge", "freeform_skill")}
    leaves = {kind: genhelp.leaf(kind, "cap") for kind in specs}
    teacher = OpenAITeacher(vllm_server.base_url, vllm_server.model, max_concurrency=cap)

    async def go():
        try:
            return await asyncio.gather(*(runner.generate_leaf(leaves[k], specs[k], teacher, SMALL, tmp_path / k) for k in specs))
        finally:
            await teacher.aclose()

    with genhelp.server_load(vllm_server.base_url) as seen:
        results = asyncio.run(go())
    for kind, result in zip(specs, results):
        genhelp.check_work_folder(tmp_path / kind, specs[kind], result)
    assert teacher.stats.requests == sum(r.requests for r in results)
    assert teacher.stats.max_in_flight == cap  # the leaves together filled the cap, never more
    assert teacher.stats.in_flight == 0
    assert seen and max(seen) <= cap


@pytest.mark.parametrize("kind", genhelp.KINDS)
def test_grounding_and_safety_judges_on_the_server(vllm_server, kind):
    """Every grounding and safety judge of the shipped pipelines asks the real server with its structured
    output and reads each answer: whatever the random teacher decides, nothing is unreadable, and every row
    is either kept with its verdict in the judge scores or dropped with the judge's reason."""
    spec = load_spec(shipped_spec_path(kind))
    leaf = genhelp.leaf(kind, "filters")
    source = "chunk" if kind == "knowledge" else "context"
    rows = [{source: ex["context"] or "A context.", "question": ex["question"], "answer": ex["answer"]}
            for ex in seed_examples(leaf)[:3]]
    teacher = OpenAITeacher(vllm_server.base_url, vllm_server.model)
    ctx = UnitContext(teacher=teacher, render=runner.make_renderer(spec), leaf=runner.leaf_variables(leaf), examples=[],
                      seed=11, seed_texts=[], dedup={}, stats={})
    # Room for the longest reason the schema allows (300 characters) and the decision after it.
    judges = [blocks.build(BlockSpec(b.name, b.type, {**b.params, "sampling": {"max_tokens": 512}}))
              for b in spec.blocks if b.type in ("grounding_judge", "safety_judge")]
    assert [j.name for j in judges] == (["safety"] if kind == "freeform_skill" else
                                        ["faithfulness" if kind == "knowledge" else "grounding", "safety"])

    async def go():
        try:
            return {j.name: await j.run(rows, ctx) for j in judges}
        finally:
            await teacher.aclose()

    kept = asyncio.run(go())
    assert teacher.stats.requests == len(rows) * len(judges) and teacher.stats.failures == 0
    for judge in judges:
        s = ctx.stats[judge.name]
        assert (s.rows_in, s.requests, s.parse_failures) == (len(rows), len(rows), 0)
        assert s.rows_out + s.dropped == len(rows) and s.prompt_tokens > 0 and s.completion_tokens > 0
        keep, prefix = ("SAFE", "unsafe (") if judge.name == "safety" else ("YES", "not supported by its source: ")
        assert all(r["_scores"][judge.name] == keep for r in kept[judge.name])
        assert all(e["reason"].startswith(prefix) for e in s.examples)
