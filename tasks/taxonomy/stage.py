"""Prefect tasks of the taxonomy stage: thin wrappers over discover, validate and diff.

Kept apart from the pure modules so `labcycle taxonomy validate` never pays for importing Prefect.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from labcycle.io import write_json
from labcycle.run_folder import RunFolder
from labcycle.tasks.taxonomy import report as render
from labcycle.tasks.taxonomy.diff import DiffResult, changed_leaves
from labcycle.tasks.taxonomy.discover import find_leaf_files
from labcycle.tasks.taxonomy.validate import ValidationReport, validate_files


@task(name="discover leaves")
def discover_leaves(root: Path, folders: tuple[str, ...]) -> list[Path]:
    return find_leaf_files(root, folders)


@task(name="validate taxonomy")
def validate_taxonomy(root: Path, files: list[Path], folders: tuple[str, ...], strict: bool, run_dir: Path) -> ValidationReport:
    """Validate every leaf; the report goes to RUN/validation.json and, when invalid, to a Markdown artifact."""
    report = validate_files(files, root=root, folders=folders, strict=strict)
    write_json(RunFolder(run_dir).validation, report.to_json())
    if not report.valid:
        create_markdown_artifact(markdown=render.markdown(report), key="taxonomy-validation", description=render.summary(report))
    return report


@task(name="select changed leaves")
def select_changed_leaves(root: Path, base: str | None, folders: tuple[str, ...]) -> DiffResult:
    return changed_leaves(root, base, folders)
