"""The safe qna.yaml reader: bounded size, strict UTF-8, no tags, every duplicate key, bounded aliases,
PyYAML's scalar rules, and 1-based positions for every key and value."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from labcycle import yaml_reader as reader
from labcycle.yaml_reader import MAX_FILE_BYTES, ParsedYaml, parse_text, read_yaml

pytestmark = pytest.mark.usefixtures("pristine_pyyaml")  # the reference as a clean process has it


def rules(parsed: ParsedYaml) -> list[str]:
    return [p.rule for p in parsed.problems]


def write(tmp_path: Path, data: bytes, name: str = "qna.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- file level -------------------------------------------------------------------------------------


def test_file_over_1_mib_is_rejected_without_being_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "qna.yaml"
    with path.open("wb") as f:
        f.truncate(2 * 1024 * 1024)  # sparse: 2 MiB of NULs that take no disk space

    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("an oversized file must not be read")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(Path, "read_text", refuse)
    monkeypatch.setattr(Path, "open", refuse)

    parsed = read_yaml(path)
    assert rules(parsed) == ["file/too-large"]  # not file/binary: the NULs were never looked at
    assert "2.0 MiB" in parsed.problems[0].message
    assert parsed.text is None and parsed.data is None


def test_file_of_exactly_1_mib_is_still_read(tmp_path: Path) -> None:
    head = b"created_by: someone\nnote: "
    data = head + b"x" * (MAX_FILE_BYTES - len(head) - 1) + b"\n"
    assert len(data) == MAX_FILE_BYTES
    parsed = read_yaml(write(tmp_path, data))
    assert parsed.problems == []
    assert parsed.data["created_by"] == "someone"
    assert len(parsed.data["note"]) == MAX_FILE_BYTES - len(head) - 1


def test_nul_byte_means_binary(tmp_path: Path) -> None:
    parsed = read_yaml(write(tmp_path, b"version: 3\ncreated_by: me\x00\n"))
    assert rules(parsed) == ["file/binary"]
    assert parsed.data is None


@pytest.mark.parametrize(
    ("raw", "line", "column"),
    [
        (b"\xff\xfeversion: 3\n", 1, 1),  # a UTF-16 byte-order mark
        (b"version: 3\ncreated_by: Zo\xeb\n", 2, 15),  # Latin-1 e-umlaut
        # Columns count characters, as an editor shows them: 'b: Zo\xc3\xab ' is 7 characters (8 bytes).
        (b"a: 1\r\nb: Zo\xc3\xab \xff\r\n", 2, 8),
        (b"a: 1\nb: 2\n\nc: |\n  text \xc0\xaf\n", 5, 8),  # an overlong encoding of '/'
    ],
)
def test_invalid_utf8_is_reported_at_its_position(tmp_path: Path, raw: bytes, line: int, column: int) -> None:
    parsed = read_yaml(write(tmp_path, raw))
    assert [(p.line, p.column, p.rule) for p in parsed.problems] == [(line, column, "file/encoding")]
    assert "UTF-8" in parsed.problems[0].message
    assert parsed.data is None


@pytest.mark.parametrize("text", ["", "\n\n", "   \n", "# nothing here\n", "# one\n\n# two\n", "---\n", "~\n"])
def test_empty_or_comment_only_file(text: str) -> None:
    parsed = parse_text(text)
    assert rules(parsed) == ["file/empty"]
    assert parsed.data is None


@pytest.mark.parametrize(("text", "line"), [("- a\n- b\n", 1), ("# leaf\n\njust some text\n", 3), ("42\n", 1)])
def test_top_level_must_be_a_mapping(text: str, line: int) -> None:
    parsed = parse_text(text)
    assert [(p.line, p.rule) for p in parsed.problems] == [(line, "file/not-mapping")]
    assert parsed.data is None


def test_directory_in_place_of_a_file_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "qna.yaml").mkdir()
    parsed = read_yaml(tmp_path / "qna.yaml")
    assert rules(parsed) == ["file/unreadable"]


def test_syntax_error_points_at_the_spot() -> None:
    parsed = parse_text("version: 3\ncreated_by: 'unclosed\nseed_examples: []\n")
    assert rules(parsed) == ["yaml/syntax"]
    assert parsed.problems[0].line >= 2
    assert parsed.data is None


# --- aliases and tags ---------------------------------------------------------------------------------


def billion_laughs(levels: int) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    names = "abcdefghijk"
    for prev, name in zip(names, names[1:levels]):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [9, 10])
def test_alias_bomb_is_stopped_quickly(levels: int) -> None:
    text = billion_laughs(levels)
    assert len(text) < 1000  # tiny on disk, 10**levels strings once expanded
    start = time.perf_counter()
    parsed = parse_text(text)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"alias bomb took {elapsed:.2f}s"
    assert rules(parsed) == ["yaml/alias-limit"]
    assert parsed.data is None


def test_honest_aliases_are_expanded() -> None:
    parsed = parse_text("base: &who {name: tester, team: risk}\nfirst: *who\nsecond: *who\n")
    assert parsed.problems == []
    assert parsed.data["first"] == parsed.data["second"] == {"name": "tester", "team": "risk"}


def test_alias_budget_counts_every_expanded_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # root 1 + a (1 + 10) + b (1 + 10 * 11) + c (1 + 10 * 111) = 1234 values once expanded
    text = billion_laughs(3)
    monkeypatch.setattr(reader, "MAX_NODES", 1234)
    parsed = parse_text(text)
    assert parsed.problems == []
    assert len(parsed.data["c"]) == 10 and parsed.data["c"][9][9] == ["lol"] * 10
    monkeypatch.setattr(reader, "MAX_NODES", 1233)
    assert rules(parse_text(text)) == ["yaml/alias-limit"]


def test_python_object_tag_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"version: 3\ncreated_by: !!python/object/apply:os.system ['touch {marker}']\n"
    parsed = parse_text(text)
    assert [(p.line, p.column, p.rule) for p in parsed.problems] == [(2, 13, "yaml/tag")]
    assert "python/object/apply:os.system" in parsed.problems[0].message
    assert not marker.exists()
    assert parsed.data == {"version": 3, "created_by": None}


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("a: 1\nb: !custom value\n", "!custom"),
        ("a: !custom {x: 1}\n", "!custom"),
        ("a: !!python/tuple [1, 2]\n", "python/tuple"),
        ("a: !!binary aGk=\n", "binary"),
        ("a: !!set {x, y}\n", "set"),
        ("!custom key: 1\n", "!custom"),
    ],
)
def test_non_standard_tags_are_refused(text: str, tag: str) -> None:
    parsed = parse_text(text)
    assert rules(parsed) == ["yaml/tag"]
    assert tag in parsed.problems[0].message


def test_merge_keys_are_refused() -> None:
    parsed = parse_text("base: &b {x: 1}\nleaf:\n  <<: *b\n  y: 2\n")
    assert [(p.line, p.column, p.rule) for p in parsed.problems] == [(3, 3, "yaml/merge-key")]


# --- duplicate keys -------------------------------------------------------------------------------------


def test_every_duplicate_key_is_reported_at_its_line() -> None:
    text = "version: 3\ncreated_by: a\ndomain: x\ncreated_by: b\ndocument_outline: y\ndomain: z\n"
    parsed = parse_text(text)
    assert [(p.line, p.column, p.rule) for p in parsed.problems] == [
        (4, 1, "yaml/duplicate-key"),
        (6, 1, "yaml/duplicate-key"),
    ]
    assert "'created_by' (first at line 2)" in parsed.problems[0].message
    assert "'domain' (first at line 3)" in parsed.problems[1].message
    # YAML keeps the last value; so do we, so later stages see what the reference sees.
    assert parsed.data["created_by"] == "b" and parsed.data["domain"] == "z"


def test_duplicate_key_three_times_and_nested() -> None:
    text = "a: 1\na: 2\nseed_examples:\n  - question: q\n    answer: x\n    question: r\na: 3\n"
    parsed = parse_text(text)
    assert [(p.line, p.column) for p in parsed.problems] == [(2, 1), (6, 5), (7, 1)]
    assert all(p.rule == "yaml/duplicate-key" for p in parsed.problems)
    assert "(first at line 1)" in parsed.problems[2].message
    assert "(first at line 4)" in parsed.problems[1].message


# --- scalars: exactly PyYAML's (the reference's) YAML 1.1 rules ----------------------------------------------

SCALARS = [
    "no", "No", "NO", "yes", "Yes", "on", "off", "OFF", "true", "False",
    "y", "Y", "n", "N",  # booleans under ruamel's YAML 1.1 rules, text under PyYAML's
    "010", "0o10", "0x1F", "0b101", "1_000", "190:20:30", "-0", "+12",
    "3.14", "1.0e+3", "1e3", "1.0e3", "._", "-_", ".inf", "-.Inf", "1:20.5",
    "~", "null", "Null", "2024-01-01", "2001-12-14t21:59:43.10-05:00",
    "'010'", '"yes"', "plain text", "Zoë – “tester” ✓",
]
SCALAR_DOCS = [f"value: {scalar}\n{scalar}: as key\n" for scalar in SCALARS]

# What the reference builds: PyYAML's safe loader in a process that has not imported yamllint. (yamllint
# adds `0o` octals to PyYAML's global resolver table on import, and this test process imports it.)
_REFERENCE_LOAD = """
import pickle, sys, yaml
assert "yamllint" not in sys.modules
docs = pickle.load(sys.stdin.buffer)
sys.stdout.buffer.write(pickle.dumps([yaml.safe_load(d) for d in docs]))
"""


@pytest.fixture(scope="module")
def reference_values() -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _REFERENCE_LOAD], input=pickle.dumps(SCALAR_DOCS), capture_output=True, check=True
    ).stdout
    return dict(zip(SCALAR_DOCS, pickle.loads(out)))


@pytest.mark.parametrize("text", SCALAR_DOCS, ids=SCALARS)
def test_scalars_resolve_as_the_reference_resolves_them(text: str, reference_values: dict[str, object]) -> None:
    expected = reference_values[text]
    parsed = parse_text(text)
    assert parsed.problems == []
    assert parsed.data == expected
    assert [type(v) for v in parsed.data.values()] == [type(v) for v in expected.values()]
    assert [type(k) for k in parsed.data] == [type(k) for k in expected]


def test_timestamps_stay_dates_whoever_patched_pyyamls_constructors(monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-format-enforcer (imported with vLLM) replaces the timestamp constructor in PyYAML's shared table, for
    every loader of the process; a long-lived worker that ran an in-process engine must read qna.yaml the same."""
    import datetime

    import yaml

    table = yaml.SafeLoader.yaml_constructors
    monkeypatch.setitem(table, "tag:yaml.org,2002:timestamp", table["tag:yaml.org,2002:str"])
    assert yaml.safe_load("d: 2024-01-01\n") == {"d": "2024-01-01"}  # the patch as that library makes it
    assert parse_text("d: 2024-01-01\n").data == {"d": datetime.date(2024, 1, 1)}


def test_octal_0o_stays_text_whoever_imported_yamllint() -> None:
    import yamllint.rules  # noqa: F401  (patches PyYAML's global resolver table)

    assert parse_text("a: 0o10\n").data == {"a": "0o10"}


def test_resolver_table_is_pyyamls() -> None:
    """The reader's copy of PyYAML's implicit resolvers equals PyYAML's own, unpatched, table."""
    code = """
import pickle, sys, yaml
table = {k: [(t, r.pattern, r.flags) for t, r in v] for k, v in yaml.resolver.Resolver.yaml_implicit_resolvers.items()}
sys.stdout.buffer.write(pickle.dumps(table))
"""
    pyyaml_table = pickle.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
    ours = {k: [(t, r.pattern, r.flags) for t, r in v] for k, v in reader.IMPLICIT_RESOLVERS.items()}
    assert ours == pyyaml_table


def test_yaml_1_1_booleans_and_octal() -> None:
    parsed = parse_text("a: no\nb: yes\nc: 010\nd: '010'\n")
    assert parsed.data == {"a": False, "b": True, "c": 8, "d": "010"}
    assert parsed.data["a"] is False and parsed.data["b"] is True


@pytest.mark.parametrize("text", ["when: 2024-13-45\n", "n: !!int abc\n", "b: !!bool maybe\n", "t: !!timestamp nope\n"])
def test_scalars_the_reference_cannot_build_are_problems_not_crashes(text: str) -> None:
    with pytest.raises(Exception):
        yaml.safe_load(text)  # the reference fails on these files too
    parsed = parse_text(text)
    assert [(p.line, p.rule) for p in parsed.problems] == [(1, "yaml/value")]
    assert "quotes" in parsed.problems[0].message


# --- where libyaml and PyYAML disagree, PyYAML (the reference) decides ------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("answer: |# note\n  text\n", 1, 10, "chomping or indentation"),  # libyaml accepts this
        ("answer: >-#\n  text\n", 1, 11, "chomping or indentation"),
        ("q: [what?, x]\n", 1, 9, "'?'"),  # libyaml reads `what?` as one scalar
        ("a: &x 1\nb: &x 2\nc: *x\n", 2, 4, "duplicate anchor 'x' (first at line 1)"),  # libyaml: last one wins
    ],
)
def test_files_pyyaml_rejects_are_syntax_errors(text: str, line: int, column: int, words: str) -> None:
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    parsed = parse_text(text)
    assert [(p.line, p.column, p.rule) for p in parsed.problems] == [(line, column, "yaml/syntax")]
    assert words in parsed.problems[0].message
    assert parsed.data is None


@pytest.mark.parametrize("text", ["c: {d:e}\n", "c: {d:}\n", "c: [a, {b: c}, [d]]\n", "k: 'a\ttab'\n", "\ufeffk: v\n"])
def test_files_pyyaml_accepts_are_read_like_pyyaml(text: str) -> None:
    parsed = parse_text(text)
    assert parsed.problems == []
    assert parsed.data == yaml.safe_load(text)


@pytest.mark.parametrize("text", ["a: " + "[" * 3000 + "]" * 3000 + "\n", "a:\n" + "\n".join(" " * (i + 1) + "b:" for i in range(3000)) + " x\n"])
def test_absurd_nesting_is_a_problem_not_a_crash(text: str) -> None:
    parsed = parse_text(text)
    assert rules(parsed) == ["yaml/too-deep"]
    assert "nested more than 100 levels deep" in parsed.problems[0].message


# The shapes that overflowed libyaml's C composer (SIGSEGV) before the depth was bounded, at a depth that
# still composes without one, so a regression shows as a wrong answer here and as a crash in
# tests/test_hostile_inputs.py, which runs the real 30,000-level files through the CLI.
DEEP = 3000


@pytest.mark.parametrize(
    "text",
    [
        "version: 3\nx:\n" + "- " * DEEP + "y\n",  # block sequences, compact, on one line
        "version: 3\nx: " + "{a: " * DEEP + "}" * DEEP + "\n",  # flow mappings
        "version: 3\nx:\n" + "".join(" " * i + "- a:\n" for i in range(0, 240, 2)),  # indentation
        # brackets inside quotes must not hide the depth from the quick bound
        "version: 3\nx: " + '["]", ' * DEEP + "]" * DEEP + "\n",
        "version: 3\nx: " + "[" * 101 + "]" * 101 + "\n",
        # libyaml rejects `{d:e}` (PyYAML reads it): PyYAML's parser measures the depth then
        "c: {d:e}\nx: " + "[" * DEEP + "]" * DEEP + "\n",
    ],
)
def test_too_deep_is_refused_before_composing(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a file nested too deeply must not reach a composer")

    monkeypatch.setattr(reader, "_compose", refuse)
    parsed = parse_text(text)
    assert rules(parsed) == ["yaml/too-deep"]
    assert parsed.problems[0].line >= 2 and parsed.data is None


def test_nesting_up_to_the_limit_is_read() -> None:
    text = "x: " + "[" * 99 + "]" * 99 + "\n"  # the mapping is one level, the lists 99 more
    parsed = parse_text(text)
    assert parsed.problems == [] and parsed.data == yaml.safe_load(text)


def test_brackets_and_indentation_in_text_are_not_nesting() -> None:
    # Over the quick bound (many brackets, a deeply indented block scalar) but 3 levels deep: read as usual.
    code = "".join(" " * 60 + f"a[{i}] = {{[{i}]}}: - ? x\n" for i in range(200))
    text = "version: 3\nseed_examples:\n  - answer: |\n" + code
    assert reader._depth_bound(text) > reader.MAX_DEPTH
    parsed = parse_text(text)
    assert parsed.problems == [] and parsed.data == yaml.safe_load(text)


def test_a_syntax_error_before_deep_nesting_is_a_syntax_error() -> None:
    # PyYAML rejects the first line; libyaml would accept it and recurse into what follows.
    parsed = parse_text("[what?, x]\n" + "[" * 30000)
    assert rules(parsed) == ["yaml/syntax"]


# --- positions ------------------------------------------------------------------------------------------------

LEAF = """\
version: 3
created_by: tester
seed_examples:
  - context: |
      Some text.
    questions_and_answers:
      - question: What?
        answer: That.
  - context: Other
    questions_and_answers: []
"""


def test_key_and_value_positions_are_1_based() -> None:
    parsed = parse_text(LEAF)
    assert parsed.problems == []
    assert parsed.key_pos[("version",)] == (1, 1)
    assert parsed.value_pos[("version",)] == (1, 10)
    assert parsed.key_pos[("seed_examples",)] == (3, 1)
    assert parsed.value_pos[("seed_examples", 0)] == (4, 5)
    assert parsed.key_pos[("seed_examples", 0, "context")] == (4, 5)
    assert parsed.value_pos[("seed_examples", 0, "context")] == (4, 14)
    assert parsed.key_pos[("seed_examples", 0, "questions_and_answers", 0, "answer")] == (8, 9)
    assert parsed.value_pos[("seed_examples", 0, "questions_and_answers", 0, "answer")] == (8, 17)
    assert parsed.key_pos[("seed_examples", 1, "questions_and_answers")] == (10, 5)
    # where(): the key naming a path, else its value, else the nearest ancestor.
    assert parsed.where(("seed_examples", 1, "questions_and_answers")) == (10, 5)
    assert parsed.where(("seed_examples", 1)) == (9, 5)
    assert parsed.where(("seed_examples", 1, "questions_and_answers", 0, "question")) == (10, 5)
    assert parsed.where(()) == (1, 1)


def test_crlf_file_parses_with_the_same_lines(tmp_path: Path) -> None:
    crlf = LEAF.replace("\n", "\r\n") + "created_by: again\r\n"
    parsed = read_yaml(write(tmp_path, crlf.encode()))
    assert "\r" not in (parsed.text or "")
    assert parsed.data["seed_examples"][0]["context"] == "Some text.\n"
    assert parsed.key_pos[("seed_examples", 0, "questions_and_answers", 0, "answer")] == (8, 9)
    assert parsed.key_pos[("seed_examples", 1, "questions_and_answers")] == (10, 5)
    assert [(p.line, p.column, p.rule) for p in parsed.problems] == [(11, 1, "yaml/duplicate-key")]
    lf = read_yaml(write(tmp_path, LEAF.encode(), "lf.yaml"))
    assert {k: parsed.value_pos[k] for k in lf.value_pos if k != ("created_by",)} == {
        k: v for k, v in lf.value_pos.items() if k != ("created_by",)
    }
