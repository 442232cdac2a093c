"""JSON Schemas for every YAML and JSON file labcycle reads or writes; shipped inside the wheel."""

from __future__ import annotations

import json
import math
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

    refuse_non_finite(data, name, source, locate)
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


# --- numbers that are not numbers ---------------------------------------------------------------------------
# YAML reads .nan, .inf and -.inf (and .NaN, .Inf, +.INF, ...) as floats, and a literal too large for a float
# (1.0e+400) as infinity; JSON as Python reads it takes NaN and Infinity. A schema's "type": "number" and its
# bounds let all of them through (every comparison with NaN is false), and a NaN learning rate or weight
# only shows much later, as a crash or as a model of NaN weights. So every file checked here refuses them.


def non_finite(data: Any, path: tuple = ()) -> tuple[tuple, float] | None:
    """(key path, value) of the first NaN or infinite float in `data`, else None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else (path, data)
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = non_finite(value, path + (key,))
        if found:
            return found
    return None


def non_finite_message(path: tuple, value: float, name: str) -> str:
    """`key: <value> is not a finite number; write ... instead`, with the bounds and default of the key's schema."""
    key = ".".join(str(p) for p in path) or "the top level"
    shown = "NaN (not a number)" if math.isnan(value) else "infinity" if value > 0 else "minus infinity"
    sub, required = _schema_at(load(name), path)
    types = sub.get("type", [])
    types = [types] if isinstance(types, str) else types
    if types and not {"number", "integer"} & set(types):
        return f"{key}: this value reads as {shown}, not as text; put it in quotes; see schemas/{name}"
    bounds = [f"{word} {sub[bound]:g}" for bound, word in (("exclusiveMinimum", "greater than"), ("minimum", "at least"),
                                                          ("exclusiveMaximum", "less than"), ("maximum", "at most"))
              if isinstance(sub.get(bound), (int, float))]
    wanted = ("a whole number" if "number" not in types and "integer" in types else "a finite number") + \
        (" " + " and ".join(bounds) if bounds else "")
    example = sub.get("default", (sub.get("examples") or [None])[0])
    if isinstance(example, (int, float)) and not isinstance(example, bool):
        wanted += f" (e.g. {example:g})"
    default = "" if required else ", or leave the key out for its default"
    return f"{key}: {shown} is not a finite number; write {wanted} instead{default}; see schemas/{name}"


def refuse_non_finite(data: Any, name: str, source: str, locate: Any = None) -> None:
    """Raise a LabcycleError at the first NaN or infinite number in `data` (read from `source`)."""
    from labcycle.errors import LabcycleError

    found = non_finite(data)
    if found:
        where = f"{source}:{':'.join(map(str, locate(found[0])))}" if locate else source
        raise LabcycleError(non_finite_message(*found, name), where=where)


def _schema_at(schema: dict[str, Any], path: tuple) -> tuple[dict[str, Any], bool]:
    """(the subschema that describes `path`, whether its key is required), as far as plain properties, items,
    additionalProperties and local $refs lead; {} where they end."""
    root, sub, required = schema, schema, True
    for part in path:
        sub = _resolve(root, sub)
        if isinstance(part, int):
            nxt = sub.get("items")
        else:
            required = part in sub.get("required", ())
            nxt = sub.get("properties", {}).get(part, sub.get("additionalProperties"))
        if not isinstance(nxt, dict):
            return {}, True  # not described here: claim nothing about the key
        sub = nxt
    return _resolve(root, sub), required


def _resolve(root: dict[str, Any], sub: dict[str, Any]) -> dict[str, Any]:
    for _ in range(10):
        ref = sub.get("$ref")
        if not (isinstance(ref, str) and ref.startswith("#/")):
            break
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        sub = target if isinstance(target, dict) else {}
    return sub
