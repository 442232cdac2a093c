"""Regression suites: a subset of lm-evaluation-harness task YAML over local data files.

    task: general_mc
    dataset_path: json
    dataset_kwargs: {data_files: {test: general_mc.jsonl}}   # relative to this YAML
    test_split: test
    output_type: multiple_choice          # or loglikelihood_rolling (perplexity)
    doc_to_text: "Question: {{question}}\\nAnswer:"
    doc_to_choice: choices                # a field, a template rendering a list literal, or a YAML list
    doc_to_target: answer                 # an index, or the text of the right choice
    target_delimiter: " "
    description: "..."                    # optional, put before every context

doc_to_* work as in the harness: the name of a document field gives that field, anything else is a Jinja
template rendered with the document's fields. Zero-shot only. A suite is checked against
schemas/eval-suite.schema.json and every document is rendered once at load time, so a typo fails before
any model is asked, with the file and line.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError

SCHEMA = "eval-suite.schema.json"


@dataclass(frozen=True)
class Doc:
    where: str  # data file:line, for messages
    context: str  # multiple_choice: description + doc_to_text; rolling: ""
    choices: tuple[str, ...] = ()  # multiple_choice
    gold: int | None = None  # multiple_choice: index into choices
    text: str = ""  # loglikelihood_rolling: the document scored


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    output_type: str  # multiple_choice | loglikelihood_rolling
    target_delimiter: str
    docs: tuple[Doc, ...] = field(repr=False)
    digest: str = ""  # the YAML and its data files

    @property
    def metric(self) -> str:
        return "accuracy" if self.output_type == "multiple_choice" else "perplexity"

    @property
    def higher_is_better(self) -> bool:
        return self.output_type == "multiple_choice"


def supported_keys() -> list[str]:
    from labcycle.schemas import load

    return list(load(SCHEMA)["properties"])


def _schema_error(data: Any, path: Path, parsed: Any) -> LabcycleError | None:
    from labcycle.schemas import validator

    errors = sorted(validator(SCHEMA).iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    err = errors[0]
    at = tuple(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = err.schema.get("properties", {})
        key = next(k for k in err.instance if k not in allowed)
        at += (key,)
        where = ".".join(map(str, at))
        what = (f"{where}: not supported; a suite may have {', '.join(supported_keys())}" if len(at) == 1
                else f"{where}: not supported here; allowed: {', '.join(allowed)}")
    elif at == ("output_type",):
        what = (f"output_type: {err.instance!r} is not supported; labcycle scores multiple_choice (accuracy) and "
                "loglikelihood_rolling (perplexity)")
    elif at == ("dataset_path",):
        what = "dataset_path: only json is supported (local JSON/JSONL files named in dataset_kwargs.data_files)"
    else:
        what = f"{'.'.join(map(str, at)) or 'the suite'}: {err.message}"
    line, column = parsed.where(at)
    return LabcycleError(f"{what} (see schemas/eval-suite.schema.json)", where=f"{path}:{line}:{column}")


def _read_docs(file: Path) -> list[tuple[str, dict[str, Any]]]:
    if not file.is_file():
        raise LabcycleError("data file not found (paths in dataset_kwargs.data_files are relative to the suite YAML)",
                            where=str(file))
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabcycleError(f"not valid JSON ({exc.msg})", where=f"{file}:{exc.lineno}") from None
        except RecursionError:
            raise LabcycleError("JSON nested too deeply to read; a data file is an array of flat objects",
                                where=str(file)) from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise LabcycleError("a .json data file must hold an array of objects (or use .jsonl, one object a line)",
                                where=str(file))
        return [(f"{file}[{i}]", r) for i, r in enumerate(rows)]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabcycleError(f"not a JSON object ({exc.msg})", where=f"{file}:{n}") from None
        except RecursionError:
            raise LabcycleError("JSON nested too deeply to read; each line is one flat object", where=f"{file}:{n}") from None
        if not isinstance(row, dict):
            raise LabcycleError("each line must be a JSON object", where=f"{file}:{n}")
        out.append((f"{file}:{n}", row))
    return out


class _Renderer:
    def __init__(self) -> None:
        import jinja2

        # keep_trailing_newline as the harness: a template ending in a newline keeps it.
        self.env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.cache: dict[str, Any] = {}

    def __call__(self, spec: Any, doc: dict[str, Any], key: str, where: str) -> Any:
        """A field's value when `spec` names one, a constant for a non-string spec, else the rendered template."""
        if not isinstance(spec, str):
            return spec
        if spec in doc:
            return doc[spec]
        import jinja2

        try:
            template = self.cache.get(spec) or self.cache.setdefault(spec, self.env.from_string(spec))
            return template.render(**doc)
        except jinja2.TemplateError as exc:
            raise LabcycleError(f"{key}: the template failed on this document ({exc}); it names a field the document "
                                f"lacks, or is not valid Jinja (fields here: {', '.join(doc)})", where=where) from None


def _choices(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            value = None
    if not isinstance(value, (list, tuple)) or len(value) < 2 or not all(isinstance(c, str) for c in value):
        raise LabcycleError("doc_to_choice must give a list of at least two strings for every document", where=where)
    return tuple(value)


def _gold(value: Any, choices: tuple[str, ...], where: str, templated: bool) -> int:
    # As the harness: a template's digits are an index; a field's text is the right choice's text.
    if templated and isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, str):
        if value in choices:
            return choices.index(value)
        raise LabcycleError(f"doc_to_target gave {value!r}, which is neither an index nor one of the choices", where=where)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(choices):
        raise LabcycleError(f"doc_to_target gave {value!r}, not an index into the {len(choices)} choices", where=where)
    return value


def load_suite(path: str | Path, max_items: int | None = None) -> Suite:
    """A checked, rendered suite; the first `max_items` documents of its test split when given."""
    from labcycle.yaml_reader import read_yaml

    path = Path(path)
    parsed = read_yaml(path) if path.is_file() else None
    if parsed is None:
        raise LabcycleError("regression suite not found; point evaluation.suites at lm-evaluation-harness style "
                            "task YAML files", where=str(path))
    if parsed.problems:
        p = parsed.problems[0]
        raise LabcycleError(p.message if p.rule != "file/not-mapping" else
                            "a suite is a mapping of task keys (task:, dataset_path:, output_type: ...)",
                            where=f"{path}:{p.line}:{p.column}")
    data = parsed.data
    if (err := _schema_error(data, path, parsed)) is not None:
        raise err
    split = data.get("test_split", "test")
    files = data["dataset_kwargs"]["data_files"]
    if split not in files:
        line, column = parsed.where(("dataset_kwargs", "data_files"))
        raise LabcycleError(f"test_split {split!r} has no entry in dataset_kwargs.data_files (it has {', '.join(files)})",
                            where=f"{path}:{line}:{column}")
    names = files[split] if isinstance(files[split], list) else [files[split]]
    data_files = [(path.parent / n) if not Path(n).is_absolute() else Path(n) for n in names]
    rows = [r for f in data_files for r in _read_docs(f)]
    if max_items is not None:
        rows = rows[:max_items]
    if not rows:
        raise LabcycleError(f"split {split!r} has no documents", where=str(path))
    render = _Renderer()
    output_type = data["output_type"]
    description = data.get("description", "")
    docs = []
    for where, row in rows:
        if output_type == "multiple_choice":
            # As the harness: the description is a field name or a template too.
            intro = str(render(description, row, "description", where)) if description else ""
            context = intro + str(render(data["doc_to_text"], row, "doc_to_text", where))
            choices = _choices(render(data["doc_to_choice"], row, "doc_to_choice", where), where)
            target = data["doc_to_target"]
            templated = isinstance(target, str) and target not in row
            gold = _gold(render(target, row, "doc_to_target", where), choices, where, templated)
            docs.append(Doc(where=where, context=context, choices=choices, gold=gold))
        else:
            # As the harness does for loglikelihood_rolling: the document scored is doc_to_target.
            text = str(render(data["doc_to_target"], row, "doc_to_target", where))
            if not text.strip():
                raise LabcycleError("doc_to_target gave an empty text to score", where=where)
            docs.append(Doc(where=where, context="", text=text))
    h = hashlib.sha256(path.read_bytes())
    for f in data_files:
        h.update(f.read_bytes())
    return Suite(name=data["task"], path=path, output_type=output_type, target_delimiter=data.get("target_delimiter", " "),
                 docs=tuple(docs), digest=h.hexdigest()[:16])


__all__ = ["Doc", "Suite", "load_suite", "supported_keys"]
