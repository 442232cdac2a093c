"""Imports point down: base (labcycle/ shared modules) <- stages (tasks/, one package or module each) <- flows
(flows/) <- application (CLI, webhook, deploy, demo, chat, model import).

An import of a higher layer, or of another stage, fails this test: a stage reads another stage's output
through the run folder and the base's readers of it, never through the other stage's code.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

ROOTS = {"labcycle": REPO_ROOT / "labcycle", "labcycle.flows": REPO_ROOT / "flows", "labcycle.tasks": REPO_ROOT / "tasks"}
# profiles (shipped named configs and the demo's tiny models) are settings the lab_cycle flow reads when a run
# names one, after it has cloned the taxonomy they build on: the base, beside the config's readers.
APPLICATION = {"cli", "webhook", "deploy", "demo", "model_import", "chat"}
RANK = {"base": 0, "stage": 1, "flow": 2, "application": 3}

def module_name(path: Path) -> str:
    for prefix, root in sorted(ROOTS.items(), key=lambda item: -len(item[0])):
        if path.is_relative_to(root):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join([prefix, *parts])
    raise AssertionError(path)


def layer(module: str) -> tuple[str, str]:
    """(layer, unit): the unit is the stage's package or module for stages, the module otherwise."""
    parts = module.split(".")
    if parts[:2] == ["labcycle", "tasks"]:
        return "stage", parts[2] if len(parts) > 2 else ""
    if parts[:2] == ["labcycle", "flows"]:
        return "flow", ""
    unit = parts[1] if len(parts) > 1 else ""
    return ("application" if unit in APPLICATION else "base"), unit


def modules() -> set[str]:
    return {module_name(path) for root in ROOTS.values() for path in root.rglob("*.py")}


def imports() -> set[tuple[str, str]]:
    found = set()
    known = modules()
    for root in ROOTS.values():
        for path in root.rglob("*.py"):
            here = module_name(path)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    # `from labcycle import profiles` imports the module labcycle.profiles, not only labcycle
                    names = [node.module, *(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                found.update((here, name) for name in names if name.startswith("labcycle"))
    return found


def pointing_wrong(pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    wrong = set()
    for here, there in pairs:
        (a, unit_a), (b, unit_b) = layer(here), layer(there)
        if RANK[b] > RANK[a] or (a == b == "stage" and unit_b and unit_a != unit_b):
            wrong.add((here, there))
    return wrong


def test_no_import_points_up_or_across_stages():
    new = pointing_wrong(imports())
    assert not new, "imports that point up or sideways across stages:\n" + "\n".join(f"  {a} -> {b}" for a, b in sorted(new))


def test_the_rule_catches_what_it_should():
    assert pointing_wrong({("labcycle.tasks.mix.core", "labcycle.flows.lab_cycle"),
                           ("labcycle.tasks.mix.core", "labcycle.tasks.tune.data"),
                           ("labcycle.io", "labcycle.tasks.mix"),
                           ("labcycle.flows.tune", "labcycle.cli")}) == {
        ("labcycle.tasks.mix.core", "labcycle.flows.lab_cycle"), ("labcycle.tasks.mix.core", "labcycle.tasks.tune.data"),
        ("labcycle.io", "labcycle.tasks.mix"), ("labcycle.flows.tune", "labcycle.cli")}
    assert not pointing_wrong({("labcycle.tasks.mix.core", "labcycle.tasks.mix.recipe"),
                               ("labcycle.flows.tune", "labcycle.tasks.tune"), ("labcycle.cli", "labcycle.io")})


def test_from_a_package_import_a_module_counts_as_importing_that_module():
    # flows/lab_cycle.py says `from labcycle import profiles`: that is an import of labcycle.profiles
    assert ("labcycle.flows.lab_cycle", "labcycle.profiles") in imports()
