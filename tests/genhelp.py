"""Shared pieces of the generation tests: leaves from the shipped example taxonomy, permissive pipeline
variants, and checks of a finished leaf's work folder."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from labcycle.leaves import LeafInput
from labcycle.schemas import validator
from labcycle.tasks.taxonomy.chunk import chunk_markdown
from labcycle.tasks.generate import blocks as block_types
from labcycle.tasks.generate import runner
from labcycle.tasks.generate.spec import PipelineSpec, load_spec, shipped_spec_path

REPO_ROOT = Path(__file__).resolve().parents[1]
TAXONOMY = REPO_ROOT / "taxonomy"
LEAVES = {
    "knowledge": "knowledge/technology/generative_ai/risks",
    "freeform_skill": "compositional_skills/writing/risk_summaries",
    "grounded_skill": "compositional_skills/extraction/risk_register",
}
KINDS = sorted(LEAVES)


def chunks(max_words: int = 150, overlap: int = 15) -> list[dict[str, Any]]:
    out = []
    for path in sorted((TAXONOMY / "documents" / "ai-risk").glob("*.md")):
        out += [c.to_json() for c in chunk_markdown(path.read_text(encoding="utf-8"), path.name, max_size=max_words, overlap=overlap)]
    return out


def leaf(kind: str, tag: str) -> LeafInput:
    """The example leaf of `kind`; `tag` makes its hash (and so its seeds and cache key) unique to a test."""
    import hashlib

    folder = LEAVES[kind]
    qna = yaml.safe_load((TAXONOMY / folder / "qna.yaml").read_text(encoding="utf-8"))
    return LeafInput(id=folder, kind=kind, hash=hashlib.sha256(f"{kind}:{tag}".encode()).hexdigest(), qna=qna,
                     chunks=chunks() if kind == "knowledge" else [])


def permissive_spec_file(kind: str, folder: Path) -> Path:
    """The shipped spec with judges that keep every judgement they can read.

    A random teacher's judgements are noise, and at temperature 0 the same noise every time, so with the
    shipped thresholds nothing may survive; this variant lets rows reach samples.jsonl whatever the noise
    (length filters take a single word), while still asking the judges (and dropping what they cannot read). The grounding and safety judges
    have a fixed verdict to keep, so they are left out here; test_generate.py runs them on the server."""
    data = yaml.safe_load(shipped_spec_path(kind).read_text(encoding="utf-8"))
    data["name"] = f"{data['name']}_permissive"
    data["blocks"] = [b for b in data["blocks"] if b["type"] not in ("grounding_judge", "safety_judge")]
    for block in data["blocks"]:
        if block["type"] == "length":  # one word of noise is still a row to carry through
            block["min_words"] = 1
        if block["type"] == "judge":
            if "score" in block:
                block["score"]["keep_at_least"] = block["score"]["min"]
            else:
                block["verdict"]["keep"] = list(block["verdict"]["choices"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}_permissive.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def permissive_spec(kind: str, folder: Path) -> PipelineSpec:
    return load_spec(permissive_spec_file(kind, folder))


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def check_work_folder(work: Path, spec: PipelineSpec, result: runner.LeafResult | None = None) -> dict[str, Any]:
    """Every structural invariant of a finished leaf; returns its yield report."""
    samples = [json.loads(line) for line in lines(work / runner.SAMPLES)]
    check = validator("record.schema.json")
    for record in samples:
        check.validate(record)
        assert record["metadata"]["pipeline_hash"] == spec.digest
    assert len({r["id"] for r in samples}) == len(samples)

    report = json.loads((work / runner.YIELD).read_text())
    blocks = report["blocks"]
    assert list(blocks) == [b.name for b in spec.blocks]  # every block, in pipeline order
    journal = runner.read_journal(work / runner.JOURNAL)
    assert len(lines(work / runner.JOURNAL)) == len(journal) == report["units"]
    assert len({e["unit"] for e in journal}) == len(journal)  # no unit twice
    # samples.jsonl is the journal's records in unit order
    ordered = sorted(journal, key=lambda e: (e["round"], int(e["unit"].split("-u")[1])))
    assert [r for e in ordered for r in e["records"]] == samples
    assert report["kept"] == len(samples)

    previous_out = report["units"]  # the first block sees one row per unit
    for block in spec.blocks:
        s = blocks[block.name]
        assert s["rows_in"] == previous_out, (block.name, s)  # a block gets exactly what the one before passed on
        if block.type != "generate":
            assert s["rows_out"] == s["rows_in"] - s["dropped"], (block.name, s)
        assert s["parse_failures"] <= s["dropped"]
        if block.type in block_types.TEACHER_TYPES:
            assert s["requests"] >= (1 if s["rows_in"] else 0)
            assert s["requests"] <= s["rows_in"]
        else:
            assert s["requests"] == s["prompt_tokens"] == s["completion_tokens"] == 0
        assert len(s["examples"]) == min(s["dropped"], 3)
        assert s["redacted"] <= s["rows_out"] and len(s["redacted_examples"]) == min(s["redacted"], 3)
        previous_out = s["rows_out"]
    assert previous_out == report["kept"]
    assert report["requests"] == sum(s["requests"] for s in blocks.values()) > 0
    assert report["prompt_tokens"] > 0 and report["completion_tokens"] > 0
    assert report["below_target"] == (report["kept"] < report["target"])
    assert (report["advice"] is None) == (not report["below_target"])
    if result is not None:
        assert result.to_json() == {k: report[k] for k in result.to_json()}
    return report


@contextmanager
def server_load(base_url: str) -> Iterator[list[float]]:
    """Samples the vLLM server's running + waiting requests every 5 ms while the block runs."""
    from labcycle.teacher.openai_client import metrics

    seen: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            m = metrics(base_url)
            seen.append(m.get("vllm:num_requests_running", 0) + m.get("vllm:num_requests_waiting", 0))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        stop.set()
        sampler.join()
