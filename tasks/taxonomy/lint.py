"""yamllint, in-process, with the reference's configuration and strictness.

The reference (`instructlab-schema`) spawns `yamllint -d "{extends: relaxed, rules: {line-length:
disable}}"` once per file and, run as `ilab` runs it (strict), turns every warning into an error.
We call yamllint's own linter in-process with the same configuration, so its rules and messages are
the reference's exactly.

Most of yamllint's time goes into PyYAML's pure-Python scanner, which it runs twice per file (once for
tokens, once for the syntax check). For files where libyaml's C scanner yields the same tokens (only
"\\n" line breaks, a final newline, no tabs, no byte-order mark, no flow collections, no block-scalar
header followed by "#") and its C parser accepts the whole file, we hand yamllint the C scanner's tokens
with marks rebuilt the way the Python reader makes them, and report no syntax error. Anything else,
including every file with a syntax error, takes yamllint's own path unchanged, so its messages stay
identical: libyaml and PyYAML disagree on broken files and in flow collections (`[what?, x]`, `{a:b}`),
and libyaml accepts `answer: |# note`, which PyYAML rejects. tests/tasks/test_lint.py checks both paths
give the same problems on every fixture and on random edits of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import yaml
from yamllint import linter
from yamllint import parser as yl_parser
from yamllint.config import YamlLintConfig

REFERENCE_CONFIG = "{extends: relaxed, rules: {line-length: disable}}"

_config: YamlLintConfig | None = None
_original_tokens = yl_parser.token_or_comment_generator
_original_syntax = linter.get_syntax_error
_C_AVAILABLE = getattr(yaml, "__with_libyaml__", False)


@dataclass(frozen=True)
class LintProblem:
    line: int
    column: int
    rule: str  # yamllint rule id, or "syntax"
    message: str
    level: str  # "error" | "warning" as yamllint rates it; strict mode makes both errors


def config() -> YamlLintConfig:
    global _config
    if _config is None:
        _config = YamlLintConfig(REFERENCE_CONFIG)
    return _config


_BLOCK_HEADER_COMMENT = re.compile(r"[|>][-+0-9]*#")
_FLOW_STARTS = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken)


def _c_scanner_safe(text: str) -> bool:
    # The Python reader also breaks lines at \r, \x85, \u2028 and \u2029, and treats tabs and a BOM
    # specially; libyaml differs in corners there, so those files take yamllint's own path. So do files
    # without a final newline: libyaml puts the end of a last-line comment on a line of its own.
    return (
        _C_AVAILABLE
        and text.endswith("\n")
        and not any(c in text for c in ("\r", "\t", "\x85", "\u2028", "\u2029", "\ufeff"))
        and not _BLOCK_HEADER_COMMENT.search(text)
    )


class _Mark:
    """The parts of a PyYAML reader mark that yamllint reads: line, column, pointer, buffer."""

    __slots__ = ("line", "column", "pointer", "buffer", "index", "name")

    def __init__(self, line: int, column: int, pointer: int, buffer: str):
        self.line = line
        self.column = column
        self.pointer = pointer
        self.index = pointer
        self.buffer = buffer
        self.name = "<unicode string>"


def _c_tokens(text: str) -> list[yaml.Token]:
    """All tokens from libyaml, with marks rebuilt from (line, column) so pointers count characters."""
    buffer = text + "\0"  # PyYAML's reader appends a NUL; yamllint's comment rules look for it
    line_starts = [0]
    pos = text.find("\n")
    while pos != -1:
        line_starts.append(pos + 1)
        pos = text.find("\n", pos + 1)
    loader = yaml.CBaseLoader(text)
    tokens = []
    try:
        while loader.check_token():
            token = loader.get_token()
            for attr in ("start_mark", "end_mark"):
                m = getattr(token, attr)
                line = min(m.line, len(line_starts) - 1)
                setattr(token, attr, _Mark(m.line, m.column, line_starts[line] + m.column, buffer))
            tokens.append(token)
    finally:
        loader.dispose()
    return tokens


@lru_cache(maxsize=1)  # asked twice per file: for the tokens, then for the syntax check
def _fast_tokens(buffer: str) -> list[yaml.Token] | None:
    """libyaml's tokens where they are provably PyYAML's (see the module docstring), else None."""
    if not _c_scanner_safe(buffer):
        return None
    try:
        tokens = _c_tokens(buffer)
        if any(isinstance(t, _FLOW_STARTS) for t in tokens):
            return None
        for _ in yaml.parse(buffer, Loader=yaml.CBaseLoader):
            pass
    except yaml.YAMLError:
        return None
    return tokens


def _fast_token_or_comment_generator(buffer: str) -> Iterator[object]:
    tokens = _fast_tokens(buffer)
    if tokens is None:
        yield from _original_tokens(buffer)
        return
    prev = None
    for i, curr in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        nextnext = tokens[i + 2] if i + 2 < len(tokens) else None
        yield yl_parser.Token(curr.start_mark.line + 1, curr, prev, nxt, nextnext)
        yield from yl_parser.comments_between_tokens(curr, nxt)
        prev = curr


def _fast_syntax_error(buffer: str):  # type: ignore[no-untyped-def]
    if _fast_tokens(buffer) is not None:
        return None  # the C parser accepted the whole file, and PyYAML's agrees there
    return _original_syntax(buffer)


def _run(text: str, fast: bool) -> list[LintProblem]:
    # yamllint looks both helpers up as module globals at call time; we swap them only for this call.
    if fast:
        yl_parser.token_or_comment_generator = _fast_token_or_comment_generator
        linter.get_syntax_error = _fast_syntax_error
    try:
        return [
            LintProblem(p.line, p.column, p.rule or "syntax", p.desc, p.level or "error")
            for p in linter.run(text, config())
        ]
    finally:
        yl_parser.token_or_comment_generator = _original_tokens
        linter.get_syntax_error = _original_syntax


def lint(text: str, *, fast: bool = True) -> list[LintProblem]:
    """yamllint's problems for one file's text, with the reference configuration."""
    return _run(text, fast)


__all__ = ["LintProblem", "REFERENCE_CONFIG", "lint"]
