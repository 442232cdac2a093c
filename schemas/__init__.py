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
