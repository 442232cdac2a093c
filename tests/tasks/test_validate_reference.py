"""Differential test: labcycle's verdict on every leaf kind and broken variant equals the reference
InstructLab parser's (instructlab-schema's TaxonomyParser, run as `ilab` runs it), except where
labcycle is deliberately stricter (tests/leafgen.py STRICTER, docs/taxonomy-validation.md)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from labcycle.tasks.taxonomy.validate import validate_file
from tests import leafgen

# the reference as a clean process has it: PyYAML's own timestamps (tests/conftest.py)
pytestmark = [pytest.mark.reference, pytest.mark.usefixtures("pristine_pyyaml")]

taxonomy = pytest.importorskip("instructlab.schema.taxonomy")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import compare_reference  # noqa: E402 - scripts/ is no package

sys.path.remove(str(REPO / "scripts"))
EXAMPLES = sorted((REPO / "taxonomy").rglob("qna.yaml"))
BASE_NAMES = [b.name for b in leafgen.bases()]


@pytest.fixture
def reference(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The reference parser as `ilab taxonomy diff` builds it (scripts/compare_reference.py); returns
    (valid, errors, warnings) for a file."""
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # it puts the venv first on PATH: undone after
    judge = compare_reference.reference_parser()
    assert shutil.which("yamllint") == str(Path(sys.executable).parent / "yamllint")
    return judge


def cases(base: leafgen.Base) -> list[tuple[str, str]]:
    out = []
    for name, mutate in leafgen.MUTATIONS.items():
        text = mutate(base.text)
        if name != "unchanged" and text == base.text:
            continue  # the mutation does not apply to this base (e.g. no domain key in a skill)
        out.append((name, text))
    return out


@pytest.mark.parametrize("base", leafgen.bases(), ids=lambda b: b.name)
def test_same_verdict_as_reference(tmp_path: Path, reference, base: leafgen.Base) -> None:  # type: ignore[no-untyped-def]
    mismatches = []
    for mutation, text in cases(base):
        path = tmp_path / base.folder / "area" / mutation / "qna.yaml"
        path.parent.mkdir(parents=True)
        path.write_bytes(text.encode("utf-8"))  # bytes: keep CRLF as written
        ref_valid, ref_errors, _ = reference(path)
        report = validate_file(path, root=tmp_path)
        ours = [f"{p.line}:{p.column} {p.rule}" for p in report.errors]
        if leafgen.is_stricter(mutation, base.name):
            if report.valid or not ref_valid:
                mismatches.append(
                    f"{mutation}: listed as stricter, so labcycle must reject and the reference accept; "
                    f"labcycle valid={report.valid} {ours}, reference valid={ref_valid} ({ref_errors} errors)"
                )
        elif report.valid != ref_valid:
            mismatches.append(f"{mutation}: labcycle valid={report.valid} {ours}, reference valid={ref_valid} ({ref_errors} errors)")
    assert not mismatches, f"{base.name}:\n  " + "\n  ".join(mismatches)


# Plain scalars where YAML 1.1 readers disagree: PyYAML (the reference) reads y/n/1e3 as text, ruamel's
# YAML 1.1 rules as a boolean or a number; an impossible date makes PyYAML fail.
SCALARS = ["y", "N", "1e3", "._", "-_", "on", "No", "010", "0x1F", "1_000", "190:20:30", "2024-01-01", "2024-13-45", "~"]


@pytest.mark.parametrize("scalar", SCALARS)
def test_same_verdict_on_yaml_1_1_scalars(tmp_path: Path, reference, scalar: str) -> None:  # type: ignore[no-untyped-def]
    base = leafgen.skill(3, grounded=False, seed=2)
    path = tmp_path / "compositional_skills" / "area" / "qna.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(base.replace("created_by: labcycle-tests", f"created_by: {scalar}"), encoding="utf-8")
    ref_valid, _, _ = reference(path)
    report = validate_file(path, root=tmp_path)
    assert report.valid == ref_valid, [(p.rule, p.message) for p in report.errors]


# Edits where libyaml (the C parser behind labcycle's fast paths) and PyYAML (the reference) disagree on
# what is YAML. Version-1 leaves matter most: they are not linted, so the reader alone decides.
def _anchor_twice(text: str) -> str:
    """The same &anchor on created_by and on the key after it (legal for libyaml, an error for PyYAML)."""
    lines = text.split("\n")
    i = next(i for i, line in enumerate(lines) if line.startswith("created_by: "))
    for j in (i, i + 1):
        key, value = lines[j].split(": ", 1)
        lines[j] = f"{key}: &a {value}"
    return "\n".join(lines)


LIBYAML_EDITS = {
    "block-header-comment": lambda t: t.replace("answer: |\n", "answer: |# note\n", 1),
    "flow-question-mark": lambda t: t.replace("  patterns:\n    - '*.md'", "  patterns: ['*.md', docs/what?]"),
    "flow-colon": lambda t: t.replace("  patterns:\n    - '*.md'", "  patterns: [docs/a:b]"),
    "reused-anchor": _anchor_twice,
    "bom": lambda t: "\ufeff" + t,
}
LIBYAML_CASES = [
    pytest.param(base, edit, id=f"{base.name}-{edit}")
    for base in leafgen.bases()
    if base.name in ("freeform-v1", "grounded-v3", "knowledge-v3")
    for edit in LIBYAML_EDITS
    if LIBYAML_EDITS[edit](base.text) != base.text  # the patterns edits need a knowledge leaf
]


@pytest.mark.parametrize(("base", "edit"), LIBYAML_CASES)
def test_same_verdict_where_libyaml_and_pyyaml_disagree(tmp_path: Path, reference, base: leafgen.Base, edit: str) -> None:  # type: ignore[no-untyped-def]
    text = LIBYAML_EDITS[edit](base.text)
    path = tmp_path / base.folder / "area" / "qna.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    ref_valid, _, _ = reference(path)
    report = validate_file(path, root=tmp_path)
    assert report.valid == ref_valid, [(p.rule, p.message) for p in report.errors]


def test_stricter_list_names_real_cases() -> None:
    for mutation, base in leafgen.STRICTER:
        assert mutation in leafgen.MUTATIONS, mutation
        assert base == "*" or base in BASE_NAMES, base
        bases = leafgen.bases() if base == "*" else [b for b in leafgen.bases() if b.name == base]
        # the mutation must change at least one of the files it is listed for, or the entry tests nothing
        assert any(leafgen.MUTATIONS[mutation](b.text) != b.text for b in bases), (mutation, base)


def test_unchanged_bases_are_checked() -> None:
    # a guard for the skip rule above: every base is compared at least unchanged and broken
    for base in leafgen.bases():
        names = [name for name, _ in cases(base)]
        assert names[0] == "unchanged" and len(names) > 20, (base.name, names)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_taxonomy_valid_for_both(reference, path: Path) -> None:  # type: ignore[no-untyped-def]
    valid, errors, warnings = reference(path)
    assert (valid, errors, warnings) == (True, 0, 0)
    report = validate_file(path, root=REPO / "taxonomy")
    assert report.valid and report.errors == [] and report.warnings == [], report.errors + report.warnings
    assert report.version == 3


def test_example_taxonomy_is_present() -> None:
    tops = {p.relative_to(REPO / "taxonomy").parts[0] for p in EXAMPLES}
    assert tops == {"knowledge", "compositional_skills"}


def test_compare_reference_script_on_a_repository_history(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """scripts/compare_reference.py: every qna.yaml blob in a repository's history, judged both ways."""
    import subprocess

    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # the script puts the venv first on PATH: undone after
    repo = tmp_path / "taxonomy"
    leaf = repo / "compositional_skills" / "area" / "qna.yaml"
    leaf.parent.mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for text in (leafgen.skill(3, grounded=False, seed=2), "version: 3\n", ""):  # valid, invalid, empty (stricter)
        leaf.write_text(text)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "edit"], check=True)
    assert compare_reference.main([str(repo), "--history"]) == 0
    out = capsys.readouterr().out
    assert "3 qna.yaml blobs in the history" in out
    assert "same verdict as the reference: 2; labcycle stricter by design: 1; disagreements: 0" in out
    assert compare_reference.main([str(repo)]) == 0  # HEAD alone: the empty file
    assert "1 qna.yaml files at HEAD" in capsys.readouterr().out
