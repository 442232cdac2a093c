"""What ships in the wheel, and what validating a taxonomy must not import."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_packages_and_schemas(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("labcycle-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "labcycle/cli.py",
        "labcycle/flows/lab_cycle.py",
        "labcycle/tasks/taxonomy/validate.py",
        "labcycle/tasks/taxonomy/documents.py",
        "labcycle/schemas/config.schema.json",
        "labcycle/schemas/manifest.schema.json",
        "labcycle/schemas/pipeline.schema.json",
        "labcycle/schemas/record.schema.json",
        "labcycle/schemas/recipe.schema.json",
        "labcycle/tasks/generate/pipelines/knowledge.yaml",
        "labcycle/tasks/generate/pipelines/freeform_skills.yaml",
        "labcycle/tasks/generate/pipelines/grounded_skills.yaml",
        "labcycle/tasks/generate/prompts/knowledge/generate_qa.j2",
        "labcycle/teacher/openai_client.py",
        "labcycle/tasks/mix/stage.py",
        "labcycle/tasks/gate/__init__.py",
        "labcycle/tasks/gate/policy.py",
        "labcycle/tasks/gate/plan.py",
        "labcycle/tasks/gate/rules.py",
        "labcycle/tasks/gate/report.py",
        "labcycle/tasks/release/registry.py",
        "labcycle/tasks/evaluate/stage.py",
        "labcycle/tasks/evaluate/prompts/judge.j2",
        "labcycle/tasks/evaluate/suites/general_mc.jsonl",
        "labcycle/tasks/evaluate/safety.py",
        "labcycle/tasks/evaluate/suites/safety.jsonl",
        "labcycle/tasks/evaluate/prompts/safety_judge.j2",
        "labcycle/tasks/evaluate/prompts/safety_judge_system.j2",
        "labcycle/schemas/safety-suite.schema.json",
        "labcycle/schemas/eval-suite.schema.json",
        "labcycle/profiles/demo.yaml",
        "labcycle/webhook/app.py",
        "labcycle/schemas/webhook.schema.json",
        "labcycle/profiles/demo-pipelines/knowledge.yaml",
        "labcycle/schemas/gate.schema.json",
        "labcycle/tasks/tune/trainer.py",
        "labcycle/flows/tune.py",
        "labcycle/deploy/pools.py",
        "labcycle/deploy/steps.py",
        "labcycle/tasks/taxonomy/checkout.py",
        "labcycle/schemas/pools.schema.json",
        *(f"labcycle/schemas/qna/{family}.v{v}.json" for family in ("knowledge", "compositional_skills") for v in (1, 2, 3)),
    ):
        assert required in names, required
    # Nothing lands at the top of site-packages except our namespace.
    assert {n.split("/")[0] for n in names} <= {"labcycle", next(n.split("/")[0] for n in names if ".dist-info/" in n)}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "labcycle = labcycle.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_validating_imports_neither_prefect_nor_torch(tmp_path):
    leaf = tmp_path / "compositional_skills" / "a" / "qna.yaml"
    leaf.parent.mkdir(parents=True)
    sys.path.insert(0, str(REPO_ROOT))
    from tests.leafgen import skill

    leaf.write_text(skill(3, grounded=False))
    code = (
        "import sys\n"
        "from labcycle.cli import main\n"
        f"sys.argv = ['labcycle', 'taxonomy', 'validate', '--taxonomy', {str(tmp_path)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('torch', 'prefect', 'transformers', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shipped_configs_recipes_policies_and_pipelines_are_valid():
    """Every labcycle.yaml, recipe.yaml, gate.yaml and pipeline spec in the repository loads, checked
    against its schema."""
    from labcycle.flows import config
    from labcycle.tasks.gate import load_policy
    from labcycle.tasks.generate.spec import load_spec
    from labcycle.tasks.mix import load_recipe

    loaders = {"labcycle.yaml": config.load, "recipe.yaml": load_recipe, "gate.yaml": load_policy}
    found, specs = [], []
    for dirpath, dirnames, filenames in os.walk(REPO_ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("build", "runs") and not d.endswith(".egg-info")]
        found += [Path(dirpath) / name for name in filenames if name in loaders]
        if Path(dirpath).name in ("pipelines", "demo-pipelines"):
            specs += [Path(dirpath) / name for name in filenames if name.endswith(".yaml")]
    assert {p.name for p in found} == set(loaders)  # the example taxonomy ships one of each
    for path in found:
        loaders[path.name](path)
    assert len(specs) == 6  # the shipped pipelines and the demo profile's
    for path in specs:
        load_spec(path)
    from labcycle import profiles

    for name in profiles.NAMES:  # each profile's config and the gate policy it names
        cfg = config.from_mapping(profiles.resolved_config(name), source=name)
        load_policy(cfg.gate.policy)
    from labcycle.tasks.evaluate import shipped_suites
    from labcycle.tasks.evaluate.suite import load_suite

    assert len(shipped_suites()) == 2
    for path in shipped_suites():
        load_suite(path)
    from labcycle.tasks.evaluate.safety import load_safety_suite, shipped_safety_suite

    load_safety_suite(shipped_safety_suite())


def test_every_third_party_package_the_code_imports_is_declared():
    """A package labcycle/, flows/ or tasks/ imports is in pyproject.toml (dependencies, or an extra for an
    optional one), not trusted to arrive through another package's requirements."""
    import ast
    import re
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {normal(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in requirements}  # type: ignore[union-attr]
    imported: dict[str, str] = {}
    for folder in ("labcycle", "flows", "tasks"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for name in names:
                    imported.setdefault(name.split(".")[0], str(path.relative_to(REPO_ROOT)))
    third_party = {m: where for m, where in imported.items() if m not in sys.stdlib_module_names and m != "labcycle"}
    distributions = packages_distributions()
    undeclared = {}
    for module, where in sorted(third_party.items()):
        dists = {normal(d) for d in distributions.get(module, [module])}
        if not dists & declared:
            undeclared[module] = where
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    for needed in ("anyio", "fsspec", "httpx", "huggingface-hub", "numpy", "psutil", "pyarrow"):
        assert needed in declared, needed
