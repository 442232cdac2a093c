"""In-process yamllint: the C-scanner fast path must report exactly what yamllint's own path reports,
and must leave yamllint's module functions as it found them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yamllint import linter
from yamllint import parser as yl_parser

from labcycle.tasks.taxonomy import lint as lint_mod
from labcycle.tasks.taxonomy.lint import LintProblem, lint
from tests import leafgen

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "taxonomy").rglob("qna.yaml"))
BASES = leafgen.bases()


def outcome(text: str, fast: bool) -> list[LintProblem] | tuple[str, str]:
    # yamllint itself crashes on some broken files (a stray '}' trips its indentation rule); then the
    # fast path must crash the same way, not invent problems.
    try:
        return lint(text, fast=fast)
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def same_on_both_paths(text: str) -> list[LintProblem]:
    fast = outcome(text, fast=True)
    slow = outcome(text, fast=False)
    assert fast == slow, f"fast path differs from yamllint's own path on:\n{text!r}"
    assert isinstance(fast, list), f"yamllint raised {fast} on:\n{text!r}"
    return fast


def test_example_taxonomy_is_present() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("mutation", list(leafgen.MUTATIONS))
@pytest.mark.parametrize("base", BASES, ids=lambda b: b.name)
def test_fast_path_matches_yamllint_on_fixtures(base: leafgen.Base, mutation: str) -> None:
    same_on_both_paths(leafgen.MUTATIONS[mutation](base.text))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_fast_path_matches_yamllint_on_example_taxonomy(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert same_on_both_paths(text) == []  # the shipped examples are lint-clean


# Hypothesis: small edits of real leaves, biased to what trips yamllint and the scanners.
SEEDS = [b.text for b in BASES[:4]] + [p.read_text(encoding="utf-8") for p in EXAMPLES]
INSERTS = [" ", "  ", "\n", "\n\n\n", "# note\n", " # c", "#", "\t", ":", ": ", " :", "-", "- ", ",", "'", '"',
           "é", "✓", "\u00a0", "\u2028", "\r\n", "\r", "{", "}", "[", "]", "&a ", "*a", "!", "|", ">", "?", "%"]


@st.composite
def mutated_leaf(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:pos] + draw(st.sampled_from(INSERTS)) + text[pos:]
        else:
            text = text[:pos] + text[pos + draw(st.integers(1, 3)) :]
    return text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_leaf())
def test_fast_path_matches_yamllint_on_random_edits(text: str) -> None:
    assert outcome(text, fast=True) == outcome(text, fast=False), text


def test_fast_path_really_skips_pythons_scanner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Otherwise the equality tests above would compare yamllint with itself."""
    calls: list[str] = []
    original = lint_mod._original_tokens

    def counting(buffer: str):  # type: ignore[no-untyped-def]
        calls.append(buffer)
        return original(buffer)

    monkeypatch.setattr(lint_mod, "_original_tokens", counting)
    clean = BASES[0].text
    lint(clean)
    assert calls == []
    lint(clean.replace("\n  - ", "\n\t- ", 1))  # tabs take yamllint's own path
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        # libyaml accepts a block-scalar header followed by '#'; PyYAML (so yamllint) reports a syntax error
        ("answer: |# note\n  text\n", "syntax"),
        # in flow collections libyaml reads `what?` as one scalar, PyYAML stops at '?'
        ("q: [what?, x]\n", "syntax"),
        # without a final newline libyaml ends a last-line comment on a line of its own
        ("- a\n- b: c\n  d:  # c e", "colons"),
        # a stray closing bracket: the error is found at a different token by each
        ("a: 1\nb: }[x, y]\nc: {d: e}\n", "syntax"),
    ],
)
def test_where_libyaml_and_pyyaml_disagree_yamllint_decides(text: str, rule: str) -> None:
    problems = same_on_both_paths(text)
    assert rule in [p.rule for p in problems]


# --- problems users see --------------------------------------------------------------------------


def test_trailing_spaces_found_at_line_and_column() -> None:
    text = "version: 3\ncreated_by: me   \ndomain: x\n"
    problems = same_on_both_paths(text)
    assert [(p.line, p.column, p.rule, p.message) for p in problems] == [(2, 15, "trailing-spaces", "trailing spaces")]


def test_missing_final_newline() -> None:
    problems = same_on_both_paths("version: 3\ncreated_by: me")
    assert [(p.line, p.column, p.rule) for p in problems] == [(2, 15, "new-line-at-end-of-file")]


def test_too_many_blank_lines_at_end() -> None:
    problems = same_on_both_paths("version: 3\ncreated_by: me\n\n\n")
    assert [(p.line, p.rule) for p in problems] == [(4, "empty-lines")]
    assert "too many blank lines" in problems[0].message
    assert problems[0].level == "warning"  # yamllint's rating; validation treats it as an error (strict)


def test_line_length_is_disabled_as_in_the_reference() -> None:
    assert same_on_both_paths("created_by: " + "x" * 500 + "\n") == []


def test_syntax_error_is_reported_identically() -> None:
    problems = same_on_both_paths("a: 'unclosed\nb: 2\n")
    assert [p.rule for p in problems] == ["syntax"]


# --- yamllint left as found -----------------------------------------------------------------------


def assert_originals() -> None:
    assert yl_parser.token_or_comment_generator is lint_mod._original_tokens
    assert linter.get_syntax_error is lint_mod._original_syntax
    assert yl_parser.token_or_comment_generator.__module__ == "yamllint.parser"
    assert linter.get_syntax_error.__module__ == "yamllint.linter"


@pytest.mark.parametrize("fast", [True, False])
def test_yamllint_functions_restored_after_a_call(fast: bool) -> None:
    assert_originals()
    lint("a: 1  \n", fast=fast)
    assert_originals()


@pytest.mark.parametrize("fast", [True, False])
def test_yamllint_functions_restored_even_if_linting_raises(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    seen = {}

    def exploding_run(text: str, conf: object) -> list[object]:
        seen["tokens"] = yl_parser.token_or_comment_generator
        seen["syntax"] = linter.get_syntax_error
        raise RuntimeError("boom")

    monkeypatch.setattr(linter, "run", exploding_run)
    with pytest.raises(RuntimeError, match="boom"):
        lint("a: 1\n", fast=fast)
    # Swapped for the call only when fast, and put back afterwards either way.
    assert (seen["tokens"] is lint_mod._fast_token_or_comment_generator) == fast
    assert (seen["syntax"] is lint_mod._fast_syntax_error) == fast
    assert_originals()
