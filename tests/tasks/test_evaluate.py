"""The evaluation stage: metrics against hand-computed values, suite YAML and its errors, judgements read
tolerantly, aggregation with pairwise fairness, and, on the session's real vLLM server, a real adapter
trained on the tiny model: logprobs that agree with transformers, and a whole evaluation whose report the
gate accepts (with the tiny model as a judge that writes noise).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labcycle.errors import LabcycleError
from labcycle.tasks.evaluate import branch, report
from labcycle.tasks.evaluate.judge import Judgement, read_score
from labcycle.tasks.evaluate.metrics import lcs_length, normalize_answer, rouge_l, token_f1
from labcycle.tasks.evaluate.questions import Question, held_out_questions
from labcycle.tasks.evaluate.suite import load_suite
from labcycle.tasks.gate import decide, load_policy
from tests.evalhelp import LEAVES, REPO_ROOT, TAXONOMY, TUNED_ANSWER, train_adapter, write_manifest

SUITES = REPO_ROOT / "tasks" / "evaluate" / "suites"


# --- metrics -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction, reference, expected", [
    ("The cat sat on the mat.", "the cat sat on the mat", 1.0),  # articles and punctuation do not count
    ("a cat", "the dog", 0.0),
    # pred {cat, sat, down}, gold {cat, sat, on, mat}: 2 shared; P 2/3, R 2/4 -> F1 = 2*(2/3)(1/2)/(2/3+1/2) = 4/7
    ("cat sat down", "cat sat on mat", 4 / 7),
    # repeated tokens count as often as both sides have them: pred {x, x, y}, gold {x, y, y}: shared x, y -> 2/3
    ("x x y", "x y y", 2 / 3),
    ("", "", 1.0),
    ("", "something", 0.0),
    ("The.", "an", 1.0),  # both normalise to nothing
])
def test_token_f1(prediction, reference, expected):
    assert token_f1(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize("prediction, reference, expected", [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    # LCS("police killed the gunman", "the gunman was killed by police") = "the gunman" -> 2: P 2/4, R 2/6 -> 0.4
    ("police killed the gunman", "the gunman was killed by police", 0.4),
    # LCS(a b c d e, a x c y e) = a c e -> 3: P = R = 3/5 -> 0.6
    ("a b c d e", "a x c y e", 0.6),
    ("Hello, World!", "hello world", 1.0),  # case and punctuation
    ("one two", "three four", 0.0),
    ("", "anything", 0.0),
])
def test_rouge_l(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_lcs_and_normalisation():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook example (BCBA)
    assert lcs_length([], ["a"]) == 0
    assert normalize_answer("  The Answer, an   ANSWER! ") == "answer answer"


# --- judgements ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, score", [
    ('{"reason": "close to the reference", "score": 7}', 7),
    ('{"score": 10, "reason": "x"}', 10),
    ('```json\n{"reason": "ok", "score": 3}\n```', 3),
    ('{"reason": "ok", "score": "8"}', 8),
    ('{"reason": "ok", "score": 7.0}', 7),
    ('{"reason": "ok", "score": 7.5}', None),
    ('{"reason": "ok", "score": 0}', None),
    ('{"reason": "ok", "score": 11}', None),
    ('{"reason": "ok", "score": true}', None),
    ('{"reason": "I would give 9 here"}', None),  # a number inside the reason is not a score
    ('{"reason": "cut off before the sco', None),
    ('{"reason": "unterminated", "score": 6', 6),
    ("Score: 7/10. Mostly right.", 7),
    ("I rate it 4.", 4),
    ("rating 3.5", None),
    ("\x00\x01 garbage ]]}{", None),
    ("", None),
])
def test_read_score_is_tolerant_and_never_raises(text, score):
    assert read_score(text)[0] == score


# --- suites --------------------------------------------------------------------------------------------


def test_shipped_suites_load():
    mc = load_suite(SUITES / "general_mc.yaml")
    assert (mc.name, mc.metric, mc.higher_is_better, len(mc.docs)) == ("general_mc", "accuracy", True, 40)
    assert all(len(d.choices) == 4 == len(set(d.choices)) for d in mc.docs)
    assert sorted({d.gold for d in mc.docs}) == [0, 1, 2, 3]  # the right answer is not always in one place
    assert mc.docs[0].context.startswith("The following are general knowledge questions.\n\nQuestion: ")
    assert mc.docs[0].context.endswith("\nAnswer:")
    text = load_suite(SUITES / "general_text.yaml")
    assert (text.metric, text.higher_is_better, len(text.docs)) == ("perplexity", False, 15)
    assert all(len(d.text.split()) > 20 for d in text.docs)
    assert load_suite(SUITES / "general_mc.yaml", max_items=5).docs == mc.docs[:5]


def _suite(tmp_path: Path, yaml_text: str, rows: list[dict] | None = None, name: str = "s.yaml") -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (rows if rows is not None else
                                                           [{"q": "2+2?", "opts": ["3", "4"], "a": 1, "gold": "4"}])))
    path = tmp_path / name
    path.write_text(yaml_text)
    return path


MC = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: data.jsonl
output_type: multiple_choice
doc_to_text: "Q: {{ q }}\\nA:"
doc_to_choice: opts
doc_to_target: a
"""


@pytest.mark.parametrize("change, choices, gold", [
    ({}, ("3", "4"), 1),
    ({"doc_to_choice: opts": "doc_to_choice: \"{{ opts }}\""}, ("3", "4"), 1),  # a template giving a list literal
    ({"doc_to_choice: opts": "doc_to_choice: [\"no\", \"yes\"]"}, ("no", "yes"), 1),  # a YAML list
    ({"doc_to_target: a": "doc_to_target: gold"}, ("3", "4"), 1),  # the text of the right choice
    ({"doc_to_target: a": "doc_to_target: \"{{ a }}\""}, ("3", "4"), 1),  # a template giving an index
    ({"doc_to_target: a": "doc_to_target: 0"}, ("3", "4"), 0),  # a constant index
])
def test_doc_to_fields_templates_and_constants(tmp_path, change, choices, gold):
    text = MC
    for old, new in change.items():
        text = text.replace(old, new)
    suite = load_suite(_suite(tmp_path, text))
    (doc,) = suite.docs
    assert (doc.context, doc.choices, doc.gold) == ("Q: 2+2?\nA:", choices, gold)
    assert suite.target_delimiter == " " and suite.digest


@pytest.mark.parametrize("edit, where, message", [
    (("output_type: multiple_choice", "output_type: multiple_choice\nnum_fewshot: 5"), ":7:1",
     "num_fewshot: not supported; a suite may have task, dataset_path"),
    (("output_type: multiple_choice", "output_type: generate_until"), ":6:", "'generate_until' is not supported"),
    (("dataset_path: json", "dataset_path: cais/mmlu"), ":2:", "only json is supported"),
    (("    test: data.jsonl", "    test: missing.jsonl"), "missing.jsonl", "data file not found"),
    (("doc_to_text: \"Q: {{ q }}\\nA:\"", "doc_to_text: \"Q: {{ question }}\""), "data.jsonl:1",
     "doc_to_text: the template failed on this document"),
    (("doc_to_target: a", "doc_to_target: \"five\""), "data.jsonl:1", "neither an index nor one of the choices"),
    (("doc_to_target: a", "doc_to_target: 7"), "data.jsonl:1", "not an index into the 2 choices"),
    (("doc_to_choice: opts", "doc_to_choice: q"), "data.jsonl:1", "a list of at least two strings"),
    (("output_type: multiple_choice", "output_type: multiple_choice\ntest_split: validation"), ":4:",
     "test_split 'validation' has no entry"),
    (("doc_to_choice: opts\n", ""), ":1:1", "'doc_to_choice' is a required property"),
])
def test_suite_errors_name_the_place_and_the_fix(tmp_path, edit, where, message):
    path = _suite(tmp_path, MC.replace(*edit))
    with pytest.raises(LabcycleError, match=message) as err:
        load_suite(path)
    assert where in str(err.value.where)


def test_a_suite_that_is_not_yaml_or_not_there(tmp_path):
    with pytest.raises(LabcycleError, match="regression suite not found"):
        load_suite(tmp_path / "nope.yaml")
    with pytest.raises(LabcycleError, match="mapping of task keys"):
        load_suite(_suite(tmp_path, "- a\n- b\n"))


# --- questions and aggregation -------------------------------------------------------------------------


def _leaves() -> dict:
    import yaml

    from labcycle.leaves import LeafInput

    return {p: LeafInput(id=p, kind=k, hash="0" * 64, qna=yaml.safe_load((TAXONOMY / p / "qna.yaml").read_text()))
            for k, p in LEAVES.items()}


def test_seed_questions_ask_knowledge_closed_book_and_grounded_with_context():
    from labcycle.tasks.evaluate.questions import seed_questions

    leaves = _leaves()
    know = seed_questions(leaves[LEAVES["knowledge"]])
    assert len(know) == 15 and know[0].context and know[0].messages[0]["content"] == know[0].question
    grounded = seed_questions(leaves[LEAVES["grounded_skill"]])
    assert grounded[0].messages[0]["content"] == f"{grounded[0].context}\n\n{grounded[0].question}"
    free = seed_questions(leaves[LEAVES["freeform_skill"]])
    assert all(q.context == "" and q.messages[0]["content"] == q.question for q in free)
    assert len({q.id for q in know + grounded + free}) == len(know + grounded + free)


def test_held_out_rows(tmp_path):
    leaves = _leaves()
    free = LEAVES["freeform_skill"]
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i}?"},
                          {"role": "assistant", "content": f"A{i}."}], "leaf_id": free} for i in range(3)]
    rows.append({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
                 "metadata": {"leaf_id": "knowledge/other"}})
    path = tmp_path / "held.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions, counts = held_out_questions(path, leaves, per_leaf=2)
    assert counts == {"rows": 4, "used": 2, "other_leaves": 1, "over_limit": 1}
    assert [q.question for q in questions] == ["Q0?", "Q1?"] and questions[0].reference == "A0."
    assert questions[0].messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q0?"})
    broken = {"messages": [{"role": "user", "content": "x"}], "leaf_id": free}
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(LabcycleError, match="followed by an assistant turn") as err:
        held_out_questions(path, leaves, per_leaf=None)
    assert err.value.where == f"{path}:2"


def _q(leaf: str, kind: str, i: int) -> Question:
    return Question(id=f"{leaf}#seed-{i}", leaf_id=leaf, kind=kind, source="seed",
                    messages=({"role": "user", "content": f"q{i}"},), question=f"q{i}", reference="the answer is blue")


def test_aggregation_is_pairwise_fair_and_averages_over_leaves():
    k, f = LEAVES["knowledge"], LEAVES["freeform_skill"]
    questions = [_q(k, "knowledge", i) for i in range(3)] + [_q(f, "freeform_skill", 0)]
    answers = [{"base": "blue", "candidate": "the answer is blue"}, {"base": "red", "candidate": "blue"},
               {"base": None, "candidate": "x"},  # did not fit one model's context: out for both
               {"base": "no", "candidate": "answer blue"}]
    j = lambda s: Judgement(score=s, error=None if s else "unreadable judgement")  # noqa: E731
    judgements = [{"base": j(2), "candidate": j(8)}, {"base": j(None), "candidate": j(9)},  # failed for one: out for both
                  None, {"base": j(1), "candidate": j(6)}]
    records = branch.score_records(questions, answers, judgements)
    block = branch.aggregate(records, {k: "knowledge", f: "freeform_skill"}, judge_requested=True)
    know = block["leaves"][k]
    assert (know["questions"], know["judged"], know["judge_failures"], know["skipped"]) == (2, 1, 1, 1)
    assert know["base"]["judge"] == 2 and know["candidate"]["judge"] == 8
    assert know["candidate"]["token_f1"] == pytest.approx((1.0 + token_f1("blue", "the answer is blue")) / 2)
    assert block["overall"]["candidate"]["judge"] == pytest.approx((8 + 6) / 2)  # mean over leaves, not questions
    assert block["by_kind"]["freeform_skill"]["base"]["judge"] == 1
    assert block["judge"]["failures"] == {"unreadable judgement": 1} and block["judge_available"]

    no_judge = branch.aggregate(branch.score_records(questions, answers, None), {k: "knowledge", f: "freeform_skill"}, False)
    assert no_judge["judge_available"] is False and no_judge["overall"]["base"]["judge"] is None
    with pytest.raises(LabcycleError, match="no question of this leaf fits"):
        branch.aggregate(records[2:3], {k: "knowledge"}, True)


def _fake_report(judge: bool) -> dict:
    k, f = LEAVES["knowledge"], LEAVES["freeform_skill"]
    questions = [_q(k, "knowledge", 0), _q(f, "freeform_skill", 0)]
    answers = [{"base": "red", "candidate": "the answer is blue"}, {"base": "green", "candidate": "purple"}]
    judgements = [{"base": Judgement(2), "candidate": Judgement(9)}, {"base": Judgement(7), "candidate": Judgement(3)}]
    records = branch.score_records(questions, answers, judgements if judge else None)
    block = branch.aggregate(records, {k: "knowledge", f: "freeform_skill"}, judge)
    suites = {"mc": {"metric": "accuracy", "higher_is_better": True, "items": 40, "base": 0.5, "candidate": 0.45,
                     "details": [{"where": "x:1"}]},
              "text": {"metric": "perplexity", "higher_is_better": False, "items": 15, "base": 12.0, "candidate": 11.0}}
    rows = report.answer_rows(records, suites)
    assert rows[-1] == {"type": "regression", "suite": "mc", "where": "x:1"}
    return report.build(block, {"suites": suites}, {"models": {"base": "b", "candidate": "c", "judge": None}})


@pytest.mark.parametrize("judge", [True, False])
def test_report_shape_and_markdown_and_the_gate_reads_it(judge):
    rep = _fake_report(judge)
    assert set(rep["branch"]) >= {"judge_available", "leaves", "overall", "by_kind"}
    for leaf in rep["branch"]["leaves"].values():
        assert set(leaf) >= {"kind", "questions", "base", "candidate"}
        assert set(leaf["base"]) == set(leaf["candidate"]) == {"judge", "token_f1", "rouge_l"}
    assert "details" not in rep["regression"]["suites"]["mc"]
    decision = decide(rep, load_policy(None), cycle=1)
    assert decision.metric == ("judge" if judge else "rouge_l")
    md = report.markdown(rep)
    assert "| **mc** ⚠ | accuracy | 40 | **0.500 → 0.450 (−0.050) ⚠** |" in md
    assert "| text | perplexity (lower is better) | 15 | 12.00 → 11.00 (−1.00) |" in md
    assert (f"| **`{LEAVES['freeform_skill']}`** ⚠ |" in md) == judge  # 7 -> 3 by the judge; rouge_l is 0 -> 0


# --- real scoring on the session's vLLM server ---------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model that answers everything with TUNED_ANSWER (20 steps, a few seconds)."""
    return train_adapter(tiny_model, tmp_path_factory.mktemp("eval-adapter"))


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    return write_manifest(tmp_path)


@pytest.mark.slow
def test_a_local_judge_on_the_base_model_is_asked_through_the_evaluation_server(tmp_path):
    from labcycle.tasks.evaluate.stage import JudgeSpec, judge_placement

    base, other = tmp_path / "student", tmp_path / "teacher"
    base.mkdir(), other.mkdir()
    (tmp_path / "link").symlink_to(base)
    same = JudgeSpec(endpoint=None, model=str(tmp_path / "link"))  # the same folder by another path
    assert judge_placement(None, same, base, cuda=False) == "server"
    assert judge_placement(None, same, base, cuda=True) == "server"
    # another local model: its own engine; on a GPU the two engines split the memory
    assert judge_placement(None, JudgeSpec(endpoint=None, model=str(other)), base, cuda=False) == "own"
    assert judge_placement(None, JudgeSpec(endpoint=None, model=str(other)), base, cuda=True) == "split-gpu"
    # a judge behind an endpoint, or an evaluation server the user runs: nothing to share
    assert judge_placement(None, JudgeSpec(endpoint="http://judge:8000/v1", model=str(base)), base, cuda=True) == "own"
    assert judge_placement("http://eval:8000/v1", same, base, cuda=True) == "own"
    assert judge_placement(None, None, base, cuda=True) == "own"


def test_vllm_logprobs_agree_with_transformers(vllm_server, tiny_model, adapter):
    """The scores are real: vLLM's prompt logprobs for base and adapter match transformers (+ PEFT) in fp32,
    and the adapter moves them."""
    import asyncio

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labcycle.tasks.evaluate.loglik import LoglikClient
    from labcycle.tasks.evaluate.stage import load_adapter

    text = "A river starts as small streams high in the mountains. " + TUNED_ANSWER

    async def served() -> tuple[list[int], list, list, tuple[list[int], int]]:
        await load_adapter(vllm_server.base_url, "eval-logprobs", adapter)
        async with LoglikClient(vllm_server.base_url, vllm_server.model) as client:
            ids = await client.tokenize(text)
            (base,) = await client.prompt_logprobs(vllm_server.model, [ids])
            (tuned,) = await client.prompt_logprobs("eval-logprobs", [ids])
            pair = await client.split("A river starts as", " small streams")
            return ids, base, tuned, pair

    ids, base, tuned, (whole, start) = asyncio.run(served())
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert tok(text)["input_ids"] == ids
    assert whole == tok("A river starts as small streams")["input_ids"] and start == len(tok("A river starts as")["input_ids"])
    x = torch.tensor([ids])
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        hf_base = torch.log_softmax(model(x).logits.float(), -1)[0]
        hf_tuned = torch.log_softmax(PeftModel.from_pretrained(model, adapter)(x).logits.float(), -1)[0]
    for served_lp, hf in ((base, hf_base), (tuned, hf_tuned)):
        assert served_lp[0] is None
        expected = [hf[i - 1, ids[i]].item() for i in range(1, len(ids))]
        assert served_lp[1:] == pytest.approx(expected, abs=0.05)  # vLLM computes in bf16
    assert max(abs(a - b) for a, b in zip(base[1:], tuned[1:])) > 0.5


@pytest.mark.slow
def test_evaluate_with_the_tiny_model_as_judge(vllm_server, adapter, manifest, tmp_path):
    """The whole stage on the session server: every leaf and both shipped suites; the judge is the tiny
    random model, whose judgements are noise but, asked for JSON, always readable. The gate accepts the
    report; a second call with the same inputs reuses it without touching any server."""
    from labcycle.tasks.evaluate.stage import evaluate, shipped_suites
    from labcycle.teacher.openai_client import OpenAITeacher

    judge = OpenAITeacher(vllm_server.base_url, vllm_server.model, max_concurrency=8)
    out = tmp_path / "cycle-1" / "eval"
    # 20 of the 40 questions: on CPU every choice is scored alone (see loglik.py), and half is proof enough.
    rep = evaluate(manifest, adapter, vllm_server.model_dir, out, endpoint=vllm_server.base_url, judge=judge,
                   suites=shipped_suites(), held_out=None, max_tokens=24, judge_max_tokens=48, max_items=20)

    b = rep["branch"]
    assert list(b["leaves"]) == list(LEAVES.values())
    assert b["judge_available"] is True and b["judge"]["judged_pairs"] + b["judge"]["failed_pairs"] == 15 + 6 + 5
    for kind, leaf_id in LEAVES.items():
        leaf = b["leaves"][leaf_id]
        assert leaf["kind"] == kind and leaf["questions"] == {"knowledge": 15}.get(kind, leaf["questions"])
        for side in ("base", "candidate"):
            assert 1 <= leaf[side]["judge"] <= 10 and 0 <= leaf[side]["token_f1"] <= 1 and 0 <= leaf[side]["rouge_l"] <= 1
    assert set(b["by_kind"]) == set(LEAVES) and b["overall"]["leaves"] == 3
    suites = rep["regression"]["suites"]
    assert {n: (s["metric"], s["higher_is_better"], s["items"]) for n, s in suites.items()} == {
        "general_mc": ("accuracy", True, 20), "general_text": ("perplexity", False, 15)}
    assert 0 <= suites["general_mc"]["base"] <= 1 and suites["general_text"]["base"] > 1
    assert rep["models"]["candidate"].startswith("candidate-") and rep["models"]["judge"] == vllm_server.model

    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    answers = [r["answers"] for r in rows if r["type"] == "branch"]
    assert len(answers) == 26, [a["candidate"] for a in answers]
    assert sum(a["candidate"] == TUNED_ANSWER for a in answers) >= 20, [a["candidate"] for a in answers]
    assert all(a["base"] != TUNED_ANSWER for a in answers)  # the base is not served the adapter
    mc = [r for r in rows if r["type"] == "regression" and r["suite"] == "general_mc"]
    assert len(mc) == 20 and any(r["base"]["loglikelihoods"] != r["candidate"]["loglikelihoods"] for r in mc)
    assert json.loads((out / "report.json").read_text()) == rep
    md = (out / "report.md").read_text()
    assert "| suite | metric | items | base → candidate |" in md and "scores are noise" in md

    decision = decide(rep, load_policy(None), cycle=1)
    assert decision.metric == "judge" and decision.decision in ("pass", "fail")

    again = evaluate(manifest, adapter, vllm_server.model_dir, out, endpoint="http://127.0.0.1:9/v1", judge=judge,
                     suites=shipped_suites(), held_out=None, max_tokens=24, judge_max_tokens=48, max_items=20)
    assert again == rep


@pytest.mark.slow
def test_evaluate_without_structured_outputs_counts_unreadable_judgements(vllm_server, adapter, manifest, tmp_path):
    """A judge asked for free text writes noise: its unreadable judgements are counted, never fatal, and the
    pairs it failed on carry no judge score for either model. Held-out rows join the seed questions."""
    from labcycle.tasks.evaluate.stage import evaluate
    from labcycle.teacher.openai_client import OpenAITeacher

    free = LEAVES["freeform_skill"]
    held = tmp_path / "held_out.jsonl"
    held.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Write one line about risk {i}."},
                                                     {"role": "assistant", "content": "Risk needs review."}],
                                        "leaf_id": free}) + "\n" for i in range(2)))
    judge = OpenAITeacher(vllm_server.base_url, vllm_server.model, max_concurrency=8, structured_mode="none")
    rep = evaluate(manifest, adapter, vllm_server.model_dir, tmp_path / "eval", endpoint=vllm_server.base_url, judge=judge,
                   suites=[], held_out=held, max_tokens=16, judge_max_tokens=24, changed_leaves=[free])
    b = rep["branch"]
    leaf = b["leaves"][free]
    assert list(b["leaves"]) == [free] and leaf["questions"] == 6 + 2 and leaf["sources"] == {"seed": 6, "held_out": 2}
    assert leaf["judged"] + leaf["judge_failures"] == 8 and b["judge"]["failed_pairs"] == leaf["judge_failures"]
    if leaf["judge_failures"]:
        assert set(b["judge"]["failures"]) <= {"unreadable judgement", "prompt too long for the judge"}
    assert b["judge_available"] == (leaf["judged"] > 0)
    assert (leaf["base"]["judge"] is None) == (leaf["judged"] == 0)
    assert rep["regression"] == {"suites": {}} and rep["questions"]["held_out"]["used"] == 2
    decide(rep, load_policy(None), cycle=1)  # judge or fallback, the gate reads it


@pytest.mark.slow
def test_the_evaluate_task_leaves_the_report_as_an_artifact(prefect_harness, vllm_server, adapter, manifest, tmp_path):
    from prefect import flow
    from prefect.artifacts import Artifact

    from labcycle.tasks.evaluate.stage import evaluate_task
    from labcycle.teacher.openai_client import OpenAITeacher

    @flow
    def run(judge=None) -> dict:  # type: ignore[no-untyped-def]
        return evaluate_task(manifest, adapter, vllm_server.model_dir, tmp_path / "eval", endpoint=vllm_server.base_url,
                             judge=judge, suites=[SUITES / "general_text.yaml"], held_out=None, max_tokens=8,
                             changed_leaves=[LEAVES["grounded_skill"]], max_items=3)

    rep = run(None)
    assert rep["branch"]["judge_available"] is False and rep["regression"]["suites"]["general_text"]["items"] == 3
    artifact = Artifact.get("eval-report")
    assert artifact is not None and artifact.data == (tmp_path / "eval" / "report.md").read_text()
    assert "Judge: none configured" in artifact.data
    assert decide(rep, load_policy(None), cycle=1).metric == "rouge_l"
    # A teacher as the judge is a task input like any other (not hashed for a cache).
    judged = run(OpenAITeacher(vllm_server.base_url, vllm_server.model, max_concurrency=4))
    assert judged["branch"]["judge_available"] and judged["models"]["judge"] == vllm_server.model
    assert "Judge: 5 question pairs scored 1-10" in Artifact.get("eval-report").data
