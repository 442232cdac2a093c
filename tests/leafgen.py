"""Generate qna.yaml leaves of every kind and version, and broken variants of them.

Used by the validation tests, the differential tests against the reference parser, and
bench/validate.py. The YAML is written by hand (not dumped) so that its formatting is exactly what a
person would write and what yamllint's relaxed profile accepts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


def _block(text: str, indent: int) -> str:
    pad = " " * indent
    return "|\n" + "\n".join(pad + line for line in text.splitlines())


def _words(rnd: random.Random, n: int) -> str:
    vocab = ["model", "risk", "data", "bias", "prompt", "guardrail", "review", "privacy", "audit", "output",
             "training", "evaluation", "policy", "incident", "leak", "fairness", "teacher", "student", "judge"]
    return " ".join(rnd.choice(vocab) for _ in range(n))


def knowledge_v3(seed: int = 0, seeds: int = 5, qas: int = 3) -> str:
    rnd = random.Random(seed)
    lines = [
        "version: 3",
        "created_by: labcycle-tests",
        "domain: generative AI risk",
        f"document_outline: Notes on risks of generative AI, set {seed}",
        "seed_examples:",
    ]
    for s in range(seeds):
        lines.append(f"  - context: {_block(f'Context {s} of leaf {seed}. ' + _words(rnd, 40) + chr(10) + _words(rnd, 30), 6)}")
        lines.append("    questions_and_answers:")
        for q in range(qas):
            lines.append(f"      - question: What does part {q} of context {s} in leaf {seed} say?")
            lines.append(f"        answer: {_block(f'Part {q} says ' + _words(rnd, 12) + '.', 10)}")
    lines += [
        "document:",
        "  repo: https://example.invalid/docs.git",
        "  commit: 0123456789abcdef0123456789abcdef01234567",
        "  patterns:",
        "    - '*.md'",
    ]
    return "\n".join(lines) + "\n"


def skill(version: int | None, grounded: bool, seed: int = 0, seeds: int = 5) -> str:
    """A compositional skill; version None writes no version key (which means version 1)."""
    rnd = random.Random(seed)
    lines = [] if version is None else [f"version: {version}"]
    lines += ["created_by: labcycle-tests", f"task_description: Write short risk notes, set {seed}", "seed_examples:"]
    for s in range(seeds):
        first = "  - "
        if grounded:
            lines.append(f"{first}context: {_block(f'Report {s}: ' + _words(rnd, 25), 6)}")
            first = "    "
        lines.append(f"{first}question: Summarise item {s} of set {seed} in one sentence.")
        lines.append(f"    answer: {_block(f'Item {s} is about ' + _words(rnd, 15) + '.', 6)}")
    return "\n".join(lines) + "\n"


def knowledge_old(version: int | None, seed: int = 0) -> str:
    """Version 1/2 knowledge, which both the reference and labcycle reject as unsupported."""
    lines = [] if version is None else [f"version: {version}"]
    lines += ["created_by: labcycle-tests", "domain: history", "task_description: Teach history", "seed_examples:"]
    for s in range(5):
        lines += [f"  - question: What happened in year {s}?", f"    answer: Something happened in year {s}."]
    lines += ["document:", "  repo: https://example.invalid/docs.git", "  commit: abc123", "  patterns:", "    - '*.md'"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Base:
    name: str
    folder: str  # top folder the leaf lives in
    text: str


def bases() -> list[Base]:
    return [
        Base("knowledge-v3", "knowledge", knowledge_v3(1)),
        Base("freeform-v3", "compositional_skills", skill(3, grounded=False, seed=2)),
        Base("grounded-v3", "compositional_skills", skill(3, grounded=True, seed=3)),
        Base("freeform-v2", "compositional_skills", skill(2, grounded=False, seed=4)),
        Base("grounded-v2", "compositional_skills", skill(2, grounded=True, seed=5)),
        Base("freeform-v1", "compositional_skills", skill(None, grounded=False, seed=6)),
        Base("grounded-v1", "compositional_skills", skill(1, grounded=True, seed=7)),
        Base("foundational-v3", "foundational_skills", skill(3, grounded=False, seed=8)),
        Base("knowledge-v1", "knowledge", knowledge_old(None)),
        Base("knowledge-v2", "knowledge", knowledge_old(2)),
    ]


def _replace_line(text: str, startswith: str, new: str | None, nth: int = 0) -> str:
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if line.startswith(startswith)]
    if len(hits) <= nth:
        return text
    i = hits[nth]
    if new is None:
        del lines[i]
    else:
        lines[i] = new
    return "\n".join(lines)


def _drop_seed(text: str) -> str:
    """Remove the last seed example (everything from its '  - ' line to the next top-level key)."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("  - ")]
    if not starts:
        return text
    i = starts[-1]
    j = i + 1
    while j < len(lines) and (lines[j].startswith("    ") or lines[j].startswith("      ")):
        j += 1
    return "\n".join(lines[:i] + lines[j:])


def _duplicate_first_seed(text: str) -> str:
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("  - ")]
    if len(starts) < 2:
        return text
    return "\n".join(lines[: starts[1]] + lines[starts[0] : starts[1]] + lines[starts[1] :])


def _drop_qa(text: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("      - question:"):
            j = i + 1
            while j < len(lines) and lines[j].startswith("        "):
                j += 1
            return "\n".join(lines[:i] + lines[j:])
    return text


MUTATIONS: dict[str, Callable[[str], str]] = {
    "unchanged": lambda t: t,
    "drop-created_by": lambda t: _replace_line(t, "created_by:", None),
    "drop-version": lambda t: _replace_line(t, "version:", None),
    "drop-task_description": lambda t: _replace_line(t, "task_description:", None),
    "drop-domain": lambda t: _replace_line(t, "domain:", None),
    "drop-document_outline": lambda t: _replace_line(t, "document_outline:", None),
    "created_by-number": lambda t: _replace_line(t, "created_by:", "created_by: 42"),
    "created_by-bool": lambda t: _replace_line(t, "created_by:", "created_by: yes"),
    "created_by-empty": lambda t: _replace_line(t, "created_by:", "created_by: ''"),
    "created_by-null": lambda t: _replace_line(t, "created_by:", "created_by:"),
    "version-string": lambda t: _replace_line(t, "version:", "version: '3'"),
    "version-4": lambda t: _replace_line(t, "version:", "version: 4"),
    "version-bool": lambda t: _replace_line(t, "version:", "version: true"),
    "unknown-top-key": lambda t: t + "notes: extra\n",
    "unknown-seed-key": lambda t: t.replace("  - ", "  - source: somewhere\n    ", 1),
    "unknown-qa-key": lambda t: t.replace("      - question:", "      - source: somewhere\n        question:", 1),
    "four-seeds": _drop_seed,
    "duplicate-seed": lambda t: _drop_seed(_duplicate_first_seed(t)),
    "two-qas": _drop_qa,
    "seeds-not-list": lambda t: t.split("seed_examples:")[0] + "seed_examples: none\n" if "seed_examples:" in t else t,
    "bad-yaml-quote": lambda t: _replace_line(t, "created_by:", "created_by: 'unclosed"),
    "bad-yaml-indent": lambda t: t.replace("\n    answer:", "\n     answer:", 1),
    "trailing-blank-line": lambda t: t + "\n",
    "trailing-spaces": lambda t: t.replace("\n", "  \n", 1),
    "tab-indent": lambda t: t.replace("\n  - ", "\n\t- ", 1),
    "duplicate-key": lambda t: t.replace("created_by:", "created_by: someone\ncreated_by:", 1),
    "no-final-newline": lambda t: t.rstrip("\n"),
    "empty-file": lambda t: "",
    "comment-only": lambda t: "# nothing here\n",
    "top-level-list": lambda t: "- a\n- b\n",
    "answer-bool": lambda t: _replace_line(t, "    answer:", "    answer: no"),
    "custom-tag": lambda t: _replace_line(t, "created_by:", "created_by: !!python/object:os.system x"),
    "patterns-empty": lambda t: t.replace("  patterns:\n    - '*.md'", "  patterns: []"),
    "document-unknown-key": lambda t: t.replace("  patterns:", "  branch: main\n  patterns:"),
    "crlf": lambda t: t.replace("\n", "\r\n"),
    "unicode-text": lambda t: _replace_line(t, "created_by:", "created_by: Zoë – “tester” ✓"),
}

# Where labcycle is deliberately stricter than the reference (documented in docs/taxonomy-validation.md):
# the reference only warns on an empty file, and lints nothing in version-1 files, so it lets a
# duplicate key there silently keep the last value. (Not knowledge-v1: both reject version-1 knowledge.)
STRICTER = {
    ("empty-file", "*"),
    ("comment-only", "*"),
    ("duplicate-key", "freeform-v1"),
    ("duplicate-key", "grounded-v1"),
}


def is_stricter(mutation: str, base: str) -> bool:
    return (mutation, "*") in STRICTER or (mutation, base) in STRICTER
