"""Validate qna.yaml leaves: safe reading, the reference's lint, our schemas, and size guidance.

Verdicts match the reference (`instructlab-schema`'s TaxonomyParser as `ilab` runs it: schema version
taken from each file, yamllint strict) except where labcycle is deliberately stricter, listed in
docs/taxonomy-validation.md: empty files, non-mapping tops, binary or non-UTF-8 files, files over 1 MiB,
duplicate keys in version-1 files, merge keys, and misnamed leaf files are errors here.
Every problem is reported at once, each with a line, a column, a rule id and a one-line fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcycle.tasks.taxonomy.discover import DEFAULT_FOLDERS, LEAF_NAME, leads_outside, top_folder
from labcycle.tasks.taxonomy.lint import lint
from labcycle.yaml_reader import JsonPath, ParsedYaml, Problem, read_yaml

KNOWN_VERSIONS = (1, 2, 3)

# Published size guidance (documentation, not schema): warnings, errors under --strict.
MAX_CONTEXT_WORDS = 500
MAX_QA_WORDS = 250
MAX_SKILL_SEED_WORDS = 2300

_LINT_HINTS = {
    "trailing-spaces": "delete the spaces at the end of the line",
    "empty-lines": "remove the extra blank lines",
    "new-line-at-end-of-file": "end the file with a single newline",
    "new-lines": "use Unix line endings (\\n)",
    "indentation": "indent with spaces, consistently (2 per level)",
    "hyphens": "put exactly one space after '-'",
    "colons": "write 'key: value' with one space after the colon and none before",
    "commas": "put one space after each comma and none before",
    "braces": "use at most one space inside { }",
    "brackets": "use at most one space inside [ ]",
    "key-duplicates": "remove one of the duplicate keys",
    "anchors": "define each &anchor once, before any *alias that uses it",
    "syntax": "fix the YAML syntax at this spot",
}


@dataclass
class FileReport:
    path: str  # as shown to the user: relative to the current directory
    kind: str  # knowledge | freeform_skill | grounded_skill | unknown
    version: int | None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    data: Any = None  # the parsed leaf, for later stages; not part of the JSON report

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "version": self.version,
            "valid": self.valid,
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
        }


@dataclass
class ValidationReport:
    files: list[FileReport]

    @property
    def valid(self) -> bool:
        return all(f.valid for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {"files": [f.to_json() for f in self.files]}


def format_path(path: JsonPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the file"


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()} (YAML reads unquoted yes/no/on/off/true/false as booleans; put the text in quotes)"
    if isinstance(value, (int, float)):
        return f"the number {value!r} (put it in quotes to make it text)"
    if value is None:
        return "nothing (the value is empty)"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} (YAML read it as a date or time; put it in quotes to make it text)"


_TYPE_WORDS = {"string": "text", "integer": "a whole number", "array": "a list", "object": "a mapping of keys"}


def classify(top: str | None, data: Any) -> str:
    """knowledge, freeform_skill or grounded_skill; a skill is grounded when a seed example has a context."""
    if not isinstance(data, dict):
        return "knowledge" if top == "knowledge" else "unknown"
    if _schema_family(top, data) == "knowledge":
        return "knowledge"
    seeds = data.get("seed_examples")
    if isinstance(seeds, list) and any(isinstance(s, dict) and "context" in s for s in seeds):
        return "grounded_skill"
    return "freeform_skill"


def _schema_family(top: str | None, data: dict[str, Any]) -> str:
    # As the reference: the top folder decides; elsewhere (foundational_skills, a file outside any top
    # folder) a `document` key means knowledge.
    if top in ("knowledge", "compositional_skills"):
        return top
    return "knowledge" if "document" in data else "compositional_skills"


def _min_items_message(path: JsonPath, count: int, minimum: int, family: str) -> str:
    name = format_path(path)
    if path == ("seed_examples",):
        whom = "a knowledge leaf" if family == "knowledge" else "a skill leaf"
        return f"seed_examples has {count} entries; {whom} needs at least {minimum} seed examples"
    if path and path[-1] == "questions_and_answers":
        return f"{name} has {count} entries; a knowledge context needs at least {minimum}"
    if path == ("document", "patterns"):
        return f"document.patterns has {count} entries; list at least {minimum} glob such as '*.md'"
    return f"{name} has {count} entries; at least {minimum} are required"


def _schema_problems(parsed: ParsedYaml, family: str, version: int) -> list[Problem]:
    from labcycle.schemas import load, validator

    name = f"qna/{family}.v{version}.json"
    schema = load(name)
    if schema.get("deprecated"):
        return [Problem(1, 1, "schema/deprecated", f"{family} version {version} is no longer supported; rewrite the leaf as version 3 (document_outline, seed_examples with context and questions_and_answers, document)")]
    problems = []
    for err in validator(name).iter_errors(parsed.data):
        path: JsonPath = tuple(err.absolute_path)
        kind = err.validator
        inst = err.instance
        if kind == "required":
            key = err.message.split("'")[1] if "'" in err.message else str(err.validator_value)
            where = format_path(path)
            msg = f"missing required key '{key}'" + ("" if not path else f" in {where}") + f"; add {key}:"
            problems.append(Problem(*parsed.where(path), "schema/required", msg))
        elif kind == "unevaluatedProperties":
            allowed = list(err.schema.get("properties", {}))
            for key in (k for k in inst if k not in allowed):
                where = "" if not path else f" in {format_path(path)}"
                problems.append(Problem(*parsed.where(path + (key,)), "schema/unknown-key", f"unknown key '{key}'{where}; allowed keys are {', '.join(allowed)}"))
        elif kind == "minItems":
            problems.append(Problem(*parsed.where(path), "schema/min-items", _min_items_message(path, len(inst), err.validator_value, family)))
        elif kind == "uniqueItems":
            seen: dict[str, int] = {}
            for i, item in enumerate(inst):
                key = repr(item)
                if key in seen:
                    problems.append(Problem(*parsed.where(path + (i,)), "schema/unique", f"{format_path(path + (i,))} repeats {format_path(path + (seen[key],))}; every entry must be different"))
                else:
                    seen[key] = i
        elif kind == "type":
            expected = err.validator_value
            words = " or ".join(_TYPE_WORDS.get(t, t) for t in ([expected] if isinstance(expected, str) else expected))
            problems.append(Problem(*parsed.where(path), "schema/type", f"{format_path(path)} must be {words}, found {_describe(inst)}"))
        elif kind == "minLength":
            problems.append(Problem(*parsed.where(path), "schema/empty", f"{format_path(path)} is empty; write some text"))
        elif kind == "const":
            problems.append(Problem(*parsed.where(path), "schema/const", f"{format_path(path)} must be {err.validator_value!r}, found {_describe(inst)}"))
        else:
            problems.append(Problem(*parsed.where(path), f"schema/{kind}", f"{format_path(path)}: {err.message[:200]}"))
    return problems


def _words(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _guidance(parsed: ParsedYaml, family: str) -> list[Problem]:
    """Size guidance and keys the published schema lets through silently."""
    data = parsed.data
    seeds = data.get("seed_examples")
    if not isinstance(seeds, list):
        return []
    out = []
    if family == "knowledge":
        for i, seed in enumerate(seeds):
            if not isinstance(seed, dict):
                continue
            n = _words(seed.get("context"))
            if n > MAX_CONTEXT_WORDS:
                out.append(Problem(*parsed.where(("seed_examples", i, "context")), "size/context-words", f"seed_examples[{i}].context has {n} words; keep a knowledge context at or under {MAX_CONTEXT_WORDS}"))
            qas = seed.get("questions_and_answers")
            for j, qa in enumerate(qas if isinstance(qas, list) else []):
                if not isinstance(qa, dict):
                    continue
                for key in ("question", "answer"):
                    n = _words(qa.get(key))
                    if n > MAX_QA_WORDS:
                        p = ("seed_examples", i, "questions_and_answers", j, key)
                        out.append(Problem(*parsed.where(p), "size/qa-words", f"{format_path(p)} has {n} words; keep each question and answer at or under {MAX_QA_WORDS}"))
                for key in qa:
                    if key not in ("question", "answer"):
                        p = ("seed_examples", i, "questions_and_answers", j, key)
                        out.append(Problem(*parsed.where(p), "schema/unknown-key", f"unknown key '{key}' in {format_path(p[:-1])} is ignored; allowed keys are question, answer"))
    else:
        total = sum(_words(s.get(k)) for s in seeds if isinstance(s, dict) for k in ("context", "question", "answer"))
        if total > MAX_SKILL_SEED_WORDS:
            out.append(Problem(*parsed.where(("seed_examples",)), "size/seed-words", f"the seed examples hold {total} words in all; keep a skill's seed examples under about {MAX_SKILL_SEED_WORDS:,} so they fit the teacher's prompt"))
    return out


def _read_version(data: dict[str, Any]) -> tuple[int | None, Problem | None]:
    raw = data.get("version", 1)
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        return None, Problem(1, 1, "version/invalid", f"version must be one of {', '.join(map(str, KNOWN_VERSIONS))}, found {_describe(raw)}")
    if isinstance(raw, str):
        # As the reference: a quoted number picks that schema, which then flags the type.
        try:
            raw = int(raw)
        except ValueError:
            raw = 1
    if raw not in KNOWN_VERSIONS:
        return None, Problem(1, 1, "version/unknown", f"version {raw} is not a qna.yaml version labcycle knows ({', '.join(map(str, KNOWN_VERSIONS))}); use version: 3")
    return raw, None


def validate_file(path: Path, *, root: Path | None = None, folders: Sequence[str] = DEFAULT_FOLDERS, strict: bool = False) -> FileReport:
    """Validate one leaf file and return every problem found in it."""
    top = top_folder(path, root, folders)
    report = FileReport(path=os.path.relpath(path), kind="knowledge" if top == "knowledge" else "unknown", version=None)
    errors, warnings = report.errors, report.warnings
    if path.name != LEAF_NAME:
        errors.append(Problem(1, 1, "file/name", f"a leaf file must be named qna.yaml, not {path.name}; rename it (git mv {path.name} qna.yaml)"))
    if root is not None and leads_outside(path, root):
        # Read, it would bring into a run (and its hashes) a file the taxonomy repository does not hold.
        errors.append(Problem(1, 1, "file/outside-taxonomy", "the file is a symlink to a file outside the taxonomy root; "
                              "put the file itself in the taxonomy"))
        return report
    parsed = read_yaml(path)
    errors.extend(parsed.problems)
    data = parsed.data
    if isinstance(data, dict) and not any(p.rule == "yaml/alias-limit" for p in parsed.problems):
        version, problem = _read_version(data)
        if version_pos := parsed.key_pos.get(("version",)):
            problem = problem and Problem(*version_pos, problem.rule, problem.message)
        report.version = version
        report.kind = classify(top, data)
        report.data = data
        if problem:
            errors.append(problem)
        else:
            assert version is not None
            if version > 1:  # the reference lints only version 2 and later
                errors.extend(_lint_problems(parsed))
            family = _schema_family(top, data)
            errors.extend(_schema_problems(parsed, family, version))
            warnings.extend(_guidance(parsed, family))
    if strict:
        errors.extend(warnings)
        warnings.clear()
    errors.sort(key=lambda p: (p.line, p.column))
    return report


def _lint_problems(parsed: ParsedYaml) -> list[Problem]:
    assert parsed.text is not None
    own = {(p.line, p.rule) for p in parsed.problems}
    out = []
    for p in lint(parsed.text):
        # Our reader already reported these two with more to say; don't show them twice.
        if p.rule == "key-duplicates" and (p.line, "yaml/duplicate-key") in own:
            continue
        if p.rule == "syntax" and any(r == "yaml/syntax" for _, r in own):
            continue
        hint = _LINT_HINTS.get(p.rule, f"see yamllint's rule {p.rule}")
        desc = p.message.removesuffix(f" ({p.rule})")
        out.append(Problem(p.line, p.column, f"yamllint/{p.rule}", f"{desc}; {hint}"))
    return out


def _validate_one(args: tuple[Path, Path | None, tuple[str, ...], bool]) -> FileReport:
    path, root, folders, strict = args
    report = validate_file(path, root=root, folders=folders, strict=strict)
    return report


# Below this many files a process pool costs more to start than it saves.
_PARALLEL_MIN_FILES = 200


def validate_files(paths: Sequence[Path], *, root: Path | None = None, folders: Sequence[str] = DEFAULT_FOLDERS, strict: bool = False, workers: int | None = None) -> ValidationReport:
    """Validate many files, in parallel processes when there are enough of them to pay off."""
    jobs = [(p, root, tuple(folders), strict) for p in paths]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    if workers > 1 and len(jobs) >= _PARALLEL_MIN_FILES:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # forkserver: forking a process that already runs Prefect's threads is unsafe.
        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            files = list(pool.map(_validate_one, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    else:
        files = [_validate_one(job) for job in jobs]
    return ValidationReport(files=files)
