"""The runner keeps the teacher full on multi-block pipelines (fast: a test-double teacher, no server).

The teacher's request limit is the only limit on the teacher: a leaf admits more units than the teacher
has request slots, so that when one unit's chain is between requests or stuck on a long one, another
unit's request takes the free slot. What a unit asks, its id and seed, and the files a leaf ends with do
not depend on how many units ran at once.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from pathlib import Path

from labcycle.leaves import LeafInput
from labcycle.tasks.generate import runner
from labcycle.tasks.generate.runner import GenerationSettings
from labcycle.tasks.generate.spec import load_spec
from labcycle.teacher.base import Completion

STAGES = ("topic", "question", "draft", "answer")


def chain_spec(folder: Path):
    """Four generate blocks in a row, each prompt made from the previous block's output."""
    prompts = folder / "prompts"
    prompts.mkdir(parents=True)
    previous = None
    for i, field in enumerate(STAGES):
        (prompts / f"stage{i}.j2").write_text(f"stage {i}: " + (f"{{{{ {previous} }}}}" if previous else "begin") + "\n")
        previous = field
    blocks = "".join(f"  - name: make_{field}\n    type: generate\n    template: stage{i}.j2\n    parse: text\n"
                     f"    fields: [{field}]\n    sampling: {{max_tokens: 32}}\n" for i, field in enumerate(STAGES))
    path = folder / "chain.yaml"
    path.write_text("version: 1\nname: chain\nkind: freeform_skill\nprompts: prompts\nunit: seed\n"
                    "examples_per_prompt: 0\nblocks:\n" + blocks)
    return load_spec(path)


class SlowTeacher:
    """An async teacher with a request limit like OpenAITeacher's; each request sleeps a time of its own
    (from its prompt and seed, so every run asks the same and waits the same), and the teacher records the
    peak of requests in flight and of units started but not finished (a unit's first and last stages are
    told apart by the prompt)."""

    model = "slow"

    def __init__(self, max_concurrency: int):
        self.max_concurrency = max_concurrency
        self.sem = asyncio.Semaphore(max_concurrency)
        self.in_flight = self.peak = 0
        self.units = self.peak_units = 0
        self.requests = 0
        self.full_waits = 0  # requests that found every slot taken: the teacher had a backlog

    async def chat(self, messages, sampling, structured=None):
        prompt = messages[-1]["content"]
        key = zlib.crc32(f"{prompt}|{sampling.seed}".encode())
        if prompt.startswith("stage 0:"):
            self.units += 1
            self.peak_units = max(self.peak_units, self.units)
        if self.sem.locked():
            self.full_waits += 1
        async with self.sem:
            self.requests += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                await asyncio.sleep(0.001 + (key % 7) * 0.002)  # 1..13 ms
            finally:
                self.in_flight -= 1
        if prompt.startswith("stage 3:"):
            self.units -= 1
        return Completion(texts=[f"out{key % 1000}"], prompt_tokens=len(prompt), completion_tokens=5, finish_reasons=["stop"])


def leaf() -> LeafInput:
    qna = {"version": 3, "task_description": "admission", "created_by": "test",
           "seed_examples": [{"question": "What is this?", "answer": "A test."}]}
    return LeafInput(id="test/admission", kind="freeform_skill", hash="a" * 64, qna=qna)


def run(spec, teacher, work: Path, units: int) -> runner.LeafResult:
    settings = GenerationSettings(samples_per_seed=units, max_rounds=1, max_units_per_round=units)
    return asyncio.run(runner.generate_leaf(leaf(), spec, teacher, settings, work))


def test_units_are_admitted_beyond_the_request_limit(tmp_path):
    spec = chain_spec(tmp_path / "spec")
    c, units = 4, 48
    teacher = SlowTeacher(c)
    result = run(spec, teacher, tmp_path / "work", units)
    assert result.units == result.kept == units and result.requests == teacher.requests == units * len(STAGES)
    assert teacher.peak == c  # the request limit was reached and never passed
    assert teacher.peak_units > c  # more units than request slots were in progress
    assert teacher.peak_units <= runner.unit_admission(teacher) == runner.UNITS_PER_REQUEST_SLOT * c
    assert teacher.full_waits > 0 and teacher.in_flight == teacher.units == 0


def test_the_files_do_not_depend_on_the_request_limit(tmp_path):
    """The same ids, seeds and records whether 2 or 16 requests (and 16 or 128 units) ran at once."""
    spec = chain_spec(tmp_path / "spec")
    out = {}
    for c in (2, 16):
        work = tmp_path / f"work{c}"
        run(spec, SlowTeacher(c), work, 40)
        out[c] = (work / runner.SAMPLES).read_text()
        report = json.loads((work / runner.YIELD).read_text())
        assert report["units"] == report["kept"] == 40
    assert out[2] == out[16]
