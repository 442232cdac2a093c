"""qna.yaml validation: every rule with a passing and a failing leaf, positions, strictness, the process
pool, and the JSON report's shape."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from labcycle.tasks.taxonomy.validate import (
    MAX_CONTEXT_WORDS,
    MAX_QA_WORDS,
    MAX_SKILL_SEED_WORDS,
    FileReport,
    ValidationReport,
    validate_file,
    validate_files,
)
from tests import leafgen
from tests.leafgen import MUTATIONS, knowledge_old, knowledge_v3, skill

_counter = itertools.count()

KNOWLEDGE = knowledge_v3(1)
FREEFORM = skill(3, grounded=False, seed=2)
GROUNDED = skill(3, grounded=True, seed=3)


def write_leaf(root: Path, folder: str, text: str, *, name: str = "qna.yaml") -> Path:
    path = root / folder / "area" / f"leaf{next(_counter)}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def check(root: Path, folder: str, text: str, *, name: str = "qna.yaml", strict: bool = False) -> FileReport:
    return validate_file(write_leaf(root, folder, text, name=name), root=root, strict=strict)


def where(report_problems: list) -> list[tuple[int, int, str]]:  # type: ignore[type-arg]
    return [(p.line, p.column, p.rule) for p in report_problems]


def line_of(text: str, startswith: str, nth: int = 0) -> int:
    """1-based number of the nth line starting with `startswith`."""
    hits = [i + 1 for i, line in enumerate(text.split("\n")) if line.startswith(startswith)]
    return hits[nth]


def assert_clean(report: FileReport) -> None:
    assert report.errors == [] and report.warnings == [], (report.errors, report.warnings)
    assert report.valid


# --- every kind and version ------------------------------------------------------------------------------

BASE_EXPECTED = {
    "knowledge-v3": ("knowledge", 3, True),
    "freeform-v3": ("freeform_skill", 3, True),
    "grounded-v3": ("grounded_skill", 3, True),
    "freeform-v2": ("freeform_skill", 2, True),
    "grounded-v2": ("grounded_skill", 2, True),
    "freeform-v1": ("freeform_skill", 1, True),  # no version key at all: version 1
    "grounded-v1": ("grounded_skill", 1, True),
    "foundational-v3": ("freeform_skill", 3, True),  # foundational_skills/ holds skills
    "knowledge-v1": ("knowledge", 1, False),
    "knowledge-v2": ("knowledge", 2, False),
}


def test_every_base_is_covered() -> None:
    assert sorted(BASE_EXPECTED) == sorted(b.name for b in leafgen.bases())


@pytest.mark.parametrize("base", leafgen.bases(), ids=lambda b: b.name)
def test_bases_kind_version_and_verdict(tmp_path: Path, base: leafgen.Base) -> None:
    kind, version, valid = BASE_EXPECTED[base.name]
    report = check(tmp_path, base.folder, base.text)
    assert (report.kind, report.version, report.valid) == (kind, version, valid), report.errors
    assert report.warnings == []
    if valid:
        assert report.errors == []
        assert isinstance(report.data, dict) and report.data["created_by"] == "labcycle-tests"


@pytest.mark.parametrize("version", [1, 2])
def test_old_knowledge_versions_are_deprecated(tmp_path: Path, version: int) -> None:
    report = check(tmp_path, "knowledge", knowledge_old(version))
    assert where(report.errors) == [(1, 1, "schema/deprecated")]
    assert "version 3" in report.errors[0].message
    assert check(tmp_path, "knowledge", KNOWLEDGE).valid


# --- required keys ----------------------------------------------------------------------------------------


def drop_top_key(text: str, key: str) -> str:
    """Remove a top-level key with everything nested under it."""
    lines = text.split("\n")
    i = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
    j = i + 1
    while j < len(lines) and lines[j].startswith(" "):
        j += 1
    return "\n".join(lines[:i] + lines[j:])


@pytest.mark.parametrize(
    ("folder", "text", "key"),
    [
        ("knowledge", KNOWLEDGE, "created_by"),
        ("knowledge", KNOWLEDGE, "domain"),
        ("knowledge", KNOWLEDGE, "document_outline"),
        ("knowledge", KNOWLEDGE, "seed_examples"),
        ("knowledge", KNOWLEDGE, "document"),
        ("compositional_skills", FREEFORM, "created_by"),
        ("compositional_skills", FREEFORM, "task_description"),
        ("compositional_skills", FREEFORM, "seed_examples"),
        ("compositional_skills", GROUNDED, "task_description"),
        ("compositional_skills", skill(2, grounded=False, seed=4), "task_description"),
        ("compositional_skills", skill(None, grounded=False, seed=6), "created_by"),
    ],
)
def test_missing_top_level_key(tmp_path: Path, folder: str, text: str, key: str) -> None:
    assert_clean(check(tmp_path, folder, text))
    report = check(tmp_path, folder, drop_top_key(text, key))
    assert where(report.errors) == [(1, 1, "schema/required")]
    assert report.errors[0].message == f"missing required key '{key}'; add {key}:"


def test_version_is_required_by_v3_schemas_so_a_missing_one_means_v1(tmp_path: Path) -> None:
    # v3 requires version, but without the key a file *is* version 1: a skill then passes v1's schema
    # (as in the reference), and a knowledge leaf is deprecated v1.
    skill_report = check(tmp_path, "compositional_skills", drop_top_key(FREEFORM, "version"))
    assert skill_report.version == 1 and skill_report.valid
    knowledge_report = check(tmp_path, "knowledge", drop_top_key(KNOWLEDGE, "version"))
    assert knowledge_report.version == 1
    assert [p.rule for p in knowledge_report.errors] == ["schema/deprecated"]


NESTED_REQUIRED = [
    # (folder, text, edit, key, path, line finder)
    (
        "knowledge", KNOWLEDGE,
        lambda t: re.sub(r"  - context: \|\n(?:      [^\n]*\n)+    questions_and_answers:", "  - questions_and_answers:", t, count=1),
        "context", "seed_examples[0]", "  - questions_and_answers:",
    ),
    (
        "knowledge", KNOWLEDGE,
        lambda t: re.sub(r"    questions_and_answers:\n(?:      [^\n]*\n)+", "", t, count=1),
        "questions_and_answers", "seed_examples[0]", "  - context:",
    ),
    (
        "knowledge", KNOWLEDGE,
        lambda t: re.sub(r"      - question: [^\n]*\n        answer:", "      - answer:", t, count=1),
        "question", "seed_examples[0].questions_and_answers[0]", "      - answer:",
    ),
    (
        "knowledge", KNOWLEDGE,
        lambda t: re.sub(r"\n        answer: \|\n          [^\n]*", "", t, count=1),
        "answer", "seed_examples[0].questions_and_answers[0]", "      - question:",
    ),
    ("knowledge", KNOWLEDGE, lambda t: re.sub(r"  repo: [^\n]*\n", "", t), "repo", "document", "document:"),
    ("knowledge", KNOWLEDGE, lambda t: re.sub(r"  commit: [^\n]*\n", "", t), "commit", "document", "document:"),
    ("knowledge", KNOWLEDGE, lambda t: t.replace("  patterns:\n    - '*.md'\n", ""), "patterns", "document", "document:"),
    (
        "compositional_skills", FREEFORM,
        lambda t: re.sub(r"  - question: [^\n]*\n    answer:", "  - answer:", t, count=1),
        "question", "seed_examples[0]", "  - answer:",
    ),
    (
        "compositional_skills", GROUNDED,
        lambda t: re.sub(r"\n    answer: \|\n      [^\n]*", "", t, count=1),
        "answer", "seed_examples[0]", "  - context:",
    ),
]


@pytest.mark.parametrize(("folder", "text", "edit", "key", "path", "at"), NESTED_REQUIRED, ids=lambda v: v if isinstance(v, str) and "\n" not in v else "")
def test_missing_nested_key(tmp_path: Path, folder: str, text: str, edit, key: str, path: str, at: str) -> None:  # type: ignore[no-untyped-def]
    edited = edit(text)
    assert edited != text
    report = check(tmp_path, folder, edited)
    # The message names the key and where it is missing, at the entry that lacks it.
    assert [(p.line, p.rule, p.message) for p in report.errors] == [
        (line_of(edited, at), "schema/required", f"missing required key '{key}' in {path}; add {key}:")
    ]


# --- unknown keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "text", "mutation", "key", "at", "column", "inside"),
    [
        ("knowledge", KNOWLEDGE, "unknown-top-key", "notes", "notes:", 1, ""),
        ("compositional_skills", FREEFORM, "unknown-top-key", "notes", "notes:", 1, ""),
        ("knowledge", KNOWLEDGE, "unknown-seed-key", "source", "  - source:", 5, " in seed_examples[0]"),
        ("compositional_skills", GROUNDED, "unknown-seed-key", "source", "  - source:", 5, " in seed_examples[0]"),
        ("knowledge", KNOWLEDGE, "document-unknown-key", "branch", "  branch:", 3, " in document"),
    ],
)
def test_unknown_key(tmp_path: Path, folder: str, text: str, mutation: str, key: str, at: str, column: int, inside: str) -> None:
    edited = MUTATIONS[mutation](text)
    report = check(tmp_path, folder, edited)
    assert where(report.errors) == [(line_of(edited, at), column, "schema/unknown-key")]
    assert report.errors[0].message.startswith(f"unknown key '{key}'{inside}; allowed keys are ")


def test_unknown_key_inside_questions_and_answers_is_only_a_warning(tmp_path: Path) -> None:
    edited = MUTATIONS["unknown-qa-key"](KNOWLEDGE)
    report = check(tmp_path, "knowledge", edited)
    assert report.valid and report.errors == []  # the reference's schema lets it through
    at = (line_of(edited, "      - source:"), 9, "schema/unknown-key")
    assert where(report.warnings) == [at]
    assert "'source'" in report.warnings[0].message and "ignored" in report.warnings[0].message

    strict = check(tmp_path, "knowledge", edited, strict=True)
    assert not strict.valid and strict.warnings == []
    assert where(strict.errors) == [at]


# --- counts and uniqueness -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("folder", "text", "whom"), [("knowledge", KNOWLEDGE, "knowledge leaf"), ("compositional_skills", GROUNDED, "skill leaf")])
def test_seed_examples_need_five(tmp_path: Path, folder: str, text: str, whom: str) -> None:
    assert_clean(check(tmp_path, folder, text))  # exactly 5
    report = check(tmp_path, folder, MUTATIONS["four-seeds"](text))
    assert where(report.errors) == [(line_of(text, "seed_examples:"), 1, "schema/min-items")]
    assert report.errors[0].message == f"seed_examples has 4 entries; a {whom} needs at least 5 seed examples"
    assert "needs at least 5" in report.errors[0].message


def test_version_1_skill_needs_only_one_seed(tmp_path: Path) -> None:
    assert_clean(check(tmp_path, "compositional_skills", skill(None, grounded=False, seeds=1)))


def test_questions_and_answers_need_three(tmp_path: Path) -> None:
    edited = MUTATIONS["two-qas"](KNOWLEDGE)
    report = check(tmp_path, "knowledge", edited)
    assert [(p.line, p.column, p.rule, p.message) for p in report.errors] == [
        (
            line_of(edited, "    questions_and_answers:"),
            5,
            "schema/min-items",
            "seed_examples[0].questions_and_answers has 2 entries; a knowledge context needs at least 3",
        )
    ]


def test_patterns_need_one(tmp_path: Path) -> None:
    edited = MUTATIONS["patterns-empty"](KNOWLEDGE)
    report = check(tmp_path, "knowledge", edited)
    assert where(report.errors) == [(line_of(edited, "  patterns:"), 3, "schema/min-items")]
    assert "'*.md'" in report.errors[0].message


@pytest.mark.parametrize(("folder", "text"), [("knowledge", KNOWLEDGE), ("compositional_skills", FREEFORM)])
def test_seed_examples_must_be_unique(tmp_path: Path, folder: str, text: str) -> None:
    edited = MUTATIONS["duplicate-seed"](text)
    report = check(tmp_path, folder, edited)
    assert where(report.errors) == [(line_of(edited, "  - ", 1), 5, "schema/unique")]
    assert report.errors[0].message == "seed_examples[1] repeats seed_examples[0]; every entry must be different"


def test_patterns_must_be_unique(tmp_path: Path) -> None:
    edited = KNOWLEDGE.replace("    - '*.md'\n", "    - '*.md'\n    - docs/*.md\n    - '*.md'\n")
    report = check(tmp_path, "knowledge", edited)
    assert [(p.line, p.rule, p.message) for p in report.errors] == [
        (len(edited.split("\n")) - 1, "schema/unique", "document.patterns[2] repeats document.patterns[0]; every entry must be different")
    ]
    assert check(tmp_path, "knowledge", KNOWLEDGE.replace("    - '*.md'\n", "    - '*.md'\n    - docs/*.md\n")).valid


# --- types and empty values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ("created_by-number", "created_by must be text, found the number 42 (put it in quotes to make it text)"),
        (
            "created_by-bool",
            "created_by must be text, found the boolean true (YAML reads unquoted yes/no/on/off/true/false as booleans; put the text in quotes)",
        ),
        ("created_by-null", "created_by must be text, found nothing (the value is empty)"),
    ],
)
@pytest.mark.parametrize(("folder", "text"), [("knowledge", KNOWLEDGE), ("compositional_skills", FREEFORM)])
def test_type_errors_explain_the_fix(tmp_path: Path, folder: str, text: str, mutation: str, message: str) -> None:
    report = check(tmp_path, folder, MUTATIONS[mutation](text))
    assert [(p.line, p.column, p.rule, p.message) for p in report.errors] == [(2, 1, "schema/type", message)]


def test_unquoted_no_as_an_answer_is_a_boolean(tmp_path: Path) -> None:
    edited = re.sub(r"    answer: \|\n      [^\n]*\n", "    answer: no\n", FREEFORM, count=1)
    report = check(tmp_path, "compositional_skills", edited)
    assert [(p.line, p.rule) for p in report.errors] == [(line_of(edited, "    answer: no"), "schema/type")]
    assert report.errors[0].message.startswith("seed_examples[0].answer must be text, found the boolean false (YAML reads")
    assert check(tmp_path, "compositional_skills", edited.replace("answer: no", "answer: 'no'")).valid


def test_seed_examples_must_be_a_list(tmp_path: Path) -> None:
    report = check(tmp_path, "compositional_skills", MUTATIONS["seeds-not-list"](FREEFORM))
    assert [(p.rule, p.message) for p in report.errors] == [("schema/type", "seed_examples must be a list, found the text 'none'")]


@pytest.mark.parametrize(("folder", "text"), [("knowledge", KNOWLEDGE), ("compositional_skills", GROUNDED)])
def test_empty_text_is_an_error(tmp_path: Path, folder: str, text: str) -> None:
    report = check(tmp_path, folder, MUTATIONS["created_by-empty"](text))
    assert [(p.line, p.column, p.rule, p.message) for p in report.errors] == [(2, 1, "schema/empty", "created_by is empty; write some text")]


def test_empty_nested_text_is_an_error(tmp_path: Path) -> None:
    edited = re.sub(r"question: Summarise item 1 [^\n]*", 'question: ""', GROUNDED, count=1)
    report = check(tmp_path, "compositional_skills", edited)
    assert [(p.line, p.column, p.rule, p.message) for p in report.errors] == [
        (line_of(edited, '    question: ""'), 5, "schema/empty", "seed_examples[1].question is empty; write some text")
    ]


# --- version handling -------------------------------------------------------------------------------------------

# version on line 3, so positions are checked against the key, not a default of 1:1
VERSION_LAST = FREEFORM.replace("version: 3\n", "").replace("seed_examples:", "version: 3\nseed_examples:", 1)


def test_version_key_anywhere(tmp_path: Path) -> None:
    assert line_of(VERSION_LAST, "version:") == 3
    report = check(tmp_path, "compositional_skills", VERSION_LAST)
    assert report.version == 3 and report.valid


def test_quoted_version_selects_the_schema_which_flags_its_type(tmp_path: Path) -> None:
    report = check(tmp_path, "compositional_skills", VERSION_LAST.replace("version: 3", "version: '3'"))
    assert report.version == 3
    assert ("schema/type", "version must be a whole number, found the text '3'") in [(p.rule, p.message) for p in report.errors]
    assert {p.line for p in report.errors} == {3}


def test_unknown_version_stops_validation(tmp_path: Path) -> None:
    report = check(tmp_path, "compositional_skills", VERSION_LAST.replace("version: 3", "version: 4") + "notes: ignored\n")
    assert report.version is None
    assert [(p.line, p.column, p.rule, p.message) for p in report.errors] == [
        (3, 1, "version/unknown", "version 4 is not a qna.yaml version labcycle knows (1, 2, 3); use version: 3")
    ]


def test_boolean_version_is_invalid(tmp_path: Path) -> None:
    report = check(tmp_path, "compositional_skills", VERSION_LAST.replace("version: 3", "version: true"))
    assert report.version is None
    assert where(report.errors) == [(3, 1, "version/invalid")]
    assert "found the boolean true" in report.errors[0].message


@pytest.mark.parametrize(("mutation", "rule"), [("version-string", "schema/type"), ("version-4", "version/unknown"), ("version-bool", "version/invalid")])
def test_version_mutations_of_every_base(tmp_path: Path, mutation: str, rule: str) -> None:
    for base in leafgen.bases():
        edited = MUTATIONS[mutation](base.text)
        if edited == base.text:
            continue  # no version key to change
        report = check(tmp_path, base.folder, edited)
        assert not report.valid, base.name
        assert rule in [p.rule for p in report.errors], (base.name, report.errors)


# --- lint ----------------------------------------------------------------------------------------------------


def test_lint_only_from_version_2(tmp_path: Path) -> None:
    v1 = MUTATIONS["trailing-spaces"](skill(None, grounded=False, seed=6))
    assert "  \n" in v1
    assert_clean(check(tmp_path, "compositional_skills", v1))  # as the reference: v1 files are not linted

    v3 = MUTATIONS["trailing-spaces"](FREEFORM)
    report = check(tmp_path, "compositional_skills", v3)
    assert [(p.line, p.column, p.rule, p.message) for p in report.errors] == [
        (1, 11, "yamllint/trailing-spaces", "trailing spaces; delete the spaces at the end of the line")
    ]


@pytest.mark.parametrize(
    ("mutation", "rule"),
    [("trailing-blank-line", "yamllint/empty-lines"), ("no-final-newline", "yamllint/new-line-at-end-of-file")],
)
def test_lint_warnings_are_errors_as_ilab_runs_it(tmp_path: Path, mutation: str, rule: str) -> None:
    report = check(tmp_path, "knowledge", MUTATIONS[mutation](KNOWLEDGE))
    assert [p.rule for p in report.errors] == [rule] and report.warnings == []


def test_crlf_and_unicode_files_are_valid(tmp_path: Path) -> None:
    for mutation in ("crlf", "unicode-text"):
        assert_clean(check(tmp_path, "knowledge", MUTATIONS[mutation](KNOWLEDGE)))


def test_duplicate_key_reported_once(tmp_path: Path) -> None:
    # the reader and yamllint both see it; the user is told once, by the reader, with the first line
    report = check(tmp_path, "compositional_skills", MUTATIONS["duplicate-key"](FREEFORM))
    assert where(report.errors) == [(3, 1, "yaml/duplicate-key")]
    assert "(first at line 2)" in report.errors[0].message


# --- file names -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qna.yml", "QNA.yaml"])
def test_misnamed_leaf_is_an_error_saying_to_rename(tmp_path: Path, name: str) -> None:
    report = check(tmp_path, "compositional_skills", FREEFORM, name=name)
    assert [(p.line, p.column, p.rule, p.message) for p in report.errors] == [
        (1, 1, "file/name", f"a leaf file must be named qna.yaml, not {name}; rename it (git mv {name} qna.yaml)")
    ]
    # the content is still checked, so one run shows everything to fix
    report = check(tmp_path, "compositional_skills", MUTATIONS["created_by-number"](FREEFORM), name=name)
    assert [p.rule for p in report.errors] == ["file/name", "schema/type"]


# --- classification ---------------------------------------------------------------------------------------


def test_classification(tmp_path: Path) -> None:
    assert check(tmp_path, "knowledge", KNOWLEDGE).kind == "knowledge"
    assert check(tmp_path, "compositional_skills", FREEFORM).kind == "freeform_skill"
    assert check(tmp_path, "compositional_skills", GROUNDED).kind == "grounded_skill"
    # one seed with a context is enough to make a skill grounded
    one_context = FREEFORM.replace("  - question: Summarise item 4", "  - context: Report 4.\n    question: Summarise item 4")
    assert check(tmp_path, "compositional_skills", one_context).kind == "grounded_skill"
    # an unreadable knowledge leaf is still reported as knowledge, from its folder
    assert check(tmp_path, "knowledge", "- a\n").kind == "knowledge"
    assert check(tmp_path, "compositional_skills", "- a\n").kind == "unknown"


def test_foundational_skill_is_validated_as_a_skill(tmp_path: Path) -> None:
    report = check(tmp_path, "foundational_skills", FREEFORM)
    assert report.kind == "freeform_skill" and report.valid
    # the skill schema applies: a knowledge-only key is unknown, and task_description is required
    report = check(tmp_path, "foundational_skills", FREEFORM.replace("created_by:", "domain: risk\ncreated_by:"))
    assert [(p.rule, p.message.split(";")[0]) for p in report.errors] == [("schema/unknown-key", "unknown key 'domain'")]
    assert "task_description" in report.errors[0].message
    report = check(tmp_path, "foundational_skills", drop_top_key(FREEFORM, "task_description"))
    assert [p.rule for p in report.errors] == ["schema/required"]
    # as in the reference, outside knowledge/ a `document` key makes it knowledge
    assert check(tmp_path, "foundational_skills", KNOWLEDGE).kind == "knowledge"
    assert check(tmp_path, "foundational_skills", KNOWLEDGE).valid


# --- size guidance -------------------------------------------------------------------------------------------


def pad_words(text: str, anchor: str, n: int) -> str:
    """n more words in the value that holds `anchor`, written before it (no trailing spaces for yamllint)."""
    assert anchor in text
    return text.replace(anchor, "word " * n + anchor, 1)


def context0_words(text: str) -> int:
    return len(yaml.safe_load(text)["seed_examples"][0]["context"].split())


def test_context_word_limit(tmp_path: Path) -> None:
    anchor = "Context 0 of leaf 1. "
    at_limit = pad_words(KNOWLEDGE, anchor, MAX_CONTEXT_WORDS - context0_words(KNOWLEDGE))
    assert context0_words(at_limit) == MAX_CONTEXT_WORDS == 500
    assert_clean(check(tmp_path, "knowledge", at_limit))

    over = pad_words(at_limit, anchor, 1)
    report = check(tmp_path, "knowledge", over)
    assert report.valid and report.errors == []
    assert [(p.line, p.column, p.rule, p.message) for p in report.warnings] == [
        (6, 5, "size/context-words", "seed_examples[0].context has 501 words; keep a knowledge context at or under 500")
    ]
    strict = check(tmp_path, "knowledge", over, strict=True)
    assert not strict.valid and where(strict.errors) == [(6, 5, "size/context-words")] and strict.warnings == []


@pytest.mark.parametrize(
    ("anchor", "key"),
    [("What does part 1 of context 2 in leaf 1 say?", "question"), ("Part 1 says ", "answer")],
)
def test_question_and_answer_word_limit(tmp_path: Path, anchor: str, key: str) -> None:
    over = pad_words(KNOWLEDGE, anchor, MAX_QA_WORDS + 1)
    report = check(tmp_path, "knowledge", over)
    assert report.valid
    assert [p.rule for p in report.warnings] == ["size/qa-words"]
    warning = report.warnings[0]
    index = "seed_examples[2]" if key == "question" else "seed_examples[0]"
    assert warning.message.startswith(f"{index}.questions_and_answers[1].{key} has ")
    assert warning.message.endswith(f"words; keep each question and answer at or under {MAX_QA_WORDS}")
    assert over.split("\n")[warning.line - 1].lstrip(" -").startswith(f"{key}:")
    assert not check(tmp_path, "knowledge", over, strict=True).valid


def test_skill_seed_words_in_total(tmp_path: Path) -> None:
    data = yaml.safe_load(GROUNDED)
    total = sum(len(s[k].split()) for s in data["seed_examples"] for k in ("context", "question", "answer"))
    at_limit = pad_words(GROUNDED, "Item 4 is about ", MAX_SKILL_SEED_WORDS - total)
    assert_clean(check(tmp_path, "compositional_skills", at_limit))

    over = pad_words(at_limit, "Item 0 is about ", 1)  # spread over seeds: the total counts
    report = check(tmp_path, "compositional_skills", over)
    assert report.valid
    assert [(p.line, p.column, p.rule) for p in report.warnings] == [(4, 1, "size/seed-words")]
    assert "2301 words" in report.warnings[0].message
    strict = check(tmp_path, "compositional_skills", over, strict=True)
    assert [p.rule for p in strict.errors] == ["size/seed-words"] and not strict.valid


# --- everything at once, in order ---------------------------------------------------------------------------


def test_all_errors_of_a_file_at_once_sorted_by_line(tmp_path: Path) -> None:
    text = (
        FREEFORM.replace("task_description: Write short risk notes, set 2", "task_description: Write short risk notes, set 2   ")
        .replace("created_by: labcycle-tests", "created_by: 42")
        + "notes: extra\n"
    )
    report = check(tmp_path, "compositional_skills", text)
    last = len(text.split("\n")) - 1
    # lint (line 3) runs before the schema (lines 2 and last), yet the report is in line order
    assert where(report.errors) == [(2, 1, "schema/type"), (3, 48, "yamllint/trailing-spaces"), (last, 1, "schema/unknown-key")]


def test_all_reader_problems_at_once(tmp_path: Path) -> None:
    text = FREEFORM.replace("created_by: labcycle-tests", "created_by: !custom x\ncreated_by: b\ntask_description: c")
    report = check(tmp_path, "compositional_skills", text)
    rules = [p.rule for p in report.errors]
    assert rules.count("yaml/duplicate-key") == 2 and "yaml/tag" in rules
    assert [p.line for p in report.errors] == sorted(p.line for p in report.errors)


# --- many files ------------------------------------------------------------------------------------------


def many_leaves(root: Path, n: int) -> list[Path]:
    combos = [(b, m) for b in leafgen.bases() for m in MUTATIONS]
    paths = []
    for i in range(n):
        base, mutation = combos[(i * 7) % len(combos)]
        paths.append(write_leaf(root, base.folder, MUTATIONS[mutation](base.text)))
    return paths


def test_process_pool_gives_the_same_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = many_leaves(tmp_path, 250)
    pools: list[int] = []

    class CountingPool(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            pools.append(kwargs.get("max_workers", 0))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", CountingPool)
    parallel = validate_files(paths, root=tmp_path, workers=2)
    assert pools == [2]  # the pool really ran
    serial = validate_files(paths, root=tmp_path, workers=1)
    assert pools == [2]
    assert parallel.to_json() == serial.to_json()
    assert [f.data for f in parallel.files] == [f.data for f in serial.files]
    assert [f.path for f in parallel.files] == [os.path.relpath(p) for p in paths]  # input order kept
    valid = sum(f.valid for f in serial.files)
    assert 0 < valid < len(paths)  # a real mix of verdicts
    assert not serial.valid


# --- JSON report ---------------------------------------------------------------------------------------------

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["line", "column", "rule", "message"],
    "additionalProperties": False,
    "properties": {
        "line": {"type": "integer", "minimum": 1},
        "column": {"type": "integer", "minimum": 1},
        "rule": {"type": "string", "pattern": "^[a-z]+/[a-z0-9-]+$"},
        "message": {"type": "string", "minLength": 1},
    },
}
REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["files"],
    "additionalProperties": False,
    "properties": {
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "kind", "version", "valid", "errors", "warnings"],
                "additionalProperties": False,
                "properties": {
                    "path": {"type": "string", "minLength": 1},
                    "kind": {"enum": ["knowledge", "freeform_skill", "grounded_skill", "unknown"]},
                    "version": {"type": ["integer", "null"], "enum": [1, 2, 3, None]},
                    "valid": {"type": "boolean"},
                    "errors": {"type": "array", "items": PROBLEM_SCHEMA},
                    "warnings": {"type": "array", "items": PROBLEM_SCHEMA},
                },
            },
        }
    },
}


def test_json_report_shape(tmp_path: Path) -> None:
    Draft202012Validator.check_schema(REPORT_SCHEMA)
    paths = [
        write_leaf(tmp_path, "knowledge", KNOWLEDGE),
        write_leaf(tmp_path, "knowledge", MUTATIONS["unknown-qa-key"](KNOWLEDGE)),
        write_leaf(tmp_path, "compositional_skills", MUTATIONS["version-4"](FREEFORM)),
        write_leaf(tmp_path, "compositional_skills", "- a\n"),
        write_leaf(tmp_path, "compositional_skills", GROUNDED, name="qna.yml"),
    ]
    report = validate_files(paths, root=tmp_path, workers=1)
    assert isinstance(report, ValidationReport)
    doc = json.loads(json.dumps(report.to_json()))  # plain JSON, nothing that needs a custom encoder
    errors = sorted(Draft202012Validator(REPORT_SCHEMA).iter_errors(doc), key=str)
    assert errors == [], [e.message for e in errors]
    assert list(doc) == ["files"]
    files = doc["files"]
    assert [list(f) for f in files] == [["path", "kind", "version", "valid", "errors", "warnings"]] * 5
    assert [list(e) for f in files for e in f["errors"] + f["warnings"]] == [["line", "column", "rule", "message"]] * sum(
        len(f["errors"]) + len(f["warnings"]) for f in files
    )
    assert [(f["kind"], f["version"], f["valid"], len(f["errors"]), len(f["warnings"])) for f in files] == [
        ("knowledge", 3, True, 0, 0),
        ("knowledge", 3, True, 0, 1),
        ("freeform_skill", None, False, 1, 0),
        ("unknown", None, False, 1, 0),
        ("grounded_skill", 3, False, 1, 0),
    ]
    assert "data" not in files[0]
