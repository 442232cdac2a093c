"""Paths in files meant to be shared (a release's card and release.json, a run's report.json).

A path of the machine that wrote them (/home/alice/runs/x/cycle-1/eval/report.json, /tmp/...) means nothing
to the reader and tells them about the machine. Inside a folder the reader has too (the run folder, the
release folder) a path is written relative to it; outside, only its last part (a model folder's name)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

Json = TypeVar("Json")


def relative(path: str | Path, roots: Sequence[str | Path] = ()) -> str:
    """`path` as a reader of a file under one of `roots` names it: relative to the first root that holds it
    ("." for the root itself), else its last part; a URL or a relative path stays as it is."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    p = Path(os.path.normpath(text))
    for root in roots:
        r = Path(os.path.normpath(str(root)))
        if p == r:
            return "."
        if p.is_relative_to(r):
            return p.relative_to(r).as_posix()
    return p.name or text


def scrub(value: Json, roots: Sequence[str | Path] = ()) -> Json:
    """A JSON value with every absolute path made `relative`: whole strings that are a path, and the roots
    where they appear inside longer text (a reason naming a file)."""
    prefixes = [os.path.normpath(str(r)).rstrip("/") + "/" for r in roots]

    def walk(v: object) -> object:
        if isinstance(v, str):
            if os.path.isabs(v) and "\n" not in v and " " not in v:
                return relative(v, roots)
            for prefix in prefixes:
                v = v.replace(prefix, "")
            return v
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    return walk(value)  # type: ignore[return-value]
