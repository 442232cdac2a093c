"""JSON Schemas for every YAML and JSON file labcycle reads or writes; shipped inside the wheel."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any


@cache
def load(name: str) -> dict[str, Any]:
    """A schema by file name relative to this folder, e.g. "qna/knowledge.v3.json"."""
    return json.loads(files(__name__).joinpath(name).read_text(encoding="utf-8"))


@cache
def validator(name: str):  # type: ignore[no-untyped-def]
    """A ready jsonschema validator for the schema (built once per process)."""
    from jsonschema import Draft202012Validator

    schema = load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def check(data: Any, name: str, source: str, locate: Any = None, explain: Any = None) -> None:
    """Raise a LabcycleError for the first place `data` breaks schema `name`: the key path, what is wrong,
    and where (source:line:col when `locate` maps a key path to (line, column)). `explain(err, key)` may
    word a message better than jsonschema does."""
    from labcycle.errors import LabcycleError

    errors = sorted(validator(name).iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return
    err = errors[0]
    path = tuple(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        # Point at the first unknown key itself, not at the mapping that holds it.
        allowed = err.schema.get("properties", {})
        path += (next(k for k in err.instance if k not in allowed),)
    key = ".".join(str(p) for p in path) or "the top level"
    where = f"{source}:{':'.join(map(str, locate(path)))}" if locate else source
    message = explain(err, key) if explain else err.message
    if err.validator == "type" and isinstance(err.instance, str) and _number_text(err.instance):
        wanted = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        if "number" in wanted or "integer" in wanted:
            # YAML 1.1 (PyYAML, and labcycle's reader, which reads as the reference does) takes 1e-4 for text.
            message = (f"{err.instance!r} was read as text, not a number: YAML 1.1 needs a dot and a signed exponent, "
                       f"so write {_as_yaml_number(err.instance)}")
    raise LabcycleError(f"{key}: {message}; see schemas/{name} for the allowed keys and values", where=where)


def _number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


def _as_yaml_number(text: str) -> str:
    """`text` as a number YAML 1.1 reads: 1e-4 -> 1.0e-4 (or 0.0001)."""
    value = float(text)
    plain = f"{value:.12f}".rstrip("0").rstrip(".")
    mantissa, _, exponent = f"{value:e}".partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    mantissa = mantissa if "." in mantissa else mantissa + ".0"
    return f"{mantissa}e{int(exponent):+d} or {plain}" if float(plain or 0) == value else f"{mantissa}e{int(exponent):+d}"
