"""Read a qna.yaml safely: bounded size, strict UTF-8, no custom tags, no duplicate keys, bounded aliases.

The YAML is composed into a node graph, then turned into plain Python values by our own walk. Which
files are YAML at all is decided as the reference decides it, by PyYAML's pure-Python scanner and parser;
ruamel.yaml's C parser (libyaml) is used instead where it provably agrees, for speed: libyaml accepts a
few things PyYAML rejects (`answer: |# note`, `[what?, x]`, a reused &anchor) and rejects a few it accepts
(`{a:b}`), so files with tabs or odd line breaks, flow collections, a block-scalar header followed by `#`,
or anything libyaml rejects are composed by PyYAML's Python parser. Doing the walk ourselves lets us
- report every duplicate key, not only the first,
- count nodes reached through aliases, so a "billion laughs" file is stopped after a fixed budget
  instead of expanding exponentially,
- remember the line and column of every key and value, for messages that point at the spot.
Plain scalars are resolved and built exactly as the reference tooling (PyYAML's safe loader) does, with
PyYAML's own YAML 1.1 tables and constructors: an unquoted `No` is a boolean there and `010` is 8, while
`y`, `n` and `1e3` stay text (ruamel's YAML 1.1 rules differ on those), and we must reach the same verdict.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.error import ReusedAnchorWarning
from ruamel.yaml.error import YAMLError as RuamelYAMLError
from ruamel.yaml.resolver import BaseResolver

from labcycle.files import FileTooLarge, NotRegularFile, describe_os_error, read_bounded

MAX_FILE_BYTES = 1024 * 1024
# A real leaf has a few hundred nodes; 100k leaves room for any honest file and stops alias bombs fast.
MAX_NODES = 100_000
# Lists and mappings inside one another. A leaf or a config is 3-6 deep; the composers (libyaml's in C,
# PyYAML's in Python) and our walk recurse once per level, and libyaml's C recursion has no guard: 30,000
# levels overflow the C stack and kill the process. So the depth is measured before anything composes.
MAX_DEPTH = 100

_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null", "timestamp")}

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    line: int
    column: int
    rule: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "rule": self.rule, "message": self.message}


@dataclass
class ParsedYaml:
    text: str | None = None
    data: Any = None
    # (line, column) of each value, and of the key for mapping members; 1-based.
    value_pos: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)
    key_pos: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def where(self, path: JsonPath) -> tuple[int, int]:
        """Best position for a message about `path`: the key that names it, else its value, else its parent."""
        while True:
            if path in self.key_pos:
                return self.key_pos[path]
            if path in self.value_pos:
                return self.value_pos[path]
            if not path:
                return (1, 1)
            path = path[:-1]


class _TooManyNodes(Exception):
    pass


def _pyyaml_resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    """PyYAML's implicit-resolver table as PyYAML itself registers it.

    Importing yamllint (lint.py does) appends a second `int` resolver that reads YAML 1.2 `0o10` octals to
    PyYAML's global table, while the reference runs yamllint in a subprocess and never sees it. PyYAML
    registers one resolver per tag, and a later registration only appends, so keeping the first resolver
    of each tag for every leading character recovers PyYAML's own table whatever was imported before.
    tests/tasks/test_reader.py checks the result against PyYAML's table in a fresh interpreter.
    """
    table: dict[str, list[tuple[str, re.Pattern[str]]]] = {}
    for first, resolvers in pyyaml.resolver.Resolver.yaml_implicit_resolvers.items():
        kept: dict[str, re.Pattern[str]] = {}
        for tag, regexp in resolvers:
            kept.setdefault(tag, regexp)
        table[first] = list(kept.items())
    return table


IMPLICIT_RESOLVERS = _pyyaml_resolvers()


class _ReferenceResolver(BaseResolver):
    """Tags plain scalars with PyYAML's implicit-resolver table (the reference's), not ruamel's YAML 1.1 one."""

    yaml_implicit_resolvers = {k: list(v) for k, v in IMPLICIT_RESOLVERS.items()}

    def __init__(self, version: Any = None, loader: Any = None, loadumper: Any = None) -> None:
        BaseResolver.__init__(self, loader if loader is not None else loadumper)


class _PythonLoader(pyyaml.SafeLoader):
    """PyYAML's pure-Python safe loader, as the reference's yaml.safe_load, with the table above."""

    yaml_implicit_resolvers = {k: list(v) for k, v in IMPLICIT_RESOLVERS.items()}


_PY_CONSTRUCTOR = pyyaml.constructor.SafeConstructor()
# PyYAML's own scalar constructors, taken from the class rather than its shared yaml_constructors table, which
# libraries patch for every loader in the process (lm-format-enforcer, imported with vLLM, makes timestamps text).
_BUILDERS = {_STD + name: getattr(pyyaml.constructor.SafeConstructor, f"construct_yaml_{name}")
             for name in ("str", "int", "float", "bool", "null", "timestamp")}


def _construct_scalar(node: Any) -> Any:
    """The value PyYAML's safe loader builds for this scalar (its constructors, called directly: no cache)."""
    return _BUILDERS[node.tag](_PY_CONSTRUCTOR, pyyaml.nodes.ScalarNode(node.tag, node.value))


class _BadScalar(Exception):
    pass


def _loader() -> YAML:
    yaml = YAML(typ="safe")
    yaml.Resolver = _ReferenceResolver
    return yaml


# Where libyaml and PyYAML's Python reader and scanner part ways (see the module docstring).
_PYTHON_ONLY_CHARS = ("\t", "\x85", "\u2028", "\u2029", "\ufeff")
_BLOCK_HEADER_COMMENT = re.compile(r"[|>][-+0-9]*#")


def _has_flow_collection(root: Any) -> bool:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen or node.id == "scalar":
            continue
        seen.add(id(node))  # aliases share nodes: each is looked at once
        if node.flow_style:
            return True
        stack.extend(node.value if node.id == "sequence" else (n for pair in node.value for n in pair))
    return False


# YAML's line breaks (PyYAML's reader): a "line" of the depth bound below ends at any of them.
_LINE_BREAKS = re.compile("[\r\n\x85\u2028\u2029]")
# An indicator that opens a block collection on the line it is on: "- ", "? " and a key's ": ".
_BLOCK_INDICATOR = re.compile(r"[-?:](?=[ \t]|$)")


def _depth_bound(text: str) -> int:
    """An upper bound of the nesting depth, from the text alone, in one quick pass.

    Every flow collection starts at a bracket, so there are at most as many of them as `[` and `{`. The block
    collections around a node either started on an earlier line, each at a column no greater than the
    indentation of the node's line (a block collection ends at the first line indented less), at most two
    per column (a mapping and the sequence that is its value may share one); or started on the node's line,
    each at an indicator. Brackets and indicators inside quotes, comments or block scalars only make the
    bound larger, never smaller."""
    bound = text.count("[") + text.count("{")
    block = 0
    for line in _LINE_BREAKS.split(text):
        indent = len(line) - len(line.lstrip(" \t"))
        block = max(block, 2 * (indent + 1) + len(_BLOCK_INDICATOR.findall(line)))
    return bound + block + 1


def nesting_problem(text: str) -> tuple[Problem | None, bool]:
    """(a yaml/too-deep problem or None, whether PyYAML's Python parser must compose the text).

    Most files are decided by the bound alone. A file whose bound is over MAX_DEPTH is parsed into events,
    which keeps the nesting in a list, not on the stack, and stopped at the first collection past the limit:
    by libyaml (the parser under the C composer, and fast), and by PyYAML's Python parser when libyaml
    rejects the text. When both reject it, PyYAML composes it: it stops at the same error, before any deeper
    level, and names it. (Where the two parsers disagree on a file's structure, the Python composers, ours
    and PyYAML's, end in a RecursionError at worst, which is reported as too deep too.)"""
    if _depth_bound(text) <= MAX_DEPTH:
        return None, False
    parsers = [pyyaml.CSafeLoader] if hasattr(pyyaml, "CSafeLoader") else []
    for loader in [*parsers, _PythonLoader]:
        depth = 0
        try:
            for event in pyyaml.parse(text, Loader=loader):
                if isinstance(event, pyyaml.CollectionStartEvent):
                    depth += 1
                    if depth > MAX_DEPTH:
                        return too_deep(event.start_mark.line + 1, event.start_mark.column + 1), False
                elif isinstance(event, pyyaml.CollectionEndEvent):
                    depth -= 1
        except pyyaml.YAMLError:
            continue
        return None, False
    return None, True


def too_deep(line: int = 1, column: int = 1) -> Problem:
    return Problem(line, column, "yaml/too-deep",
                   f"lists or mappings are nested more than {MAX_DEPTH} levels deep here; flatten the structure")


def _compose(text: str, python_only: bool = False) -> Any:
    """The root node, composed as PyYAML composes it; raises PyYAML's errors where PyYAML would.
    The text must have passed nesting_problem (libyaml's composer recurses in C without a guard)."""
    if not python_only and not any(c in text for c in _PYTHON_ONLY_CHARS) and not _BLOCK_HEADER_COMMENT.search(text):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", ReusedAnchorWarning)  # PyYAML: "found duplicate anchor"
                root = _loader().compose(text)
        except (RuamelYAMLError, ReusedAnchorWarning):
            pass  # PyYAML decides, and words the error
        else:
            if root is None or not _has_flow_collection(root):
                return root
    return pyyaml.compose(text, Loader=_PythonLoader)


def _pos(node: Any) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _decode(raw: bytes, parsed: ParsedYaml) -> str | None:
    if b"\x00" in raw:
        parsed.problems.append(Problem(1, 1, "file/binary", "the file is binary (it contains NUL bytes); it must be UTF-8 text"))
        return None
    try:
        # Universal newlines, as the reference reads files (Path.read_text): CRLF files lint clean.
        return raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        # Everything before the bad byte is valid UTF-8: count lines and characters (not bytes) in it, as
        # an editor does, with the same universal newlines as the text itself.
        before = raw[: exc.start].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        parsed.problems.append(
            Problem(line, column, "file/encoding", f"byte 0x{raw[exc.start]:02x} is not valid UTF-8; save the file as UTF-8")
        )
        return None


def read_yaml(path: Path) -> ParsedYaml:
    """Read and parse one file; problems are collected, never raised."""
    parsed = ParsedYaml()
    try:
        raw = read_bounded(path, MAX_FILE_BYTES)
    except FileTooLarge as exc:
        # The size is exact when the file said it; a file that grew while read is only known to be too large.
        size = f"{exc.size / 1048576:.1f} MiB" if exc.size > exc.limit + 1 else "larger than 1 MiB"
        parsed.problems.append(
            Problem(1, 1, "file/too-large", f"the file is {size}; files here may be at most 1 MiB (move long text into the knowledge documents)")
        )
        return parsed
    except NotRegularFile as exc:
        parsed.problems.append(Problem(1, 1, "file/not-regular", f"{exc.strerror}; a leaf or settings file must be a plain file"))
        return parsed
    except OSError as exc:
        parsed.problems.append(Problem(1, 1, "file/unreadable", f"cannot read the file: {describe_os_error(exc)}; check it and its permissions"))
        return parsed
    text = _decode(raw, parsed)
    if text is not None:
        parse_text(text, parsed)
    return parsed


def parse_text(text: str, parsed: ParsedYaml | None = None) -> ParsedYaml:
    parsed = parsed or ParsedYaml()
    parsed.text = text
    problem, python_only = nesting_problem(text)
    if problem:
        parsed.problems.append(problem)
        return parsed
    try:
        root = _compose(text, python_only)
    except pyyaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.context.startswith("found duplicate anchor") and exc.context_mark:
            what = f"{exc.context.split(';')[0]} (first at line {exc.context_mark.line + 1}); give each &anchor its own name"
        parsed.problems.append(Problem(line, column, "yaml/syntax", f"YAML syntax error: {what}"))
        return parsed
    except pyyaml.YAMLError as exc:  # reader errors: control characters and the like
        parsed.problems.append(Problem(1, 1, "yaml/syntax", f"YAML error: {str(exc).splitlines()[0]}"))
        return parsed
    except RecursionError:  # a deep stack before us; the depth itself was bounded above
        parsed.problems.append(too_deep())
        return parsed
    if root is None or (root.id == "scalar" and root.tag == _STD + "null"):
        parsed.problems.append(
            Problem(1, 1, "file/empty", "the file is empty; a leaf needs at least version, created_by and seed_examples")
        )
        return parsed
    if root.id != "mapping":
        parsed.problems.append(
            Problem(*_pos(root), "file/not-mapping", "the top level must be a mapping of keys (version:, created_by:, seed_examples: ...), not a list or a single value")
        )
        return parsed
    walker = _Walker(parsed)
    try:
        parsed.data = walker.value(root, ())
    except _TooManyNodes:
        parsed.data = None
        parsed.problems.append(
            Problem(1, 1, "yaml/alias-limit", f"the file expands to more than {MAX_NODES:,} values through aliases (*name); write the content out instead of nesting aliases")
        )
    except RecursionError:
        parsed.data = None
        parsed.problems.append(too_deep())
    return parsed


class _Walker:
    def __init__(self, parsed: ParsedYaml):
        self.parsed = parsed
        self.nodes = 0

    def value(self, node: Any, path: JsonPath) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooManyNodes
        # Aliases share node objects, so the first position seen for a path is the anchor's; fine for messages.
        self.parsed.value_pos.setdefault(path, _pos(node))
        if node.id == "mapping":
            return self.mapping(node, path)
        if node.id == "sequence":
            if node.tag != _STD + "seq":
                return self.bad_tag(node)
            return [self.value(item, path + (i,)) for i, item in enumerate(node.value)]
        if node.tag not in _SCALAR_TAGS:
            return self.bad_tag(node)
        try:
            return self.scalar(node)
        except _BadScalar:
            return None

    def scalar(self, node: Any) -> Any:
        try:
            return _construct_scalar(node)
        except RecursionError:  # the stack ran out right here: the nesting is the problem, not this value
            raise
        except Exception as exc:  # e.g. a date that does not exist, or !!int on text: PyYAML raises here too
            short = node.value if len(node.value) <= 40 else node.value[:37] + "..."
            kind = node.tag.removeprefix(_STD)
            self.parsed.problems.append(
                Problem(*_pos(node), "yaml/value", f"'{short}' is not a valid {kind} ({type(exc).__name__}); put it in quotes to make it text")
            )
            raise _BadScalar from exc

    def mapping(self, node: Any, path: JsonPath) -> Any:
        if node.tag != _STD + "map":
            return self.bad_tag(node)
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _STD + "merge":
                self.parsed.problems.append(
                    Problem(*_pos(key_node), "yaml/merge-key", "merge keys (<<: *anchor) are not supported; write the keys out")
                )
                continue
            if key_node.id != "scalar":
                self.parsed.problems.append(Problem(*_pos(key_node), "yaml/complex-key", "a key must be a plain name, not a list or mapping"))
                continue
            if key_node.tag not in _SCALAR_TAGS:
                self.bad_tag(key_node)
                continue
            try:
                key = self.scalar(key_node)
            except _BadScalar:
                continue
            try:
                hash(key)
            except TypeError:
                key = str(key)
            if key in out:
                self.parsed.problems.append(
                    Problem(*_pos(key_node), "yaml/duplicate-key", f"duplicate key '{key}' (first at line {first_line[key]}); YAML keeps only the last value, remove one of them")
                )
            first_line.setdefault(key, _pos(key_node)[0])
            self.parsed.key_pos.setdefault(path + (key,), _pos(key_node))
            out[key] = self.value(value_node, path + (key,))
        return out

    def bad_tag(self, node: Any) -> None:
        self.parsed.problems.append(
            Problem(*_pos(node), "yaml/tag", f"the tag {node.tag} is not allowed here; remove it and write plain values")
        )
        return None


def read_settings_file(path: Path, *, missing: str, what: str, keys: str) -> ParsedYaml:
    """A settings YAML (config, recipe, gate policy) read safely; the first problem raises a LabcycleError
    with file:line:col. `missing` says what to do when there is no such file, `keys` names the top-level
    keys expected and `what` the file's kind (for a file that is not a mapping). An empty file is fine: it means the defaults."""
    from labcycle.errors import LabcycleError

    # Whatever exists is read (read_yaml says what is wrong with a FIFO or a device); only a missing name is "not found".
    parsed = read_yaml(path) if os.path.lexists(path) else None
    if parsed is None:
        raise LabcycleError(missing, where=str(path))
    bad = [p for p in parsed.problems if p.rule != "file/empty"]
    if bad:
        p = bad[0]
        message = f"the top level must be a mapping of {what} keys ({keys})" if p.rule == "file/not-mapping" else p.message
        raise LabcycleError(message, where=f"{path}:{p.line}:{p.column}")
    return parsed
