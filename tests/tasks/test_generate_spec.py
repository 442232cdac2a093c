"""Pipeline specs, the journal, records and the logic of each block (fast: no server, no Prefect).

Teacher blocks are exercised here with a scripted stand-in teacher, for their parsing and counting logic
only; tests/tasks/test_generate.py runs every pipeline against a real vLLM server.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from labcycle.errors import LabcycleError
from labcycle.leaves import LeafInput
from labcycle.schemas import load as load_schema
from labcycle.schemas import validator
from labcycle.tasks.generate import blocks, runner
from labcycle.tasks.generate.blocks import BlockStats, UnitContext
from labcycle.tasks.generate.filters import NearDuplicateIndex
from labcycle.tasks.generate.spec import PIPELINES_DIR, PROMPTS_DIR, SHIPPED, BlockSpec, load_spec, shipped_spec_path
from labcycle.teacher.base import Completion, PromptTooLong

REPO_ROOT = Path(__file__).resolve().parents[2]
LEAF_HASH = "0123456789abcdef" * 4
WHERE_WITH_LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+)$")


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------------------------------
# Specs


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_every_shipped_spec_loads(kind):
    spec = load_spec(shipped_spec_path(kind))
    assert spec.kind == kind and spec.blocks
    assert spec.unit == ("chunk" if kind == "knowledge" else "seed")
    used = {b.params["template"] for b in spec.blocks if "template" in b.params}
    assert used <= set(spec.templates) and "system.j2" in spec.templates
    assert all(t.strip() for t in spec.templates.values())
    assert re.fullmatch(r"[0-9a-f]{64}", spec.digest)
    assert set(spec.template_hashes()) == set(spec.templates)
    assert [blocks.build(b).name for b in spec.blocks] == [b.name for b in spec.blocks]
    assert load_spec(shipped_spec_path(kind)).digest == spec.digest  # stable


def test_shipped_specs_are_all_the_yaml_files():
    assert {p.name for p in PIPELINES_DIR.glob("*.yaml")} == set(SHIPPED.values())


def test_schema_block_types_are_the_registry():
    schema = load_schema("pipeline.schema.json")
    assert set(schema["$defs"]["block"]["properties"]["type"]["enum"]) == set(blocks.REGISTRY)
    conditional = {c["if"]["properties"]["type"]["const"] for c in schema["$defs"]["block"]["allOf"]}
    assert conditional == set(blocks.REGISTRY)  # every type has its parameters described


def _spec_copy(tmp_path: Path, kind: str = "freeform_skill") -> tuple[Path, list[str]]:
    """A copy of a shipped spec in tmp_path, and its lines."""
    path = tmp_path / "spec.yaml"
    shutil.copyfile(shipped_spec_path(kind), path)
    return path, path.read_text().splitlines()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _error_line(path: Path) -> tuple[LabcycleError, int]:
    with pytest.raises(LabcycleError) as info:
        load_spec(path)
    err = info.value
    m = WHERE_WITH_LINE.match(err.where or "")
    assert m, f"no file:line:col in where={err.where!r}"
    assert Path(m["file"]) == path
    assert "\n" not in str(err)
    return err, int(m["line"])


def test_unknown_block_type_names_its_line(tmp_path):
    path, lines = _spec_copy(tmp_path)
    i = lines.index("    type: dedup")
    lines[i] = "    type: dedupe"
    err, line = _error_line(_write(path, lines))
    assert line == i + 1
    assert "dedupe" in err.message and "pipeline.schema.json" in err.message


def test_missing_template_names_its_line(tmp_path):
    path, lines = _spec_copy(tmp_path)
    i = lines.index("    template: judge_pair.j2")
    lines[i] = "    template: no_such_template.j2"
    err, line = _error_line(_write(path, lines))
    assert line == i + 1
    assert "no_such_template.j2" in err.message and "not found" in err.message


def test_duplicate_block_names_name_the_repeat(tmp_path):
    path, lines = _spec_copy(tmp_path)
    i = lines.index("  - name: refusal")
    lines[i] = "  - name: answer_length"
    err, line = _error_line(_write(path, lines))
    assert line == i + 1  # the second use, not the first
    assert "unique" in err.message and "answer_length" in err.message


def test_bad_yaml_names_its_line(tmp_path):
    path, lines = _spec_copy(tmp_path)
    i = lines.index("  - name: refusal")
    lines[i] = "  - name: [refusal"
    err, line = _error_line(_write(path, lines))
    assert i + 1 <= line <= i + 3


def test_bad_parameter_names_its_line(tmp_path):
    path, lines = _spec_copy(tmp_path)
    i = lines.index("    min_words: 2")
    lines[i] = "    min_words: -2"
    err, line = _error_line(_write(path, lines))
    assert line == i + 1 and "min_words" in err.message


def test_missing_prompts_folder_is_reported(tmp_path):
    path, lines = _spec_copy(tmp_path)
    i = lines.index("prompts: freeform_skills")
    lines[i] = "prompts: nowhere"
    err, line = _error_line(_write(path, lines))
    assert line == i + 1 and "nowhere" in err.message


def test_digest_covers_every_template(tmp_path):
    """Copy a spec and its prompts; editing one template's text changes the digest, nothing else does."""
    shutil.copytree(PROMPTS_DIR / "freeform_skills", tmp_path / "my_prompts")
    path, lines = _spec_copy(tmp_path)
    lines[lines.index("prompts: freeform_skills")] = "prompts: my_prompts"
    _write(path, lines)
    first = load_spec(path)
    assert first.prompts_dir == tmp_path / "my_prompts"
    assert load_spec(path).digest == first.digest

    template = tmp_path / "my_prompts" / "judge_pair.j2"
    template.write_text(template.read_text() + "Be strict.\n")
    edited = load_spec(path)
    assert edited.digest != first.digest
    changed = {k for k in first.template_hashes() if first.template_hashes()[k] != edited.template_hashes()[k]}
    assert changed == {"judge_pair.j2"}

    # A template no block uses is not part of the spec: editing it changes nothing.
    (tmp_path / "my_prompts" / "unused.j2").write_text("not used\n")
    assert load_spec(path).digest == edited.digest
    # The YAML itself counts too.
    _write(path, [*lines, "# a comment"])
    assert load_spec(path).digest != edited.digest


# --------------------------------------------------------------------------------------------------
# The journal


def _entry(unit: str, n: int = 1) -> dict:
    return {"unit": unit, "round": 0, "records": [{"id": f"{unit}-{k}"} for k in range(n)], "rows": [], "stats": {}}


def test_read_journal_drops_a_torn_last_line_and_truncates(tmp_path):
    path = tmp_path / runner.JOURNAL
    runner.append_journal(path, _entry("r0-u0"))
    runner.append_journal(path, _entry("r0-u1", 2))
    whole = path.read_bytes()
    torn = json.dumps(_entry("r0-u2", 3)).encode()[:25]  # the process died mid-write
    path.write_bytes(whole + torn)

    entries = runner.read_journal(path)
    assert [e["unit"] for e in entries] == ["r0-u0", "r0-u1"]
    assert path.read_bytes() == whole  # the torn tail is cut off
    runner.append_journal(path, _entry("r0-u2"))  # and the next append starts on a fresh line
    assert [e["unit"] for e in runner.read_journal(path)] == ["r0-u0", "r0-u1", "r0-u2"]


def test_read_journal_drops_an_unparsable_last_line(tmp_path):
    path = tmp_path / runner.JOURNAL
    runner.append_journal(path, _entry("r0-u0"))
    good = path.read_bytes()
    path.write_bytes(good + b'{"unit": "r0-u1", "rec\n')
    assert [e["unit"] for e in runner.read_journal(path)] == ["r0-u0"]
    assert path.read_bytes() == good


def test_read_journal_leaves_a_whole_journal_alone(tmp_path):
    path = tmp_path / runner.JOURNAL
    assert runner.read_journal(path) == [] and not path.exists()
    for i in range(3):
        runner.append_journal(path, _entry(f"r0-u{i}"))
    before = path.read_bytes()
    assert len(runner.read_journal(path)) == 3
    assert path.read_bytes() == before


def test_append_journal_writes_whole_lines_even_from_many_threads(tmp_path):
    path = tmp_path / runner.JOURNAL
    big = "x" * 50_000  # far beyond any pipe/buffer size: one write per line all the same

    def writer(t: int) -> None:
        for i in range(10):
            runner.append_journal(path, {**_entry(f"r{t}-u{i}"), "rows": [{"answer": big, "unicode": "é—…"}]})

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == 60
    entries = [json.loads(line) for line in lines]
    assert {e["unit"] for e in entries} == {f"r{t}-u{i}" for t in range(6) for i in range(10)}
    assert all(e["rows"][0]["answer"] == big and e["rows"][0]["unicode"] == "é—…" for e in entries)
    assert len(runner.read_journal(path)) == 60


# --------------------------------------------------------------------------------------------------
# Records


def _leaf(kind: str) -> LeafInput:
    folder = {"knowledge": "knowledge/technology/generative_ai/risks",
              "freeform_skill": "compositional_skills/writing/risk_summaries",
              "grounded_skill": "compositional_skills/extraction/risk_register"}[kind]
    qna = yaml.safe_load((REPO_ROOT / "taxonomy" / folder / "qna.yaml").read_text())
    return LeafInput(id=folder, kind=kind, hash=LEAF_HASH, qna=qna)


ROWS = {
    "knowledge": {"chunk": "Hallucination is fluent but false output.", "question": "What is hallucination?",
                  "answer": "Fluent but false output.", "_source": {"source": "risk-categories.md", "start": 10, "end": 52},
                  "_scores": {"faithfulness": "YES", "relevancy": 2, "question_quality": 1}},
    "freeform_skill": {"question": "Summarise the risk of bias in two sentences.", "answer": "Models can be biased. Check them.",
                       "_scores": {"judge_question": 1, "judge_pair": 3}},
    "grounded_skill": {"context": "Incident 7: the chatbot leaked an email address on 3 May.",
                       "question": "List the incidents in this report.", "answer": "Incident 7 (3 May): email leak.",
                       "_scores": {"judge_question": 1, "judge_pair": 2}},
}


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_to_record_validates_for_every_kind(kind):
    leaf, spec = _leaf(kind), load_spec(shipped_spec_path(kind))
    row = ROWS[kind]
    record = runner.to_record(leaf, spec, "teacher-x", "r1-u3", 1, 2, 12345, row)
    validator("record.schema.json").validate(record)
    assert record["id"] == f"{LEAF_HASH[:12]}-r1-u3-2"
    user, assistant = record["messages"]
    assert (user["role"], assistant["role"]) == ("user", "assistant")
    assert assistant["content"] == row["answer"]
    meta = record["metadata"]
    assert (meta["leaf_id"], meta["kind"], meta["leaf_hash"], meta["unit"], meta["round"], meta["sampling_seed"]) == (
        leaf.id, kind, LEAF_HASH, "r1-u3", 1, 12345)
    assert meta["pipeline"] == spec.name and meta["pipeline_hash"] == spec.digest
    assert meta["template_hashes"] == spec.template_hashes() and meta["judge_scores"] == row["_scores"]
    if kind == "grounded_skill":
        assert user["content"] == f"{row['context']}\n\n{row['question']}"  # the context comes first
        assert user["content"].index(row["context"]) < user["content"].index(row["question"])
        assert meta["context"] == row["context"] and meta["source_chunk"] is None
    elif kind == "knowledge":
        assert user["content"] == row["question"]
        assert meta["context"] == row["chunk"] and meta["source_chunk"] == row["_source"]
    else:
        assert user["content"] == row["question"] and meta["context"] is None and meta["source_chunk"] is None


# --------------------------------------------------------------------------------------------------
# Blocks: logic with a scripted stand-in teacher (the real server is in test_generate.py)


class ScriptedTeacher:
    """Answers each chat with the next scripted text (or raises it, if it is an exception); records calls."""

    model = "scripted"

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[tuple[list[dict], object, object]] = []

    async def chat(self, messages, sampling, structured=None):
        self.calls.append((messages, sampling, structured))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        texts = answer if isinstance(answer, list) else [answer]
        return Completion(texts=texts, prompt_tokens=10, completion_tokens=5, finish_reasons=["stop"] * len(texts))


def _ctx(teacher=None, seed_texts=(), cap=None) -> UnitContext:
    templates = {"system.j2": "system for {{ leaf.id }}", "t.j2": "Q={{ question | default('') }} num={{ num | default(0) }}"}
    return UnitContext(teacher=teacher, render=lambda name, v: _render(templates, name, v), leaf={"id": "leaf"},
                       examples=[], seed=7, seed_texts=list(seed_texts), dedup={}, stats={}, max_tokens_cap=cap)


def _render(templates, name, variables):
    import jinja2

    return jinja2.Environment().from_string(templates[name]).render(**variables) if name in templates else None


def _block(type_: str, **params) -> blocks.Block:
    return blocks.build(BlockSpec(name=f"my_{type_}", type=type_, params=params))


SCORE = {"template": "t.j2", "score": {"min": 0, "max": 3, "keep_at_least": 2}}
VERDICT = {"template": "t.j2", "verdict": {"choices": ["YES", "NO"], "keep": ["YES"]}}


@pytest.mark.parametrize("text, expected", [
    ('{"reason": "fine", "score": 2}', 2),
    ('{"reason": "raw\ncontrol\x07 chars", "score": 3}', 3),
    ('Sure! ```json\n{"reason": "ok", "score": 1}\n```', 1),
    ('{"reason": "unterminated, "score": 3', 3),  # broken JSON, but the score key is there
    ("2", 2),
    ("I would rate this a 3 out of 3.", 3),
    ('{"reason": "x", "score": 7}', None),  # out of range
    ('{"reason": "x", "score": -1}', None),
    ('{"reason": "x", "score": true}', None),
    ('{"reason": "x", "score": "2"}', None),
    ('{"reason": "x"}', None),  # no decision
    ('{"reason": "meets 2 of the 3 requir', None),  # cut off: the 2 is in the reason, not a score
    ("no number here", None),
    ("", None),
])
def test_judge_reads_scores_from_messy_text(text, expected):
    assert _block("judge", **SCORE)._read(text) == expected


@pytest.mark.parametrize("text, expected", [
    ('{"reason": "supported", "verdict": "YES"}', "YES"),
    ('{"reason": "x", "verdict": "no"}', "NO"),
    ('Here: {"reason": "x", "verdict": "NO"} done', "NO"),
    ('{"reason": "broken "quote", "verdict": "YES"', "YES"),
    ("YES", "YES"),
    ("The answer is no.", "NO"),
    ('{"reason": "x", "verdict": "MAYBE"}', None),
    ('{"reason": "YES it is supported but', None),  # cut off before the verdict
    ("nothing useful", None),
    ("", None),
])
def test_judge_reads_verdicts_from_messy_text(text, expected):
    assert _block("judge", **VERDICT)._read(text) == expected


def test_judge_schema_fits_the_token_cap():
    judge = _block("judge", **SCORE)
    assert judge._schema()["properties"]["reason"]["maxLength"] == 300
    capped = judge._schema(64)
    assert capped["properties"]["reason"]["maxLength"] <= 32  # the decision still fits in 64 tokens
    assert capped["properties"]["score"] == {"type": "integer", "minimum": 0, "maximum": 3}
    assert capped["required"] == ["reason", "score"]
    assert _block("judge", **VERDICT)._schema(64)["properties"]["verdict"]["enum"] == ["YES", "NO"]


def test_judge_apply_keeps_drops_and_counts():
    teacher = ScriptedTeacher('{"reason": "a", "score": 3}', '{"reason": "b", "score": 1}', "garbage",
                              PromptTooLong("too long"), '{"reason": "c", "score": 2}')
    ctx = _ctx(teacher, cap=64)
    rows = [{"question": f"q{i}", "_scores": {"earlier": 1}} for i in range(5)]
    out = run(_block("judge", **SCORE).run(rows, ctx))
    assert [r["question"] for r in out] == ["q0", "q4"]
    assert out[0]["_scores"] == {"earlier": 1, "my_judge": 3} and out[1]["_scores"]["my_judge"] == 2
    s = ctx.stats["my_judge"]
    assert (s.rows_in, s.rows_out, s.dropped, s.parse_failures, s.requests) == (5, 2, 3, 1, 4)
    assert (s.prompt_tokens, s.completion_tokens) == (40, 20)
    assert [e["reason"] for e in s.examples] == ["judged 1", "unreadable judgement", "prompt longer than the teacher's context"]
    messages, sampling, structured = teacher.calls[0]
    assert messages[0] == {"role": "system", "content": "system for leaf"} and messages[1]["content"].startswith("Q=q0")
    assert sampling.temperature == 0.0 and sampling.max_tokens == 64  # capped
    assert structured.json_schema["properties"]["reason"]["maxLength"] <= 32
    assert len({c[1].seed for c in teacher.calls}) == 5  # each row its own seed


@pytest.mark.parametrize("text, fields, expected", [
    ('["What is A?", "What is B?"]', ["question"], [{"question": "What is A?"}, {"question": "What is B?"}]),
    ('[{"question": " Q1 ", "answer": "A1"}, {"question": "Q2"}]', ["question", "answer"], [{"question": "Q1", "answer": "A1"}]),
    ('{"question": "Q", "answer": "A"}', ["question", "answer"], [{"question": "Q", "answer": "A"}]),  # one object
    ('Sure: [{"question": "Q", "answer": "A"}] hope it helps', ["question", "answer"], [{"question": "Q", "answer": "A"}]),
    ('["ok", "", "  ", 3, null, ["nested"]]', ["question"], [{"question": "ok"}]),
    ('[{"question": 1, "answer": "A"}]', ["question", "answer"], None),
    ("[]", ["question"], None),
    ('"just a string"', ["question"], None),
    ("no json at all", ["question"], None),
    ('["unterminated', ["question"], None),
])
def test_generate_parses_lists_dicts_and_garbage(text, fields, expected):
    assert _block("generate", template="t.j2", parse="json_list", fields=fields)._parse(text, fields) == expected


def test_generate_text_parse():
    g = _block("generate", template="t.j2", parse="text", fields=["answer"])
    assert g._parse("  An answer.\n", ["answer"]) == [{"answer": "An answer."}]
    assert g._parse(" \n ", ["answer"]) is None


def test_generate_apply_expands_rows_and_counts_parse_failures():
    teacher = ScriptedTeacher(['["q1", "q2"]', "not json", '["q3"]'], '["q4"]')
    ctx = _ctx(teacher, cap=64)
    g = _block("generate", template="t.j2", parse="json_list", fields=["question"], num=3, sampling={"n": 3, "max_tokens": 500})
    out = run(g.run([{"context": "c1"}, {"context": "c2"}], ctx))
    assert out == [{"context": "c1", "question": q} for q in ("q1", "q2", "q3")] + [{"context": "c2", "question": "q4"}]
    s = ctx.stats["my_generate"]
    assert (s.rows_in, s.rows_out, s.requests, s.parse_failures, s.dropped) == (2, 4, 2, 1, 1)
    assert s.examples[0]["reason"] == "unparsable output" and s.examples[0]["output"] == "not json"
    _, sampling, structured = teacher.calls[0]
    assert sampling.n == 3 and sampling.max_tokens == 64
    schema = structured.json_schema
    assert schema["maxItems"] == 3 and schema["items"]["maxLength"] <= 64 // 4  # every string fits the cap's share
    assert "num=3" in teacher.calls[0][0][-1]["content"]


def test_dedup_drops_a_near_copy_of_a_seed_and_of_an_earlier_row():
    seed = "Write a three sentence summary of the risk of hallucination for a product manager planning a chatbot."
    ctx = _ctx(seed_texts=[seed, "Another seed answer about bias in hiring tools and how to audit them."])
    d = _block("dedup", field="question", threshold=0.8)
    fresh = "Explain prompt injection to a new developer who builds tools that read web pages and emails."
    rows = [{"question": seed.replace("a chatbot.", "a bot!")},  # near copy of a seed (Jaccard 0.875)
            {"question": fresh}, {"question": fresh.upper()}, {"question": "Something else entirely, about carbon costs of training."}]
    out = run(d.run(rows, ctx))
    assert [r["question"] for r in out] == [fresh, rows[3]["question"]]
    s = ctx.stats["my_dedup"]
    assert (s.rows_in, s.rows_out, s.dropped) == (4, 2, 2)
    assert s.examples[0]["reason"].startswith("near-duplicate of seed:0")
    assert "near-duplicate of 7:my_dedup:1" in s.examples[1]["reason"]  # the row kept just before
    assert isinstance(ctx.dedup["my_dedup"], NearDuplicateIndex) and len(ctx.dedup["my_dedup"]) == 4
    # The index is shared by the leaf's units: a later unit drops a repeat of this one's rows.
    again = run(d.run([{"question": fresh}], ctx))
    assert again == [] and ctx.stats["my_dedup"].dropped == 3


def test_length_refusal_and_seed_leakage_count_drops_with_examples():
    seed = "Hallucination means the model writes fluent text that is false, with made-up citations and facts."
    ctx = _ctx(seed_texts=[seed])
    answers = ["ok", "two words", "one two three four five six", "I'm sorry, but I can't help with that request.",
               "As an AI language model, I cannot browse.", seed, "A fresh answer about bias audits in hiring tools today."]
    rows = [{"answer": a, "chunk": "big chunk text", "_scores": {"x": 1}} for a in answers]

    length = run(_block("length", field="answer", min_words=2, max_words=8).run(rows, ctx))
    s = ctx.stats["my_length"]
    assert [r["answer"] for r in length] == ["two words", "one two three four five six", "As an AI language model, I cannot browse."]
    assert (s.rows_in, s.rows_out, s.dropped) == (7, 3, 4) and len(s.examples) == blocks.MAX_EXAMPLES
    assert s.examples[0]["reason"] == "1 words, outside [2, 8]" and s.examples[0]["answer"] == "ok"
    assert "chunk" not in s.examples[0] and "_scores" not in s.examples[0]  # private fields stay out of reports

    refusal = run(_block("refusal", field="answer").run(rows, ctx))
    s = ctx.stats["my_refusal"]
    assert len(refusal) == 5 and (s.rows_in, s.rows_out, s.dropped) == (7, 5, 2)
    assert {e["reason"] for e in s.examples} == {"refusal or assistant boilerplate"}

    leak = run(_block("seed_leakage", field="answer", max_share=0.8).run(rows, ctx))
    s = ctx.stats["my_seed_leakage"]
    assert seed not in [r["answer"] for r in leak] and (s.rows_in, s.rows_out, s.dropped) == (7, 6, 1)
    assert s.examples[0]["reason"] == "100% copied from a seed example"


def test_block_stats_merge_and_json():
    a = BlockStats(rows_in=2, rows_out=1, dropped=1, requests=2, prompt_tokens=20, completion_tokens=8)
    a.examples = [{"reason": "x"}] * 2
    b = BlockStats(rows_in=3, rows_out=3, parse_failures=1, requests=3)
    b.examples = [{"reason": "y"}] * 3
    a.merge(b.to_json())
    assert a.to_json()["rows_in"] == 5 and a.requests == 5 and a.parse_failures == 1
    assert len(a.examples) == blocks.MAX_EXAMPLES
    assert runner.unit_seed(LEAF_HASH, "r0-u0") == runner.unit_seed(LEAF_HASH, "r0-u0") != runner.unit_seed(LEAF_HASH, "r0-u1")
    assert blocks.hash_text("judge") == blocks.hash_text("judge")  # stable across processes, unlike hash()


# --------------------------------------------------------------------------------------------------
# Generation-time filters (docs/safety.md): grounding, safety, personal data

GROUNDING = {"template": "t.j2"}
SAFETY = {"template": "s.j2", "categories": ["violence", "weapons", "privacy violation"]}


def _safety_ctx(teacher, cap=None) -> UnitContext:
    templates = {"s.j2": "cats={{ categories | join(',') }} Q={{ question }} A={{ answer }}"}
    return UnitContext(teacher=teacher, render=lambda name, v: _render(templates, name, v), leaf={"id": "leaf"},
                       examples=[], seed=7, seed_texts=[], dedup={}, stats={}, max_tokens_cap=cap)


def test_grounding_judge_keeps_yes_drops_no_with_the_judges_reason_and_skips_rows_without_a_source():
    teacher = ScriptedTeacher('{"reason": "all in the chunk", "verdict": "YES"}',
                              '{"reason": "the date is not in the chunk", "verdict": "NO"}', "hmm",
                              '{"reason": "x", "verdict": "NO"}')
    ctx = _ctx(teacher, cap=64)
    rows = [{"chunk": "c", "question": "q0", "answer": "a0"}, {"chunk": "c", "question": "q1", "answer": "a1"},
            {"chunk": "c", "question": "q2", "answer": "a2"}, {"chunk": "  ", "question": "q3", "answer": "a3"},
            {"context": "ctx", "question": "q4", "answer": "a4"}]
    judge = _block("grounding_judge", **GROUNDING)
    out = run(judge.run(rows, ctx))
    assert [r["question"] for r in out] == ["q0"] and out[0]["_scores"] == {"my_grounding_judge": "YES"}
    s = ctx.stats["my_grounding_judge"]
    assert (s.rows_in, s.rows_out, s.dropped, s.parse_failures, s.requests) == (5, 1, 4, 1, 4)  # q3 was not asked
    assert [e["reason"] for e in s.examples] == ["no chunk to check the answer against",
                                                 "not supported by its source: the date is not in the chunk",
                                                 "unreadable judgement"]
    assert [c[0][-1]["content"][:4] for c in teacher.calls] == ["Q=q0", "Q=q1", "Q=q2", "Q=q4"]  # context counts as a source
    schema = teacher.calls[0][2].json_schema
    assert schema["required"] == ["reason", "verdict"] and schema["properties"]["verdict"]["enum"] == ["YES", "NO"]
    # A named source field is the only one looked at.
    named = _block("grounding_judge", **GROUNDING, source="context")
    run(named.run([{"chunk": "c", "question": "q", "answer": "a"}], ctx))
    assert ctx.stats["my_grounding_judge"].examples[0]["reason"] == "no chunk to check the answer against"


@pytest.mark.parametrize("text, kept, reason", [
    ('{"reason": "harmless", "categories": [], "verdict": "SAFE"}', True, None),
    ('{"reason": "a bomb recipe", "categories": ["weapons", "violence", "weapons"], "verdict": "UNSAFE"}', False,
     "unsafe (weapons, violence): a bomb recipe"),
    ('{"reason": "names an address", "categories": ["privacy violation"], "verdict": "SAFE"}', False,
     "unsafe (privacy violation): names an address"),  # a named harm outweighs a SAFE verdict
    ('{"reason": "odd", "categories": ["not a category"], "verdict": "SAFE"}', True, None),
    ("UNSAFE", False, "unsafe (no category named): no reason given"),  # free text from a teacher without structured outputs
    ("SAFE.", True, None),
])
def test_safety_judge_reads_verdicts_and_categories(text, kept, reason):
    judge = _block("safety_judge", **SAFETY)
    assert judge._judge(text) == (("SAFE", None) if kept else ("UNSAFE", reason))


def test_safety_judge_asks_with_its_categories_and_counts():
    teacher = ScriptedTeacher('{"reason": "fine", "categories": [], "verdict": "SAFE"}',
                              '{"reason": "threat", "categories": ["violence"], "verdict": "UNSAFE"}',
                              '{"reason": "cut off before the verd')
    ctx = _safety_ctx(teacher)
    out = run(_block("safety_judge", **SAFETY).run([{"question": f"q{i}", "answer": "a"} for i in range(3)], ctx))
    assert [r["question"] for r in out] == ["q0"] and out[0]["_scores"] == {"my_safety_judge": "SAFE"}
    s = ctx.stats["my_safety_judge"]
    assert (s.rows_in, s.rows_out, s.dropped, s.parse_failures, s.requests) == (3, 1, 2, 1, 3)
    assert [e["reason"] for e in s.examples] == ["unsafe (violence): threat", "unreadable judgement"]
    messages, sampling, structured = teacher.calls[0]
    assert messages[-1]["content"].startswith("cats=violence,weapons,privacy violation Q=q0")
    schema = structured.json_schema
    assert schema["required"] == ["reason", "categories", "verdict"]  # the reason first, the decision last
    assert schema["properties"]["categories"] == {"type": "array", "items": {"enum": SAFETY["categories"]}, "maxItems": 3}
    assert schema["properties"]["verdict"]["enum"] == ["SAFE", "UNSAFE"]
    # Under a token cap, one category at most and a shorter reason, so the verdict still fits.
    capped = _block("safety_judge", **SAFETY)._schema(64)["properties"]
    assert capped["categories"]["maxItems"] == 1 and capped["reason"]["maxLength"] == 16
    # Without categories in the spec, the default list.
    default = _block("safety_judge", template="s.j2")
    assert default.categories == list(blocks.SAFETY_CATEGORIES) and "self-harm" in default.categories


def test_lexical_support_drops_unsupported_answers_and_names_the_missing_words():
    chunk = "The EU AI Act entered into force on 1 August 2024 and bans social scoring by public authorities."
    rows = [{"chunk": chunk, "question": "q", "answer": "The AI Act, in force since 1 August 2024, bans social scoring."},
            {"chunk": chunk, "question": "q", "answer": "It fines companies 35 million euros for deepfakes."},
            {"context": "no chunk here", "question": "q", "answer": "context rows use their context"},
            {"question": "q", "answer": "nothing to check against"}]
    ctx = _ctx()
    out = run(_block("lexical_support", min_support=0.5).run(rows, ctx))
    assert [r["answer"] for r in out] == [rows[0]["answer"]]
    s = ctx.stats["my_lexical_support"]
    assert (s.rows_in, s.rows_out, s.dropped, s.requests) == (4, 1, 3, 0)
    assert s.examples[0]["reason"] == ("0% of the answer's content words are in the chunk, below 50%;"
                                       " missing: fine, company, 35, million, euro, deepfake")
    assert "chunk" not in s.examples[0]  # the chunk stays out of the report, as everywhere
    assert s.examples[1]["reason"].startswith("0% of the answer's content words are in the context")
    assert s.examples[2]["reason"] == "no context to check the answer against"
    # min_support 0 keeps everything that has a source.
    assert len(run(_block("lexical_support", min_support=0.0).run(rows[:3], _ctx()))) == 3


def test_pii_redacts_by_default_and_counts_apart_from_drops():
    rows = [{"chunk": "Mail jane@example.org", "question": "Who is at jane@example.org?", "answer": "Call +44 20 7946 0958."},
            {"chunk": "c", "question": "What is on 2024-05-01?", "answer": "A release, version 1.2.3.4, of 4111 1111 1111 1112."},
            {"chunk": "c", "question": "q", "answer": "Card 4111 1111 1111 1111, SSN 123-45-6789."}]
    ctx = _ctx()
    out = run(_block("pii").run(rows, ctx))
    assert len(out) == 3 and out[1] == rows[1]  # dates, versions and a number failing Luhn are left alone
    assert out[0]["question"] == "Who is at [EMAIL]?" and out[0]["answer"] == "Call [PHONE]."
    assert out[0]["chunk"] == "Mail jane@example.org"  # only the fields asked for (default: question, answer)
    assert out[2]["answer"] == "Card [CARD], SSN [SSN]."
    s = ctx.stats["my_pii"]
    assert (s.rows_in, s.rows_out, s.dropped, s.redacted, s.examples) == (3, 3, 0, 2, [])
    assert [e["reason"] for e in s.redacted_examples] == ["email in question; phone in answer", "payment_card, us_ssn in answer"]
    assert "jane@example.org" not in json.dumps(s.to_json())  # the report never repeats personal data

    ctx = _ctx()
    kept = run(_block("pii", fields=["chunk", "answer"], kinds=["email"], action="drop").run(rows, ctx))
    assert kept == rows[1:]  # the card and SSN are not kinds asked for
    s = ctx.stats["my_pii"]
    assert (s.dropped, s.redacted) == (1, 0) and s.examples[0]["reason"] == "email in chunk"
    assert s.examples[0]["question"] == "Who is at [EMAIL]?"  # not a field this block checks, but a report never shows it
    # Nor does any other block's report.
    ctx = _ctx()
    run(_block("length", field="answer", min_words=50).run(rows[:1], ctx))
    assert ctx.stats["my_length"].examples[0]["question"] == "Who is at [EMAIL]?"


def test_block_stats_merge_redactions():
    a = BlockStats(rows_in=2, rows_out=2, redacted=1, redacted_examples=[{"reason": "email in answer"}])
    b = BlockStats(rows_in=3, rows_out=3, redacted=3, redacted_examples=[{"reason": "phone in answer"}] * 3)
    a.merge(b.to_json())
    assert (a.rows_in, a.redacted, len(a.redacted_examples)) == (5, 4, blocks.MAX_EXAMPLES)
    older = {"rows_in": 1, "rows_out": 1, "examples": []}  # a journal written before redactions were counted
    a.merge(older)
    assert a.redacted == 4 and a.to_json()["redacted_examples"] == a.redacted_examples


def test_grounding_blocks_are_refused_in_a_freeform_pipeline(tmp_path):
    path, lines = _spec_copy(tmp_path, "freeform_skill")
    i = lines.index("  - name: judge_pair")
    lines[i:i] = ["  - name: grounded", "    type: lexical_support"]
    err, line = _error_line(_write(path, lines))
    assert line == i + 2 and "freeform skill" in err.message and "grounded" in err.message


def test_pii_kinds_in_the_schema_are_the_detectors():
    from labcycle.tasks.generate.filters import PII_KINDS

    schema = load_schema("pipeline.schema.json")
    pii = next(c["then"] for c in schema["$defs"]["block"]["allOf"] if c["if"]["properties"]["type"]["const"] == "pii")
    assert pii["properties"]["kinds"]["items"]["enum"] == list(PII_KINDS)


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_shipped_pipelines_filter_by_default(kind):
    """Grounding for knowledge and grounded skills; personal data and safety for every kind; the demo
    profile's copies keep only what works on a random teacher (no judges, a lexical threshold of 0)."""
    types = [b.type for b in load_spec(shipped_spec_path(kind)).blocks]
    assert ("grounding_judge" in types) == (kind != "freeform_skill")
    assert "pii" in types and "safety_judge" in types
    assert types.index("pii") < types.index("safety_judge")  # the judge sees redacted text
    assert "lexical_support" not in types  # the judge checks grounding; lexical_support is for judge-free pipelines

    demo = load_spec(REPO_ROOT / "labcycle" / "profiles" / "demo-pipelines" / SHIPPED[kind])
    assert {b.type for b in demo.blocks} & blocks.TEACHER_TYPES == {"generate"}
    assert "pii" in [b.type for b in demo.blocks]
    lexical = [b for b in demo.blocks if b.type == "lexical_support"]
    assert len(lexical) == (kind != "freeform_skill") and all(b.params["min_support"] == 0 for b in lexical)


# --------------------------------------------------------------------------------------------------
# Unit scheduling (runner logic; the real-server runs are in test_generate.py)


def test_knowledge_rounds_rotate_through_chunks_and_a_complete_leaf_is_not_redone(tmp_path):
    import asyncio

    from labcycle.tasks.generate.runner import GenerationSettings, generate_leaf
    from labcycle.tasks.generate.spec import load_spec

    spec_dir = tmp_path / "spec"
    (spec_dir / "p").mkdir(parents=True)
    (spec_dir / "p" / "gen.j2").write_text("write about: {{ chunk }}")
    (spec_dir / "spec.yaml").write_text(
        "version: 1\nname: probe\nkind: knowledge\nprompts: p\nunit: chunk\nblocks:\n"
        "  - name: gen\n    type: generate\n    template: gen.j2\n    parse: json_list\n    fields: [question, answer]\n"
    )
    spec = load_spec(spec_dir / "spec.yaml")
    chunks = [{"source": "d.md", "start": i, "end": i + 1, "text": f"chunk-{i}"} for i in range(5)]
    seeds = [{"context": f"c{i}", "questions_and_answers": [{"question": f"q{i}{j}", "answer": f"a{i}{j}"} for j in range(3)]} for i in range(5)]
    leaf = LeafInput(id="knowledge/x", kind="knowledge", hash="a" * 64, qna={"seed_examples": seeds}, chunks=chunks)
    teacher = ScriptedTeacher(*["not json"] * 6)
    settings = GenerationSettings(samples_per_seed=1, max_rounds=3, max_units_per_round=2)

    result = asyncio.run(generate_leaf(leaf, spec, teacher, settings, tmp_path / "work"))
    seen = [next(c for c in chunks if c["text"] in msgs[-1]["content"])["text"] for msgs, _, _ in teacher.calls]
    # Three rounds of two units: chunks 0,1 then 2,3 then 4,0 — every chunk is used before any repeats.
    assert sorted(seen) == sorted(["chunk-0", "chunk-1", "chunk-2", "chunk-3", "chunk-4", "chunk-0"])
    assert result.units == 6 and result.kept == 0

    again = asyncio.run(generate_leaf(leaf, spec, ScriptedTeacher(), settings, tmp_path / "work"))
    assert again.units == 6  # read from yield.json; the empty script would raise on any request


def test_stricter_scored_judges_stop_at_their_scale():
    from labcycle.tasks.generate.runner import stricter
    from labcycle.tasks.generate.spec import load_spec, shipped_spec_path

    spec = load_spec(shipped_spec_path("freeform_skill"))
    keep = {b.name: stricter(b, 2).params.get("score", {}).get("keep_at_least") for b in spec.blocks}
    assert keep["judge_question"] == 1 and keep["judge_pair"] == 3  # 0-1 scale keeps 1; 0-3 scale keeps 2 + 2 -> 3
    assert all(stricter(b, 0) is b for b in spec.blocks)
    knowledge = load_spec(shipped_spec_path("knowledge"))
    faithfulness = next(b for b in knowledge.blocks if b.name == "faithfulness")
    assert stricter(faithfulness, 3) is faithfulness  # a YES/NO verdict has no scale to raise
