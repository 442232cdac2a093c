"""The regression backends (labcycle's scorer and lm-evaluation-harness) and the knowledge multiple-choice
suite: task loading, item building and the report mapping without a server; the whole evaluation stage on
the tiny model with either backend; and the differential check on a real model (SmolLM2): both backends,
same server, same items, same accuracy for base and a candidate adapter."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from labcycle.errors import LabcycleError
from labcycle.tasks.evaluate import knowledge_mc, lmeval
from labcycle.tasks.evaluate.questions import Question
from tests.evalhelp import LEAVES, train_adapter, write_manifest

SUITES = Path(__file__).resolve().parents[2] / "tasks" / "evaluate" / "suites"


# --- without a server -----------------------------------------------------------------------------------


def test_lmeval_reads_the_shipped_suites_with_data_files_next_to_the_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the harness would read data_files relative to here
    mc, text = lmeval.load_task(SUITES / "general_mc.yaml", 20), lmeval.load_task(SUITES / "general_text.yaml")
    assert (mc.name, mc.output_type, mc.metric, mc.limit) == ("general_mc", "multiple_choice", "accuracy", 20)
    assert (text.name, text.metric, text.config["doc_to_text"]) == ("general_text", "perplexity", "")
    assert mc.config["dataset_kwargs"]["data_files"] == {"test": str((SUITES / "general_mc.jsonl").resolve())}
    assert mc.digest and mc.digest != text.digest


def test_lmeval_reads_harness_yaml_features(tmp_path):
    """What labcycle's own suite format lacks: include: and !function, as MMLU's and HellaSwag's YAMLs use."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mmlu.jsonl").write_text(json.dumps({"question": "2+2?", "choices": ["3", "4", "5", "6"],
                                                               "answer": 1}) + "\n")
    (tmp_path / "utils.py").write_text("def process_docs(ds):\n    return ds\n")
    (tmp_path / "_template.yaml").write_text(
        "dataset_path: json\noutput_type: multiple_choice\ntest_split: test\n"
        "doc_to_text: \"{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:\"\n"
        "doc_to_choice: [A, B, C, D]\ndoc_to_target: answer\n")
    (tmp_path / "mmlu_local.yaml").write_text("include: _template.yaml\ntask: mmlu_local\n"
                                              "dataset_kwargs:\n  data_files:\n    test: data/mmlu.jsonl\n"
                                              "process_docs: !function utils.process_docs\n")
    task = lmeval.load_task(tmp_path / "mmlu_local.yaml")
    assert task.name == "mmlu_local" and task.output_type == "multiple_choice" and callable(task.config["process_docs"])
    assert task.config["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "data" / "mmlu.jsonl")


@pytest.mark.parametrize("yaml_text, message", [
    ("task: g\ndataset_path: json\noutput_type: generate_until\n", "output_type 'generate_until' is not supported"),
    ("task: g\ndataset_path: json\n", "output_type 'generate_until' is not supported"),  # the harness's default
    ("group: mmlu\ntask: [a, b]\n", "a group YAML"),
    ("dataset_path: json\noutput_type: multiple_choice\n", "needs `task:`"),
    ("task: g\noutput_type: multiple_choice\ndataset_path: json\ndataset_kwargs: {data_files: {test: nope.jsonl}}\n",
     "data file not found"),
])
def test_lmeval_refuses_what_the_report_cannot_hold(tmp_path, yaml_text, message):
    path = tmp_path / "t.yaml"
    path.write_text(yaml_text)
    with pytest.raises(LabcycleError, match=message):
        lmeval.load_task(path)
    with pytest.raises(LabcycleError, match="not found"):
        lmeval.load_task(tmp_path / "missing.yaml")


def test_the_lmeval_entry_has_the_labcycle_entry_shape():
    """Harness results become the entry regression.evaluate_suite writes: the gate and report read either."""
    mc = lmeval.HarnessTask("mc", Path("mc.yaml"), "multiple_choice", {})
    docs = (lmeval.DocScores(loglikelihoods=(-1.0, -2.0), pick=0, correct_norm=True),
            lmeval.DocScores(loglikelihoods=(-1.0, -0.5), pick=1, correct_norm=False))
    base = lmeval.SideScores(docs, (0, 0), (0, 1))
    entry = lmeval._entry(mc, {"base": base, "candidate": base}, 1.0)
    assert {k: entry[k] for k in ("metric", "higher_is_better", "items", "base", "candidate", "acc_norm")} == {
        "metric": "accuracy", "higher_is_better": True, "items": 2, "base": 0.5, "candidate": 0.5,
        "acc_norm": {"base": 0.5, "candidate": 0.5}}
    assert entry["details"][1] == {"where": "mc[1]", "gold": 0, "base": {"pick": 1, "loglikelihoods": [-1.0, -0.5]},
                                   "candidate": {"pick": 1, "loglikelihoods": [-1.0, -0.5]}}
    text = lmeval.HarnessTask("t", Path("t.yaml"), "loglikelihood_rolling", {})
    side = lmeval.SideScores((lmeval.DocScores(loglikelihood=-10.0, tokens=5, words=4),), (None,), (0,))
    entry = lmeval._entry(text, {"base": side, "candidate": side}, 1.0)
    assert entry["metric"] == "perplexity" and entry["higher_is_better"] is False
    assert entry["base"] == pytest.approx(2.718281828 ** 2) and entry["word_perplexity"]["base"] == pytest.approx(2.718281828 ** 2.5)
    assert (entry["tokens"], entry["words"]) == (5, 4)


def _questions(leaf: str, pairs: list[tuple[str, str]], kind: str = "knowledge") -> list[Question]:
    return [Question(id=f"{leaf}#seed-{i}", leaf_id=leaf, kind=kind, source="seed", messages=(), question=q, reference=a)
            for i, (q, a) in enumerate(pairs)]


def test_knowledge_mc_items_pit_each_answer_against_its_leafs_other_answers(tmp_path):
    qs = _questions("knowledge/science/water", [(f"Q{i}?", f"Answer {i}.") for i in range(6)])
    qs += _questions("knowledge/art/one", [("Only?", "The only answer.")])  # no distractor: no item
    qs += _questions("compositional_skills/x", [("Write?", "A.")], kind="freeform_skill")
    qs += [Question(id="knowledge/science/water#held-out-0", leaf_id="knowledge/science/water", kind="knowledge",
                    source="held_out", messages=(), question="H?", reference="Held.")]
    items = knowledge_mc.build_items(qs)
    assert [i.id for i in items] == [f"knowledge/science/water#seed-{i}" for i in range(6)]
    for i, item in enumerate(items):
        assert len(item.options) == 4 and item.options[item.gold] == f"Answer {i}."
        assert len(set(item.options)) == 4 and all(o.startswith("Answer ") for o in item.options)
    assert knowledge_mc.build_items(qs) == items  # deterministic
    assert len({i.gold for i in items}) > 1  # the right answer is not always in one place
    row = items[0].row()
    assert row["prompt"].startswith("The following are multiple choice questions (with answers) about science water.\n\nQ0?\nA. ")
    assert row["prompt"].endswith("\nD. " + items[0].options[3] + "\nAnswer:") and row["letters"] == ["A", "B", "C", "D"]

    path = knowledge_mc.write_suite(items, tmp_path / "mc")
    from labcycle.tasks.evaluate.suite import load_suite

    suite = load_suite(path)  # both backends read it
    assert suite.name == "knowledge_mc" and len(suite.docs) == 6 and suite.docs[0].context == row["prompt"]
    assert suite.docs[0].choices == ("A", "B", "C", "D") and suite.docs[0].gold == items[0].gold
    assert lmeval.load_task(path).output_type == "multiple_choice"
    assert knowledge_mc.write_suite([], tmp_path / "none") is None

    details = [{"gold": it.gold, "base": {"pick": it.gold}, "candidate": {"pick": (it.gold + (i % 2)) % 4}}
               for i, it in enumerate(items)]
    assert knowledge_mc.per_leaf(items, details) == {"knowledge/science/water": knowledge_mc.LeafScore(6, 1.0, 0.5)}


MMLU_LOCAL = """task: mmlu_local
dataset_path: json
dataset_kwargs: {data_files: {test: mmlu.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
"""
ARC_LOCAL = """task: arc_easy_local
dataset_path: json
dataset_kwargs: {data_files: {test: arc.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices.text}}"
doc_to_target: "{{choices.label.index(answerKey)}}"
"""
TRAILING = """task: trailing
dataset_path: json
dataset_kwargs: {data_files: {test: mmlu.jsonl}}
output_type: multiple_choice
description: "About {{subject}}:\\n"
doc_to_text: "{{question}}\\n"
doc_to_choice: choices
doc_to_target: answer
target_delimiter: ""
"""


def test_both_backends_render_the_same_prompts(tmp_path):
    """The prompts, choices and right answers labcycle renders are the harness's own, for the shipped suite,
    the MMLU and ARC YAMLs of docs/evaluation.md, and a description template with trailing newlines."""
    from lm_eval.api.task import ConfigurableTask

    from labcycle.tasks.evaluate.suite import load_suite

    (tmp_path / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": " What is 2+2? ", "subject": "math", "choices": ["3", "4", "5", "22"], "answer": 1},
        {"question": "Which is a gas?", "subject": "chemistry", "choices": ["Iron", "Salt", "Neon", "Gold"], "answer": 2}]))
    (tmp_path / "arc.jsonl").write_text(json.dumps({"question": "Which is warmest?", "answerKey": "C",
                                                     "choices": {"text": ["ice", "snow", "steam"], "label": ["A", "B", "C"]}}) + "\n")
    paths = [SUITES / "general_mc.yaml"]
    for name, text in (("mmlu.yaml", MMLU_LOCAL), ("arc.yaml", ARC_LOCAL), ("trailing.yaml", TRAILING)):
        (tmp_path / name).write_text(text)
        paths.append(tmp_path / name)
    for path in paths:
        ours = load_suite(path, 5)
        task = ConfigurableTask(config=dict(lmeval.load_task(path).config))
        theirs = list(task.test_docs())[:5]
        assert len(ours.docs) == len(theirs), path
        for mine, doc in zip(ours.docs, theirs):
            choices = task.doc_to_choice(doc)
            target = task.doc_to_target(doc)
            gold = target if isinstance(target, int) else choices.index(target)
            assert (mine.context, list(mine.choices), mine.gold) == (task.fewshot_context(doc, 0), choices, gold), path
        assert ours.target_delimiter == task.config.target_delimiter


def test_config_selects_the_backend_and_the_knowledge_suite():
    from labcycle.flows.config import from_mapping

    cfg = from_mapping({"evaluation": {"regression": {"backend": "lm-eval"}, "knowledge_mc": True}})
    assert cfg.evaluation.regression.backend == "lm-eval" and cfg.evaluation.knowledge_mc is True
    default = from_mapping({})
    assert default.evaluation.regression.backend == "labcycle" and default.evaluation.knowledge_mc is False
    with pytest.raises(LabcycleError, match="backend"):
        from_mapping({"evaluation": {"regression": {"backend": "harness"}}})


# --- the stage on the tiny model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_adapter(tiny_model, tmp_path_factory.mktemp("backends-adapter"))


@pytest.mark.slow
def test_the_stage_scores_knowledge_mc_per_leaf_with_either_backend(vllm_server, tiny_adapter, tmp_path):
    """knowledge_mc on the tiny model through the whole stage: one item per knowledge seed question, a
    per-leaf breakdown, the gate's regression/knowledge_mc rule; lm-eval gives the same picks."""
    from labcycle.tasks.evaluate.stage import evaluate
    from labcycle.tasks.gate import decide, load_policy

    manifest = write_manifest(tmp_path)
    reports = {}
    for backend in ("labcycle", "lm-eval"):
        out = tmp_path / backend / "eval"
        reports[backend] = evaluate(manifest, tiny_adapter, vllm_server.model_dir, out, endpoint=vllm_server.base_url,
                                    judge=None, suites=[SUITES / "general_mc.yaml"], held_out=None, max_tokens=4,
                                    max_items=3, safety=None, knowledge_mc=True, regression_backend=backend)
        assert (out / "knowledge_mc" / "knowledge_mc.jsonl").is_file()
    leaf = LEAVES["knowledge"]
    for backend, rep in reports.items():
        entry = rep["regression"]["suites"]["knowledge_mc"]
        assert (entry["metric"], entry["items"]) == ("accuracy", 15), backend
        assert set(entry["leaves"]) == {leaf} and entry["leaves"][leaf]["items"] == 15
        assert rep["regression"]["suites"]["general_mc"]["items"] == 3  # max_items cuts only the general suites
        assert rep["settings"]["regression_backend"] == backend and rep["settings"]["knowledge_mc"] is True
        rules = {r.name for r in decide(rep, load_policy(None), cycle=1).rules}
        assert "regression/knowledge_mc" in rules
    assert reports["lm-eval"]["regression"]["suites"]["knowledge_mc"].get("backend") == "lm-eval"
    ours, theirs = (reports[b]["regression"]["suites"] for b in ("labcycle", "lm-eval"))
    for name in ("knowledge_mc", "general_mc"):
        assert (ours[name]["base"], ours[name]["candidate"]) == (theirs[name]["base"], theirs[name]["candidate"]), name
        assert ours[name].get("leaves") == theirs[name].get("leaves")
    md = (tmp_path / "labcycle" / "eval" / "report.md").read_text()
    assert "### knowledge_mc: per leaf" in md and f"| `{leaf}` | 15 |" in md


# --- the differential check on a real model -------------------------------------------------------------


def _random_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter with random (not zero) weights on every attention projection: a candidate whose
    log-likelihoods differ from the base's, made in seconds without training."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(out)
    return out


@pytest.mark.slow
def test_lmeval_and_labcycle_agree_on_a_real_model(smollm2, smollm2_server, tmp_path):
    """The shipped suites' first items, base and a candidate adapter on one vLLM server (LoRA on, as the
    evaluation's own): lm-evaluation-harness's local-completions and labcycle's scorer give the same
    per-choice log-likelihoods, picks and accuracy. Perplexity differs by definition: the harness also scores
    a text's first token (predicted from the end-of-text token), labcycle does not without a BOS token."""
    from labcycle.tasks.evaluate.loglik import LoglikClient
    from labcycle.tasks.evaluate.regression import evaluate_regression
    from labcycle.tasks.evaluate.stage import load_adapter
    from labcycle.tasks.evaluate.suite import load_suite

    server = smollm2_server
    adapter = _random_adapter(smollm2, tmp_path / "adapter")
    asyncio.run(load_adapter(server.base_url, "diff-candidate", adapter))
    served = {"base": server.model, "candidate": "diff-candidate"}
    n_mc, n_text = 20, 4

    async def ours():  # type: ignore[no-untyped-def]
        suites = [load_suite(SUITES / "general_mc.yaml", n_mc), load_suite(SUITES / "general_text.yaml", n_text)]
        async with LoglikClient(server.base_url, server.model, score_concurrency=1) as client:
            return (await evaluate_regression({"base": client, "candidate": client}, suites, served))["suites"]

    mine = asyncio.run(ours())
    endpoints = {side: lmeval.Endpoint(server.base_url, name, smollm2, server.max_model_len) for side, name in served.items()}
    tasks = [lmeval.load_task(SUITES / "general_mc.yaml", n_mc), lmeval.load_task(SUITES / "general_text.yaml", n_text)]
    harness = lmeval.evaluate_regression(endpoints, tasks)["suites"]

    a, b = mine["general_mc"], harness["general_mc"]
    figures = {s: (a[s], b[s], a["acc_norm"][s], b["acc_norm"][s]) for s in ("base", "candidate")}
    print("general_mc (labcycle, lm-eval, acc_norm labcycle, lm-eval):", figures)
    for side in ("base", "candidate"):
        assert a[side] == b[side] and a["acc_norm"][side] == b["acc_norm"][side], figures
        for x, y in zip(a["details"], b["details"]):
            assert x["gold"] == y["gold"] and x[side]["pick"] == y[side]["pick"]
            assert x[side]["loglikelihoods"] == pytest.approx(y[side]["loglikelihoods"], abs=1e-3)
    assert a["items"] == b["items"] == n_mc
    assert any(x["base"]["loglikelihoods"] != x["candidate"]["loglikelihoods"] for x in a["details"])  # the adapter is served

    t, u = mine["general_text"], harness["general_text"]
    print("general_text perplexity (labcycle, lm-eval):", {s: (t[s], u[s]) for s in ("base", "candidate")},
          "tokens", t["tokens"], u["tokens"])
    assert u["tokens"] == t["tokens"] + n_text  # one more token per text: the first, after end-of-text
    assert t["words"] == u["words"]
    for side in ("base", "candidate"):
        assert 1 < t[side] < 1000 and 1 < u[side] < 1000


def test_the_evaluate_flow_passes_the_backend_and_knowledge_mc_to_the_stage(tmp_path, monkeypatch):
    from labcycle.flows import evaluate as flow

    seen = {}
    monkeypatch.setattr(flow, "evaluate_task", lambda *args, **kwargs: seen.update(kwargs) or {"ok": True})
    config = tmp_path / "labcycle.yaml"
    config.write_text("evaluation:\n  judge: false\n  regression: {backend: lm-eval}\n  knowledge_mc: true\n")
    result = flow.evaluate.fn("m.json", "adapter", "base", "out", config=str(config))  # the body, without a flow run
    assert result == {"ok": True}
    assert (seen["regression_backend"], seen["knowledge_mc"]) == ("lm-eval", True)
