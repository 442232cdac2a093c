"""The mixing stage: phase sets, grounded copies, replay, user datasets, upsampling, determinism, cards, errors.

Generated folders are built here from records valid under schemas/record.schema.json; nothing needs a
teacher, a GPU or the network.
"""

from __future__ import annotations

import hashlib
import json
import random
from fractions import Fraction
from pathlib import Path

import pytest

from labcycle.chat_data import load_chat_dataset
from labcycle.errors import LabcycleError
from labcycle.io import write_json, write_jsonl
from labcycle.schemas import validator
from labcycle.tasks.mix import Recipe, load_recipe, mix, mix_task, recipe_from_mapping
from labcycle.tasks.mix.card import length_stats
from labcycle.tasks.mix.phases import upsample_targets
from tests.mistakes import assert_mistake

KNOW_A, KNOW_B = "knowledge/ai/risk", "knowledge/ai/mitigation"
FREEFORM, GROUNDED, EMPTY = "compositional_skills/writing/notes", "compositional_skills/extraction/tables", "compositional_skills/empty"


def record(leaf: str, kind: str, i: int, context: str | None = None, system: bool = False) -> dict:
    """One generated sample, as the generation stage writes it (checked against the record schema)."""
    leaf_hash = hashlib.sha256(leaf.encode()).hexdigest()
    messages = [{"role": "user", "content": f"Question {i} of {leaf}?"},
                {"role": "assistant", "content": f"Answer {i} of {leaf}, in a few words."}]
    if system:
        messages.insert(0, {"role": "system", "content": "You are a careful assistant."})
    rec = {
        "id": f"{leaf_hash[:12]}-r0-u{i}-0",
        "messages": messages,
        "metadata": {
            "leaf_id": leaf, "kind": kind, "leaf_hash": leaf_hash,
            "source_chunk": {"source": "doc.md", "start": 0, "end": 10} if kind == "knowledge" else None,
            "context": context, "judge_scores": {"faithful": 2}, "teacher_model": "teacher", "pipeline": kind,
            "pipeline_hash": "p" * 16, "template_hashes": {}, "sampling_seed": i, "round": 0, "unit": f"r0-u{i}",
        },
    }
    validator("record.schema.json").validate(rec)
    return rec


def write_generated(root: Path, leaves: dict[str, list[dict]]) -> Path:
    for leaf, records in leaves.items():
        write_jsonl(root / leaf / "samples.jsonl", records)
        write_json(root / leaf / "yield.json", {"leaf_id": leaf, "kept": len(records)})
    return root


def knowledge_records(leaf: str, n: int, contexts: int, system: bool = False) -> list[dict]:
    return [record(leaf, "knowledge", i, context=f"Chunk {i % contexts} of {leaf}: some text.", system=system)
            for i in range(n)]


@pytest.fixture()
def generated(tmp_path: Path) -> Path:
    """Two knowledge leaves (16 samples over 8 distinct chunks), two skills leaves (20 + 12), an empty leaf."""
    return write_generated(tmp_path / "generated", {
        KNOW_A: knowledge_records(KNOW_A, 10, 5),
        KNOW_B: knowledge_records(KNOW_B, 6, 3),
        FREEFORM: [record(FREEFORM, "freeform_skill", i) for i in range(20)],
        GROUNDED: [record(GROUNDED, "grounded_skill", i, context=f"Table {i}") for i in range(12)],
        EMPTY: [],
    })


def rows(output: Path, phase: str) -> list[dict]:
    return [json.loads(line) for line in (output / phase / "data.jsonl").read_text(encoding="utf-8").splitlines()]


def card(output: Path, phase: str) -> dict:
    return json.loads((output / phase / "card.json").read_text())


def recipe(**data) -> Recipe:
    """A recipe holding nothing out unless asked, so that counts below are the generated samples'."""
    return recipe_from_mapping({"held_out": {"per_leaf": 0}, **data})


def documents(user_turn: str) -> list[str]:
    """The documents shown in a grounded user turn, in order."""
    shown, question = user_turn.rsplit("\n\nQuestion: ", 1)
    parts = shown.split("\n\nDocument ")
    return [p.split(":\n", 1)[1] for p in parts]


# --- phase sets ---------------------------------------------------------------------------------------


def test_default_phase_sets(generated, tmp_path):
    out = tmp_path / "mixed"
    summary = mix(generated, out, recipe())
    know, skills = rows(out, "knowledge"), rows(out, "skills")
    # Phase 1: every knowledge sample as is, plus one grounded copy of each.
    assert len(know) == 32 and summary["phases"]["knowledge"]["sources"] == {"knowledge_qa": 16, "knowledge_grounded": 16}
    # Phase 2: every skills sample (samples_per_leaf null), plus round(0.1 x 32) = 3 replayed phase-1 rows.
    assert summary["phases"]["skills"]["sources"] == {"skills": 32, "replay": 3} and len(skills) == 35
    for data in (know, skills):
        assert len({r["id"] for r in data}) == len(data)
        assert all(list(r) == ["id", "messages", "source", "leaf_id", "unmask", "metadata"] for r in data)
        # InstructLab's conventions: the Q&A samples train on every token, the grounded copies and skills on the
        # answers; each row keeps its record's metadata as JSON text.
        assert all(r["unmask"] == (r["source"] == "knowledge_qa" or r["id"].endswith("#replay")
                                   and "#grounded" not in r["id"]) for r in data)
        assert all(json.loads(r["metadata"])["leaf_id"] == r["leaf_id"] for r in data)
        assert all(r["messages"][0]["role"] == "user" for r in data)  # no system prompt unless the recipe sets one
    by_id = {r["id"]: r for r in know}
    for r in (r for r in skills if r["source"] == "replay"):
        original = by_id[r["id"].removesuffix("#replay")]
        assert r["messages"] == original["messages"] and r["leaf_id"] == original["leaf_id"]
    c = card(out, "skills")
    assert c["leaves"][FREEFORM] == 20 and c["leaves"][GROUNDED] == 12 and EMPTY not in c["leaves"]
    assert c["samples"] == 35 and c["upsampled"] == {} and c["recipe"] == recipe().to_json()
    assert c["recipe_digest"] == recipe().digest() and c["seed"] == 42
    assert c["fingerprint"] == hashlib.sha256((out / "skills" / "data.jsonl").read_bytes()).hexdigest()
    assert json.loads((out / "mix.json").read_text()) == summary
    assert summary["phases"]["skills"]["fingerprint"] == c["fingerprint"]


@pytest.mark.parametrize(
    ("skills", "expected"),
    [
        ({}, {FREEFORM: 20, GROUNDED: 12}),
        ({"samples_per_leaf": 5}, {FREEFORM: 5, GROUNDED: 5}),
        ({"samples_per_leaf": 15}, {FREEFORM: 15, GROUNDED: 12}),  # fewer than asked: kept as they are
        ({"samples_per_leaf": 15, "leaves": {GROUNDED: 3}}, {FREEFORM: 15, GROUNDED: 3}),
        ({"samples_per_leaf": 2, "leaves": {FREEFORM: None}}, {FREEFORM: 20, GROUNDED: 2}),
        ({"leaves": {FREEFORM: 0}}, {GROUNDED: 12}),
    ],
)
def test_samples_per_leaf_and_overrides(generated, tmp_path, skills, expected):
    out = tmp_path / "mixed"
    mix(generated, out, recipe(skills={**skills, "replay_fraction": 0}, min_share=0))
    data = rows(out, "skills")
    counts = {leaf: sum(r["leaf_id"] == leaf for r in data) for leaf in (FREEFORM, GROUNDED)}
    assert {k: v for k, v in counts.items() if v} == expected
    originals = {r["id"]: r["messages"] for leaf in (FREEFORM, GROUNDED)
                 for r in map(json.loads, (generated / leaf / "samples.jsonl").read_text().splitlines())}
    assert all(originals[r["id"]] == r["messages"] for r in data)  # drawn without replacement, unchanged


@pytest.mark.parametrize(("fraction", "replayed"), [(0, 0), (0.1, 3), (0.25, 8), (0.5, 16), (1, 32)])
def test_replay_fraction(generated, tmp_path, fraction, replayed):
    out = tmp_path / "mixed"
    mix(generated, out, recipe(skills={"replay_fraction": fraction}, min_share=0))
    replay = [r for r in rows(out, "skills") if r["source"] == "replay"]
    assert len(replay) == replayed  # round(fraction x 32), half up
    phase1 = {r["id"]: r for r in rows(out, "knowledge")}
    assert all(phase1[r["id"].removesuffix("#replay")]["messages"] == r["messages"] for r in replay)


def test_knowledge_sources_can_be_turned_off(generated, tmp_path):
    out = tmp_path / "mixed"
    mix(generated, out, recipe(knowledge={"qa": False}))
    assert {r["source"] for r in rows(out, "knowledge")} == {"knowledge_grounded"}
    mix(generated, out, recipe(knowledge={"grounded": {"enabled": False}}))
    assert {r["source"] for r in rows(out, "knowledge")} == {"knowledge_qa"}


# --- grounded (RAFT-style) samples --------------------------------------------------------------------


@pytest.mark.parametrize(("probability", "k"), [(0.0, 4), (0.4, 4), (0.4, 2), (0.75, 6), (1.0, 1)])
def test_grounded_documents(tmp_path, probability, k):
    leaf = KNOW_A
    records = knowledge_records(leaf, 400, 10, system=True)
    out = tmp_path / "mixed"
    mix(write_generated(tmp_path / "generated", {leaf: records}), out,
        recipe(knowledge={"qa": False, "grounded": {"documents_in_context": k, "source_probability": probability}}))
    grounded = {r["id"]: r for r in rows(out, "knowledge")}
    assert len(grounded) == 400
    with_source = 0
    for rec in records:
        g = grounded[rec["id"] + "#grounded"]
        system, user, assistant = g["messages"]
        assert system == rec["messages"][0] and assistant == rec["messages"][2]  # system and answer unchanged
        assert user["content"].endswith("\n\nQuestion: " + rec["messages"][1]["content"])
        docs = documents(user["content"])
        assert len(docs) == k and len(set(docs)) == k  # 10 distinct chunks: always k, never one twice
        with_source += rec["metadata"]["context"] in docs
    assert abs(with_source / 400 - probability) < 0.07


@pytest.mark.parametrize(("contexts", "probability"), [(1, 0.0), (1, 0.4), (2, 0.0), (3, 0.4)])
def test_grounded_with_few_chunks_shows_what_exists(tmp_path, contexts, probability):
    records = knowledge_records(KNOW_A, 40, contexts)
    out = tmp_path / "mixed"
    mix(write_generated(tmp_path / "generated", {KNOW_A: records}), out,
        recipe(knowledge={"qa": False, "grounded": {"documents_in_context": 4, "source_probability": probability}}))
    grounded = {r["id"]: r for r in rows(out, "knowledge")}
    assert len(grounded) == len(records)
    for rec in records:
        docs = documents(grounded[rec["id"] + "#grounded"]["messages"][0]["content"])
        assert len(set(docs)) == len(docs)
        if contexts == 1:
            assert docs == [rec["metadata"]["context"]]  # no distractors: only the source chunk
        else:
            with_source = rec["metadata"]["context"] in docs
            assert len(docs) == (contexts if with_source else contexts - 1)


def test_grounded_copies_drop_distractors_to_fit_max_length(tmp_path):
    """With chunks of about 1,000 words and 4 documents in context, a RAFT copy is 5,000+ tokens: longer than
    the tuning phase's max_length (4,096), so training would leave every one out. The mix shows fewer
    distractors instead, never leaving out the source chunk, and says how many it trimmed."""
    chunk = lambda i, words: f"Chunk {i}. " + " ".join(f"w{i}x{j}" for j in range(words))  # noqa: E731
    records = [record(KNOW_A, "knowledge", i, context=chunk(i % 8, 300)) for i in range(40)]
    records += [record(KNOW_A, "knowledge", 100, context=chunk(99, 900))]  # its source alone is too long
    out = tmp_path / "mixed"
    mix(write_generated(tmp_path / "generated", {KNOW_A: records}), out,
        recipe(max_length=700, knowledge={"qa": False, "grounded": {"documents_in_context": 4, "source_probability": 1.0}}))
    grounded = {r["id"]: r for r in rows(out, "knowledge")}
    for rec in records:
        g = grounded[rec["id"] + "#grounded"]
        docs = documents(g["messages"][0]["content"])
        assert rec["metadata"]["context"] in docs  # source_probability 1.0: the source chunk always stays
        words = sum(len(m["content"].split()) for m in g["messages"])
        if rec["metadata"]["context"] == chunk(99, 900):
            assert docs == [rec["metadata"]["context"]] and words > 700
        else:
            assert len(docs) == 2 and words <= 700  # two 300-word chunks fit in 700 words, a third would not
    c = card(out, "knowledge")
    assert c["lengths"]["over_max_length"] == 1
    assert c["warnings"] == ["41 of 41 grounded copies were longer than max_length (700) with 4 documents in context, "
                             "and show fewer distractors; 1 are longer even so (their source chunk is): lower "
                             "chunking.max_words or raise max_length"]
    # Short chunks are shown as drawn
    out2 = tmp_path / "mixed2"
    mix(write_generated(tmp_path / "generated2", {KNOW_A: records[:40]}), out2,
        recipe(knowledge={"qa": False, "grounded": {"documents_in_context": 4, "source_probability": 1.0}}))
    assert all(len(documents(r["messages"][0]["content"])) == 4 for r in rows(out2, "knowledge"))
    assert card(out2, "knowledge")["warnings"] == []


def test_distractors_come_from_every_knowledge_leaf(generated, tmp_path):
    out = tmp_path / "mixed"
    mix(generated, out, recipe(knowledge={"qa": False, "grounded": {"documents_in_context": 8}}))
    shown = {d for r in rows(out, "knowledge") for d in documents(r["messages"][0]["content"])}
    assert shown == {f"Chunk {i} of {KNOW_A}: some text." for i in range(5)} | {f"Chunk {i} of {KNOW_B}: some text." for i in range(3)}


# --- min_share upsampling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "share", "targets"),
    [
        ({"a": 97, "b": 1}, 0.03, {"b": 3}),  # 3 of 100: exactly 3%
        ({"a": 97, "b": 3}, 0.03, {}),
        ({"a": 100, "b": 0}, 0.03, {}),  # empty sources stay empty
        ({"a": 94, "b": 1, "c": 1}, 0.03, {"b": 3, "c": 3}),
        ({"a": 1000, "b": 10, "c": 40}, 0.05, {"b": 56, "c": 56}),  # 56 / 1112 >= 5%, 55 / 1110 is not
        ({"a": 1000, "b": 60, "c": 40}, 0.05, {"c": 56}),  # b stays above 5% once c grows
        ({"a": 10, "b": 1}, 0.0, {}),
        ({"a": 50}, 0.3, {}),
    ],
)
def test_upsample_targets(sizes, share, targets):
    assert upsample_targets(sizes, share) == targets


def test_upsampled_sources_reach_min_share():
    rng = random.Random(0)
    for _ in range(500):
        sizes = {f"s{i}": rng.choice([0, 1, 2, 5, rng.randint(1, 2000)]) for i in range(rng.randint(1, 5))}
        share = rng.choice([0.01, 0.03, 0.1, 0.2])
        new = {**sizes, **upsample_targets(sizes, share)}
        total = sum(new.values())
        if sum(1 for n in sizes.values() if n) * share < 1:
            assert all(n == 0 or Fraction(n, total) >= Fraction(str(share)) for n in new.values()), (sizes, share)
        assert all(new[k] >= sizes[k] for k in sizes)


def test_small_source_is_upsampled_with_distinct_copy_ids(tmp_path):
    out = tmp_path / "mixed"
    leaves = {KNOW_A: knowledge_records(KNOW_A, 97, 5), FREEFORM: [record(FREEFORM, "freeform_skill", i) for i in range(4)]}
    mix(write_generated(tmp_path / "generated", leaves), out,
        recipe(knowledge={"grounded": {"enabled": False}}, skills={"replay_fraction": 0.5}, min_share=0.1))
    # skills set: 4 skills samples and round(0.5 x 97) = 49 replayed; 4 < 10% of 53, so skills grows to
    # the smallest m with m >= 0.1 x (49 + m): m = 6 (6 / 55).
    c = card(out, "skills")
    assert c["upsampled"] == {"skills": {"from": 4, "to": 6}}
    assert c["sources"] == {"skills": {"before": 4, "samples": 6}, "replay": {"before": 49, "samples": 49}}
    skills = [r for r in rows(out, "skills") if r["source"] == "skills"]
    assert len({r["id"] for r in skills}) == 6 and sum(r["id"].endswith("#up2") for r in skills) == 2
    assert "repeated deterministically" in (out / "skills" / "dataset_card.md").read_text()


# --- user datasets -----------------------------------------------------------------------------------


GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def chat_rows(n: int, tag: str) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{tag} question {i}"}, {"role": "assistant", "content": f"{tag} answer {i}"}],
             "extra": i} for i in range(n)]


def write_dataset(path: Path, data: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        write_jsonl(path, data)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(data), path)
    else:
        from datasets import Dataset

        Dataset.from_list(data).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", ["general.jsonl", "general.parquet", "general_saved"])
@pytest.mark.parametrize(("weight", "expected"), [(1.0, 20), (0.5, 10), (2.0, 40), (1.5, 30), (0.25, 5)])
def test_user_datasets_with_weights(generated, tmp_path, name, weight, expected):
    write_dataset(tmp_path / "recipes" / "data" / name, chat_rows(20, "general"))
    recipe_file = tmp_path / "recipes" / "recipe.yaml"
    recipe_file.write_text(f"datasets:\n  - path: data/{name}\n    phase: skills\n    weight: {weight}\nmin_share: 0\n")
    out = tmp_path / "mixed"
    mix(generated, out, load_recipe(recipe_file))  # the relative path resolves against the recipe's folder
    source = Path(name).stem
    user = [r for r in rows(out, "skills") if r["source"] == source]
    assert len(user) == len({r["id"] for r in user}) == expected
    assert all(r["leaf_id"] is None for r in user)
    distinct = {r["id"].split("#")[0] for r in user}
    assert len(distinct) == min(20, expected)  # whole repeats first, then a part: never a row left out needlessly
    # The card names the file relative to the run folder (OUTPUT's parent), never by an absolute path.
    assert card(out, "skills")["datasets"] == [{"name": source, "phase": "skills", "path": f"recipes/data/{name}",
                                                "rows": 20, "weight": weight, "samples": expected}]


def test_user_dataset_in_phase_one_is_named_and_replayed(generated, tmp_path):
    path = write_dataset(tmp_path / "facts.jsonl", chat_rows(8, "facts"))
    out = tmp_path / "mixed"
    mix(generated, out, recipe(datasets=[{"path": str(path), "phase": "knowledge", "name": "extra_facts"}],
                               skills={"replay_fraction": 1}, min_share=0))
    know = rows(out, "knowledge")
    assert sum(r["source"] == "extra_facts" for r in know) == 8 and len(know) == 40
    replayed = [r for r in rows(out, "skills") if r["source"] == "replay"]
    assert len(replayed) == 40 and sum(r["leaf_id"] is None for r in replayed) == 8


def test_only_user_data_is_enough(tmp_path):
    generated = write_generated(tmp_path / "generated", {KNOW_A: [], FREEFORM: []})
    path = write_dataset(tmp_path / "general.jsonl", chat_rows(5, "general"))
    out = tmp_path / "mixed"
    summary = mix(generated, out, recipe(datasets=[{"path": str(path), "phase": "skills"}]))
    assert summary["phases"]["knowledge"]["samples"] == 0 and summary["phases"]["skills"]["samples"] == 5


def instructlab_rows() -> list[dict]:
    """Phase-1 rows as InstructLab's mixing writes them: metadata as a JSON string, `unmask` on the samples it
    trains in full, and (older releases) a single `pretraining` turn instead."""
    meta = json.dumps({"dataset": "document_knowledge_qa", "system_prompt": "You are helpful."})
    qa = [{"role": "user", "content": "What is NF4?"}, {"role": "assistant", "content": "A 4-bit data type."}]
    return [
        {"messages": qa, "metadata": meta, "id": "a", "unmask": True},  # first: Parquet takes its columns from row 0
        {"messages": qa, "metadata": meta, "id": "b"},
        {"messages": [{"role": "pretraining", "content": "<|user|>\nWhat is QLoRA?\nSay it briefly.\n"
                                                         "<|assistant|>\nLoRA on a 4-bit base."}], "metadata": meta, "id": "c"},
    ]


@pytest.mark.parametrize("name", ["knowledge_train_msgs.jsonl", "p07.parquet", "p07_saved"])
def test_instructlab_mixed_data_reads_as_it_is(tmp_path, name):
    """`unmask` and the legacy `pretraining` turn become ordinary turns with unmask set; other columns stay."""
    data = load_chat_dataset(write_dataset(tmp_path / name, instructlab_rows()))
    assert [r["unmask"] for r in data] == [True, False, True]
    assert data[2]["messages"] == [{"role": "user", "content": "What is QLoRA?\nSay it briefly."},
                                   {"role": "assistant", "content": "LoRA on a 4-bit base."}]
    assert [r["id"] for r in data] == ["a", "b", "c"] and json.loads(data[0]["metadata"])["dataset"] == "document_knowledge_qa"


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({**GOOD, "unmask": "yes"}, "`unmask` is 'yes', not true or false"),
        ({"messages": [{"role": "pretraining", "content": "plain text, no turns"}]}, "messages[0] is a `pretraining` turn"),
        ({"messages": [{"role": "pretraining", "content": "<|user|>\nonly a question"}]}, "no user turn or no assistant turn"),
    ],
)
def test_bad_unmask_and_pretraining_rows_name_the_line(tmp_path, bad, words):
    path = write_dataset(tmp_path / "data.jsonl", [GOOD, bad])
    with pytest.raises(LabcycleError) as info:
        load_chat_dataset(path)
    assert info.value.where == f"{path}:2" and words in info.value.message


def test_unmask_rows_keep_their_mark_through_the_mix(generated, tmp_path):
    path = write_dataset(tmp_path / "ilab.jsonl", instructlab_rows())
    out = tmp_path / "mixed"
    mix(generated, out, recipe(datasets=[{"path": str(path), "phase": "knowledge", "name": "ilab"}],
                               knowledge={"unmask": False}, skills={"replay_fraction": 1}, min_share=0))
    ilab = {r["id"]: r["unmask"] for r in rows(out, "knowledge") if r["source"] == "ilab"}
    assert ilab == {"ilab:0": True, "ilab:1": False, "ilab:2": True}
    assert sum(r["unmask"] for r in rows(out, "knowledge")) == 2 == card(out, "knowledge")["unmask"]
    assert sum(r["unmask"] for r in rows(out, "skills")) == 2  # replayed as they are
    # Their metadata (JSON text) stays, with the row's other columns moved into it, as InstructLab's mixer does.
    meta = {r["id"]: json.loads(r["metadata"]) for r in rows(out, "knowledge") if r["source"] == "ilab"}
    assert meta["ilab:0"] == {"dataset": "document_knowledge_qa", "system_prompt": "You are helpful.", "id": "a"}
    assert "trained on every token" in (out / "knowledge" / "dataset_card.md").read_text()


# --- InstructLab's conventions (tests/tasks/test_mix_instructlab.py holds them against sdg's own output) ------


def test_system_prompt_goes_first_everywhere_and_replaces_one_there_is(tmp_path):
    generated = write_generated(tmp_path / "generated", {
        KNOW_A: knowledge_records(KNOW_A, 10, 5, system=True),  # these come with a system turn of their own
        FREEFORM: [record(FREEFORM, "freeform_skill", i) for i in range(10)],
    })
    path = write_dataset(tmp_path / "general.jsonl", chat_rows(4, "general"))
    out = tmp_path / "mixed"
    prompt = "You are a careful assistant for the ACME knowledge base."
    summary = mix(generated, out, recipe_from_mapping({"system_prompt": prompt, "held_out": {"per_leaf": 1},
                                                       "datasets": [{"path": str(path), "phase": "skills"}]}))
    held = [json.loads(line) for line in (out / "held_out.jsonl").read_text().splitlines()]
    for data in (rows(out, "knowledge"), rows(out, "skills"), held):
        assert data and all(r["messages"][0] == {"role": "system", "content": prompt} for r in data)
        assert all(sum(m["role"] == "system" for m in r["messages"]) == 1 for r in data)
    grounded = [r for r in rows(out, "knowledge") if r["source"] == "knowledge_grounded"]
    assert all(r["messages"][1]["content"].startswith("Document 1:\n") for r in grounded)  # the user turn, not the system's
    assert summary["system_prompt"] == prompt
    assert json.dumps(prompt) in (out / "skills" / "dataset_card.md").read_text()


def test_knowledge_unmask_can_be_turned_off(generated, tmp_path):
    out = tmp_path / "mixed"
    mix(generated, out, recipe(knowledge={"unmask": False}))
    assert not any(r["unmask"] for phase in ("knowledge", "skills") for r in rows(out, phase))
    assert card(out, "knowledge")["unmask"] == 0
    mix(generated, out, recipe())
    assert card(out, "knowledge")["unmask"] == 16  # the default: every knowledge Q&A, as InstructLab marks them
    assert "trained on every token" in (out / "knowledge" / "dataset_card.md").read_text()


def test_instructlab_files_on_request_and_named_by_the_mix(generated, tmp_path):
    out = tmp_path / "mixed"
    summary = mix(generated, out, recipe())
    assert summary["instructlab"] == {} and not list(out.glob("*_train_msgs_*"))
    summary = mix(generated, out, recipe(instructlab_files=True))
    names = summary["instructlab"]
    assert names == {p: f"{p}_train_msgs_{summary['inputs'][:12]}.jsonl" for p in ("knowledge", "skills")}
    first = [json.loads(line) for line in (out / names["knowledge"]).read_text().splitlines()]
    assert all(list(r) == ["id", "messages", "metadata", "unmask"] for r in first) and len(first) == 32
    summary = mix(generated, out, recipe(instructlab_files=True, seed=3))  # another mix: the old files go
    assert sorted(p.name for p in out.glob("*_train_msgs_*")) == sorted(summary["instructlab"].values())
    from labcycle.tasks.mix.core import input_key, read_complete

    key = input_key(generated, recipe(instructlab_files=True, seed=3))
    assert read_complete(out, key) == summary
    (out / summary["instructlab"]["skills"]).unlink()
    assert read_complete(out, key) is None  # a missing InstructLab file is an unfinished mix


def test_generated_metadata_is_kept_without_the_machines_paths(tmp_path):
    recs = [record(FREEFORM, "freeform_skill", i) for i in range(6)]
    for r in recs:
        r["metadata"]["teacher_model"] = "/home/someone/models/Mixtral-8x7B-Instruct"
    out = tmp_path / "mixed"
    mix(write_generated(tmp_path / "generated", {FREEFORM: recs}), out, recipe())
    meta = [json.loads(r["metadata"]) for r in rows(out, "skills")]
    assert {m["teacher_model"] for m in meta} == {"Mixtral-8x7B-Instruct"}
    assert meta[0]["judge_scores"] == {"faithful": 2} and meta[0]["leaf_id"] == FREEFORM


def test_hub_card_and_no_absolute_paths_in_what_is_shared(generated, tmp_path):
    """README.md with Hub front matter beside each phase's data; mix.json and the cards name paths relative to
    the run folder."""
    from huggingface_hub import DatasetCard

    run = tmp_path / "run"
    write_dataset(tmp_path / "recipes" / "general.jsonl", chat_rows(20, "general"))
    build = __import__("labcycle.models", fromlist=["build_tokenizer"]).build_tokenizer
    build(["Question Answer of knowledge in a few words."], vocab_size=300).save_pretrained(tmp_path / "recipes" / "tok")
    recipe_file = tmp_path / "recipes" / "recipe.yaml"
    recipe_file.write_text("datasets:\n  - {path: general.jsonl, phase: skills}\ntokenizer: tok\n")
    summary = mix(generated, run / "mixed", load_recipe(recipe_file))
    inside = mix(generated, tmp_path / "mixed", recipe(datasets=[{"path": str(tmp_path / "recipes" / "general.jsonl"),
                                                                  "phase": "skills"}]))
    assert inside["generated"] == "generated"  # inside the run folder: relative to it
    assert card(tmp_path / "mixed", "skills")["datasets"][0]["path"] == "recipes/general.jsonl"
    assert summary["generated"] == "generated" and summary["output"] == "mixed"  # outside the run: its name
    for phase in ("knowledge", "skills"):
        readme = DatasetCard.load(run / "mixed" / phase / "README.md")
        assert readme.data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "data.jsonl"}]}]
        assert "labcycle" in readme.data.tags and readme.data.task_categories == ["text-generation"]
        assert readme.data.size_categories == ["n<1K"] and readme.data.labcycle["phase"] == phase
        assert readme.text.strip() == (run / "mixed" / phase / "dataset_card.md").read_text().strip()
        assert summary["phases"][phase]["readme"] == f"{phase}/README.md"
    c = card(run / "mixed", "skills")
    # Outside the run folder: as the recipe names them (relative to its folder).
    assert c["recipe"]["tokenizer"] == "tok" and c["datasets"][0]["path"] == "general.jsonl"
    shared = [run / "mixed" / "mix.json"] + [run / "mixed" / p / n for p in ("knowledge", "skills")
                                             for n in ("card.json", "dataset_card.md", "README.md")]
    for f in shared:
        assert str(tmp_path) not in f.read_text(), f


# --- output ------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_mix(generated, tmp_path):
    path = write_dataset(tmp_path / "general.parquet", chat_rows(30, "general"))
    base = {"datasets": [{"path": str(path), "phase": "skills", "weight": 0.5}], "skills": {"samples_per_leaf": 7},
            "min_share": 0.2}
    outs = [tmp_path / f"mixed{i}" for i in range(3)]
    for out, seed in zip(outs, (1, 1, 2)):
        mix(generated, out, recipe(seed=seed, **base))
    for phase in ("knowledge", "skills"):
        first, again, other = ((o / phase / "data.jsonl").read_bytes() for o in outs)
        assert first == again and first != other
        assert (outs[0] / phase / "dataset_card.md").read_bytes() == (outs[1] / phase / "dataset_card.md").read_bytes()


def test_saved_dataset_matches_data_jsonl(generated, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "mixed"
    mix(generated, out, recipe())
    mix(generated, out, recipe(seed=7))  # a second mix replaces the saved dataset
    for phase in ("knowledge", "skills"):
        assert load_from_disk(str(out / phase / "dataset")).to_list() == rows(out, phase)
        assert not [p.name for p in (out / phase).iterdir() if p.name.startswith(".")]  # no temporary folder left
        assert load_chat_dataset(out / phase / "dataset") == rows(out, phase)  # as the tuning stage reads it


def test_an_empty_phase_is_allowed_and_said(tmp_path):
    generated = write_generated(tmp_path / "generated", {FREEFORM: [record(FREEFORM, "freeform_skill", i) for i in range(3)]})
    out = tmp_path / "mixed"
    summary = mix(generated, out, recipe())
    assert summary["phases"]["knowledge"]["samples"] == 0 and summary["phases"]["skills"]["sources"] == {"skills": 3, "replay": 0}
    assert (out / "knowledge" / "data.jsonl").read_text() == ""
    from datasets import load_from_disk

    assert len(load_from_disk(str(out / "knowledge" / "dataset"))) == 0
    c = card(out, "knowledge")
    assert c["samples"] == 0 and c["lengths"]["p50"] is None and "no knowledge leaf" in c["empty_reason"]
    assert "This set is empty" in (out / "knowledge" / "dataset_card.md").read_text()


def test_nothing_generated_is_an_error_pointing_at_the_yield_reports(tmp_path):
    generated = write_generated(tmp_path / "generated", {KNOW_A: [], FREEFORM: []})
    with pytest.raises(LabcycleError, match="no samples were generated.*yield.json") as info:
        mix(generated, tmp_path / "mixed", Recipe())
    assert info.value.where == str(generated)
    assert not (tmp_path / "mixed").exists()


def test_length_statistics_in_words_without_a_tokenizer(generated, tmp_path):
    out = tmp_path / "mixed"
    mix(generated, out, recipe(max_length=12))
    lengths = [len(" ".join(m["content"] for m in r["messages"]).split()) for r in rows(out, "skills")]
    t = card(out, "skills")["lengths"]
    assert t == {"unit": "words", "tokenizer": None, "max_length": 12, **length_stats(lengths, 12)}
    assert t["over_max_length"] == sum(n > 12 for n in lengths) > 0
    assert "whitespace-separated words" in (out / "skills" / "dataset_card.md").read_text()


@pytest.mark.parametrize("template", [True, False])
def test_length_statistics_with_a_tokenizer(generated, tmp_path, template):
    from labcycle.models import build_tokenizer

    tok = build_tokenizer(["Question Answer of knowledge compositional skills writing notes in a few words."], vocab_size=300)
    if not template:
        tok.chat_template = None
    folder = tmp_path / "recipes" / "tokenizer"
    tok.save_pretrained(folder)
    recipe_file = tmp_path / "recipes" / "recipe.yaml"
    recipe_file.write_text("tokenizer: tokenizer\nmax_length: 40\n")
    out = tmp_path / "mixed"
    mix(generated, out, load_recipe(recipe_file))
    for phase in ("knowledge", "skills"):
        data = rows(out, phase)
        if template:
            lengths = [len(tok.apply_chat_template(r["messages"], tokenize=True)["input_ids"]) for r in data]
        else:
            lengths = [len(tok("\n\n".join(m["content"] for m in r["messages"]))["input_ids"]) for r in data]
        t = card(out, phase)["lengths"]
        assert t == {"unit": "tokens", "tokenizer": "recipes/tokenizer", "max_length": 40, **length_stats(lengths, 40)}
        assert "tokens of `recipes/tokenizer`" in (out / phase / "dataset_card.md").read_text()
    assert card(out, "knowledge")["lengths"]["over_max_length"] > 0  # the grounded copies are long


def test_length_stats_percentiles():
    assert length_stats(list(range(1, 101)), 90) == {"min": 1, "mean": 50.5, "p50": 50, "p95": 95, "max": 100,
                                                     "over_max_length": 10}
    assert length_stats([7], 5) == {"min": 7, "mean": 7.0, "p50": 7, "p95": 7, "max": 7, "over_max_length": 1}


# --- the recipe and its errors -----------------------------------------------------------------------


def test_recipe_defaults_digest_and_shipped_example():
    default = load_recipe(None)
    assert default == Recipe() == recipe_from_mapping({}) == recipe_from_mapping(None)
    assert default.to_json()["knowledge"]["grounded"] == {"enabled": True, "documents_in_context": 4, "source_probability": 0.4}
    assert recipe(seed=1).digest() != default.digest()
    assert load_recipe(Path(__file__).resolve().parents[2] / "taxonomy" / "recipe.yaml") == Recipe()


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("seed: 1\nknowledge:\n  grounded:\n    documents_in_contxt: 3\n", ":4:5", "documents_in_contxt"),
        ("knowledge:\n  grounded:\n    source_probability: 1.5\n", ":3:5", "knowledge.grounded.source_probability"),
        ("skills:\n  samples_per_leaf: many\n", ":2:3", "skills.samples_per_leaf"),
        ("skills:\n  leaves:\n    a/b: -1\n", ":3:5", "skills.leaves.a/b"),
        ("datasets:\n  - path: x.jsonl\n    phase: pretraining\n", ":3:5", "datasets.0.phase"),
        ("datasets:\n  - phase: skills\n", ":2:5", "'path' is a required property"),
        ("datasets:\n  - {path: a.jsonl, phase: skills}\n  - {path: b/a.jsonl, phase: skills}\n", ":3:5", "datasets.1"),
        ("datasets:\n  - {path: a.jsonl, phase: skills, name: replay}\n", ":2:5", "already has a source named 'replay'"),
        ("min_share: 0.5\n", ":1:1", "min_share"),
        ("- seed: 1\n", ":1:1", "top level must be a mapping of recipe keys"),
        ("seed: [unclosed\n", ":2:1", "syntax"),
    ],
)
def test_recipe_mistakes_name_the_file_line_and_key(tmp_path, text, where, words):
    assert_mistake(load_recipe, tmp_path / "recipe.yaml", text, where, words)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(LabcycleError, match="recipe file not found") as info:
        load_recipe(tmp_path / "nope.yaml")
    assert info.value.where == str(tmp_path / "nope.yaml")


def test_empty_recipe_file_is_the_defaults(tmp_path):
    f = tmp_path / "recipe.yaml"
    f.write_text("# nothing set\n")
    assert load_recipe(f) == Recipe()


# --- bad user data -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"text": "no messages"}, "`messages` is missing"),
        ({"messages": []}, "`messages` is missing or not a non-empty list"),
        ({"messages": [{"role": "user", "content": "q"}]}, "no user turn or no assistant turn"),
        ({"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]}, "messages[1].content"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}, "messages[1].content"),
        (["not", "an", "object"], "not an object"),
    ],
)
def test_bad_jsonl_rows_name_the_file_and_line(tmp_path, bad, words):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(LabcycleError) as info:
        load_chat_dataset(path)
    assert info.value.where == f"{path}:4"  # blank lines count, as in an editor
    assert words in info.value.message and "at least one user and one assistant turn" in info.value.message


@pytest.mark.parametrize("name", ["bad.parquet", "bad_saved"])
def test_bad_rows_in_parquet_and_saved_datasets_name_the_row(tmp_path, name):
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "again"}]}
    path = write_dataset(tmp_path / name, [GOOD, GOOD, bad])
    with pytest.raises(LabcycleError, match="no user turn or no assistant turn") as info:
        load_chat_dataset(path)
    assert info.value.where == f"{path}, row 2 (from 0)"


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("missing.jsonl", None, "dataset not found"),
        ("data.csv", "a,b\n", "unsupported dataset format"),
        ("broken.jsonl", '{"messages": [\n', "not valid JSON"),
        ("broken.parquet", "not parquet", "cannot read it as Parquet"),
        ("folder", "", "not a folder written by datasets' save_to_disk"),
    ],
)
def test_unreadable_user_datasets(generated, tmp_path, name, content, words):
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(LabcycleError, match=words) as info:
        mix(generated, tmp_path / "mixed", recipe(datasets=[{"path": str(path), "phase": "skills"}]))
    assert info.value.where.startswith(str(path))


def test_broken_generated_samples_name_the_file_and_line(generated, tmp_path):
    path = generated / FREEFORM / "samples.jsonl"
    with path.open("a") as f:
        f.write(json.dumps({"id": "x", "messages": GOOD["messages"], "metadata": {"kind": "freeform_skill"}}) + "\n")
    with pytest.raises(LabcycleError, match="metadata.leaf_id") as info:
        mix(generated, tmp_path / "mixed", Recipe())
    assert info.value.where == f"{path}:21"
    with pytest.raises(LabcycleError, match="generated samples folder not found"):
        mix(tmp_path / "nope", tmp_path / "mixed", Recipe())


# --- the Prefect task --------------------------------------------------------------------------------


def test_task_fn_and_cache_key_follow_inputs_and_output(generated, tmp_path):
    from labcycle.tasks.mix import stage

    out, r = tmp_path / "mixed", recipe()
    params = {"generated": generated, "output": out, "recipe": r}
    assert stage._task_cache_key(None, params) is None  # nothing written yet: never served from a cache
    summary = mix_task.fn(generated, out, r)
    key = stage._task_cache_key(None, params)
    assert key and mix_task.fn(generated, out, r) == summary  # a complete output is not mixed again
    assert stage._task_cache_key(None, {**params, "recipe": recipe(seed=1)}) is None
    (out / "skills" / "data.jsonl").write_text("")  # damaged: run again rather than trust it
    assert stage._task_cache_key(None, params) is None
    mix_task.fn(generated, out, r)
    assert stage._task_cache_key(None, params) == key
    with (generated / FREEFORM / "samples.jsonl").open("a") as f:
        f.write(json.dumps(record(FREEFORM, "freeform_skill", 99)) + "\n")
    assert stage._task_cache_key(None, params) is None
    assert mix_task.fn(generated, out, r)["phases"]["skills"]["sources"]["skills"] == 33


@pytest.mark.slow
def test_unchanged_inputs_are_a_cache_hit(prefect_harness, generated, tmp_path):
    from prefect import flow

    @flow
    def run(out: str):
        return mix_task(generated, Path(out), Recipe(), return_state=True)

    out = tmp_path / "mixed"
    states = [run(str(out)) for _ in range(3)]
    assert states[0].result() == states[2].result()
    assert states[2].name == "Cached" and states[0].name == "Completed"


def test_reading_a_recipe_imports_neither_prefect_nor_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys\nfrom labcycle.tasks.mix import load_recipe\nload_recipe('taxonomy/recipe.yaml')\n"
            "heavy = [m for m in ('prefect', 'torch', 'transformers', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stdout + res.stderr
    assert mix_task.name == "mix"


@pytest.mark.parametrize("per_leaf, max_share, expected", [(2, 0.2, {KNOW_A: 2, KNOW_B: 1, FREEFORM: 2, GROUNDED: 2}),
                                                             (0, 0.2, {}), (5, 0.5, {KNOW_A: 5, KNOW_B: 3, FREEFORM: 5, GROUNDED: 5})])
def test_held_out_samples_never_enter_training(generated, tmp_path, per_leaf, max_share, expected):
    out = tmp_path / "mixed"
    summary = mix(generated, out, recipe(held_out={"per_leaf": per_leaf, "max_share": max_share}))
    held = [json.loads(line) for line in (out / "held_out.jsonl").read_text().splitlines()]
    assert summary["held_out"]["leaves"] == expected and summary["held_out"]["samples"] == len(held)
    held_ids = {h["id"] for h in held}
    trained = {r["id"].split("#")[0] for p in ("knowledge", "skills") for r in rows(out, p)}
    assert not held_ids & trained
    assert all(h["messages"][-1]["role"] == "assistant" and h["kind"] for h in held)
    again = tmp_path / "again"
    mix(generated, again, recipe(held_out={"per_leaf": per_leaf, "max_share": max_share}))
    assert (again / "held_out.jsonl").read_bytes() == (out / "held_out.jsonl").read_bytes()
