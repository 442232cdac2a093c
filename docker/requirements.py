"""Print labcycle's requirements from pyproject.toml, one per line, for `pip install -r`.

The images install their dependencies from this list in a layer that only pyproject.toml invalidates,
then copy the source and install labcycle itself with --no-deps: editing a flow rebuilds seconds of
image, not the gigabytes of torch and vLLM underneath.

    python docker/requirements.py pyproject.toml --extra cpu          # dependencies + the [cpu] extra
    python docker/requirements.py pyproject.toml --only prefect typer # just these, as pyproject pins them

Exits 2 on an extra or a name that pyproject.toml does not declare, so an image build fails loudly
instead of quietly installing less than it should.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def canonical(name: str) -> str:
    """PEP 503 normalization: `ruamel.yaml`, `Ruamel_YAML` and `ruamel-yaml` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonical(match.group(1))


def requirements(pyproject: Path, extras: list[str] | None = None, only: list[str] | None = None) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    deps: list[str] = list(project.get("dependencies", []))
    if only is not None:
        wanted = {canonical(n) for n in only}
        declared = {requirement_name(d) for d in deps}
        unknown = sorted(wanted - declared)
        if unknown:
            raise KeyError(f"{pyproject}: no dependency named {', '.join(unknown)}")
        deps = [d for d in deps if requirement_name(d) in wanted]
    optional = project.get("optional-dependencies", {})
    for extra in extras or []:
        if extra not in optional:
            raise KeyError(f"{pyproject}: no extra [{extra}] (declared: {', '.join(sorted(optional))})")
        deps += optional[extra]
    return deps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="add an optional-dependencies group (repeatable)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="keep only these [project] dependencies")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.extra, args.only)
    except KeyError as exc:
        print(f"requirements.py: {exc.args[0]}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
