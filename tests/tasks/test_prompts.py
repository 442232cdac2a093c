"""The shipped prompt templates (tasks/generate/prompts/<pipeline>/*.j2) render with StrictUndefined from
realistic variables built from the example taxonomy, using only the variables available at their step,
and ask for exactly the output format their parser expects."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
import yaml
from jinja2 import meta

import labcycle.tasks.generate as generate_pkg
from labcycle.tasks.generate.blocks import SAFETY_CATEGORIES

REPO_ROOT = Path(__file__).resolve().parents[2]
TAXONOMY = REPO_ROOT / "taxonomy"
PROMPTS = Path(generate_pkg.__file__).parent / "prompts"
PIPELINES = Path(generate_pkg.__file__).parent / "pipelines"

# pipeline -> template -> (the variables available when it is rendered, the output format it asks for)
# Formats: "json_list" (array of strings), "json_qa" (array of {question, answer}), "text",
# "verdict" ({reason, verdict}), "score" ({reason, score}), "safety" ({reason, categories, verdict}); None for
# the system message.
BASE = {"leaf", "examples"}
TEMPLATES: dict[str, dict[str, tuple[set[str], str | None]]] = {
    "knowledge": {
        "system.j2": (BASE, None),
        "generate_qa.j2": (BASE | {"chunk", "num"}, "json_qa"),
        "judge_faithfulness.j2": (BASE | {"chunk", "question", "answer"}, "verdict"),
        "judge_relevancy.j2": (BASE | {"chunk", "question", "answer"}, "score"),
        "judge_question.j2": (BASE | {"chunk", "question", "answer"}, "score"),
        "judge_safety.j2": (BASE | {"chunk", "question", "answer", "categories"}, "safety"),
    },
    "freeform_skills": {
        "system.j2": (BASE, None),
        "generate_questions.j2": (BASE | {"num"}, "json_list"),
        "judge_question.j2": (BASE | {"question"}, "score"),
        "generate_answer.j2": (BASE | {"question"}, "text"),
        "judge_pair.j2": (BASE | {"question", "answer"}, "score"),
        "judge_safety.j2": (BASE | {"question", "answer", "categories"}, "safety"),
    },
    "grounded_skills": {
        "system.j2": (BASE, None),
        "generate_context.j2": (BASE, "text"),
        "generate_questions.j2": (BASE | {"context", "num"}, "json_list"),
        "judge_question.j2": (BASE | {"context", "question"}, "score"),
        "generate_answer.j2": (BASE | {"context", "question"}, "text"),
        "judge_pair.j2": (BASE | {"context", "question", "answer"}, "score"),
        "judge_grounding.j2": (BASE | {"context", "question", "answer"}, "verdict"),
        "judge_safety.j2": (BASE | {"context", "question", "answer", "categories"}, "safety"),
    },
}
SCORE_RANGES = {
    ("knowledge", "judge_relevancy.j2"): 2,
    ("knowledge", "judge_question.j2"): 1,
    ("freeform_skills", "judge_question.j2"): 1,
    ("freeform_skills", "judge_pair.j2"): 3,
    ("grounded_skills", "judge_question.j2"): 1,
    ("grounded_skills", "judge_pair.j2"): 3,
}
CASES = [(p, t) for p, ts in TEMPLATES.items() for t in ts]


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(PROMPTS)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _qna(relative: str) -> dict:
    return yaml.safe_load((TAXONOMY / relative / "qna.yaml").read_text(encoding="utf-8"))


def _leaf(leaf_id: str, kind: str, qna: dict) -> dict:
    return {
        "id": leaf_id,
        "kind": kind,
        "domain": qna.get("domain", ""),
        "task_description": qna.get("task_description", ""),
        "document_outline": qna.get("document_outline", ""),
        "created_by": qna.get("created_by", ""),
    }


def _chunk() -> str:
    """A realistic chunk: the first ~300 words of a shipped knowledge document."""
    doc = sorted((TAXONOMY / "documents").rglob("*.md"))[0].read_text(encoding="utf-8")
    return " ".join(doc.split(" ")[:300])


def _variables(pipeline: str, n_examples: int = 3) -> dict:
    if pipeline == "knowledge":
        rel = "knowledge/technology/generative_ai/risks"
        qna = _qna(rel)
        flat = [
            {"context": seed["context"], "question": qa["question"], "answer": qa["answer"]}
            for seed in qna["seed_examples"]
            for qa in seed["questions_and_answers"]
        ]
        examples = [flat[0], flat[1], flat[3]][:n_examples]  # two from one context, one from another
        chunk = _chunk()
        return {
            "leaf": _leaf(rel, "knowledge", qna),
            "examples": examples,
            "chunk": chunk,
            "question": "What is indirect prompt injection?",
            "answer": "An attack in which instructions are hidden in content the model reads for a user.",
            "num": 5,
            "categories": list(SAFETY_CATEGORIES),
        }
    rel, kind = {
        "freeform_skills": ("compositional_skills/writing/risk_summaries", "freeform_skill"),
        "grounded_skills": ("compositional_skills/extraction/risk_register", "grounded_skill"),
    }[pipeline]
    qna = _qna(rel)
    examples = [
        {"context": s.get("context", ""), "question": s["question"], "answer": s["answer"]} for s in qna["seed_examples"]
    ][:n_examples]
    last = qna["seed_examples"][-1]
    return {
        "leaf": _leaf(rel, kind, qna),
        "examples": examples,
        "context": last.get("context", ""),
        "question": last["question"],
        "answer": last["answer"],
        "num": 4,
        "categories": list(SAFETY_CATEGORIES),
    }


def _render(pipeline: str, template: str, n_examples: int = 3) -> tuple[str, dict]:
    available, _ = TEMPLATES[pipeline][template]
    full = _variables(pipeline, n_examples)
    variables = {k: v for k, v in full.items() if k in available}
    return _env().get_template(f"{pipeline}/{template}").render(**variables), variables


def test_every_template_is_present():
    for pipeline, templates in TEMPLATES.items():
        present = {p.name for p in (PROMPTS / pipeline).glob("*.j2")}
        assert set(templates) <= present, (pipeline, set(templates) - present)


def test_shipped_pipeline_specs_name_existing_templates():
    specs = sorted(PIPELINES.glob("*.yaml"))
    if not specs:
        pytest.skip("no shipped pipeline specs")
    for spec in specs:
        data = yaml.safe_load(spec.read_text(encoding="utf-8"))
        folder = PROMPTS / data["prompts"]
        for block in data["blocks"]:
            if "template" in block:
                assert (folder / block["template"]).is_file(), (spec.name, block["template"])


@pytest.mark.parametrize(("pipeline", "template"), CASES)
def test_template_uses_only_variables_available_at_its_step(pipeline, template):
    env = _env()
    source = (PROMPTS / pipeline / template).read_text(encoding="utf-8")
    used = meta.find_undeclared_variables(env.parse(source))
    available, _ = TEMPLATES[pipeline][template]
    assert used <= available, used - available


@pytest.mark.parametrize(("pipeline", "template"), CASES)
@pytest.mark.parametrize("n_examples", [3, 1])
def test_template_renders(pipeline, template, n_examples):
    text, variables = _render(pipeline, template, n_examples)
    assert text.strip()
    for marker in ("{{", "}}", "{%", "%}", "{#"):
        assert marker not in text
    assert "Undefined" not in text
    lines = text.strip().splitlines()
    if template != "system.j2":
        assert 5 <= len(lines), text
    # Whatever the template reads ends up in the prompt.
    source = (PROMPTS / pipeline / template).read_text(encoding="utf-8")
    used = meta.find_undeclared_variables(_env().parse(source))
    for name in ("chunk", "context", "question", "answer"):
        if name in used:
            assert variables[name].strip().splitlines()[0] in text, name
    if "num" in used:
        assert str(variables["num"]) in text
    if "examples" in used and "ex.question" in source:
        for ex in variables["examples"]:
            assert ex["question"].strip().splitlines()[0] in text


def test_templates_are_short():
    for pipeline, templates in TEMPLATES.items():
        for template in templates:
            n = len((PROMPTS / pipeline / template).read_text(encoding="utf-8").splitlines())
            assert n <= 40, (pipeline, template, n)


@pytest.mark.parametrize(("pipeline", "template"), CASES)
def test_template_asks_for_its_output_format(pipeline, template):
    text, _ = _render(pipeline, template)
    fmt = TEMPLATES[pipeline][template][1]
    if fmt is None:
        return
    if fmt == "json_list":
        assert "JSON array" in text and "strings" in text and '["' in text
    elif fmt == "json_qa":
        assert "JSON array" in text and '"question"' in text and '"answer"' in text
        assert '[{"question": "...", "answer": "..."}]' in text
    elif fmt == "verdict":
        assert "JSON object" in text and '"reason"' in text and '"verdict"' in text
        assert '"YES"' in text and '"NO"' in text
        assert '"score"' not in text
    elif fmt == "score":
        assert "JSON object" in text and '"reason"' in text and '"score"' in text
        assert '"verdict"' not in text
        top = SCORE_RANGES[(pipeline, template)]
        last_line = [ln for ln in text.splitlines() if '"score"' in ln][0]
        assert " or ".join([", ".join(str(i) for i in range(top)), str(top)]) in last_line
    elif fmt == "safety":
        assert "JSON object" in text and '"reason"' in text and '"categories"' in text and '"verdict"' in text
        assert '"SAFE"' in text and '"UNSAFE"' in text and '"score"' not in text
        assert all(c in text for c in SAFETY_CATEGORIES)
    elif fmt == "text":
        assert "JSON" not in text and "plain text" in text


def test_knowledge_examples_grouped_by_context():
    text, variables = _render("knowledge", "generate_qa.j2")
    contexts = {ex["context"] for ex in variables["examples"]}
    assert len(contexts) == 2
    assert text.count("Excerpt: ") == len(contexts)
    for c in contexts:
        assert text.count(c.strip().splitlines()[0]) == 1
    assert variables["leaf"]["domain"] in text
