"""The taxonomy stage of a run: discover → validate → select changed leaves → fetch documents → chunk →
manifest. The first subflow of lab_cycle; `labcycle run --until taxonomy` runs it alone.

Each stage is a task in labcycle.tasks; this module only wires them together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture
from prefect.states import Failed

from labcycle.flows import config as config_module
from labcycle.env import cache_dir
from labcycle.errors import LabcycleError
from labcycle.flows.config import Config
from labcycle.run_folder import RunFolder
from labcycle.tasks.taxonomy.chunk import chunk_leaf_documents
from labcycle.tasks.taxonomy.documents import fetch_leaf_documents
from labcycle.tasks.taxonomy.manifest import leaves_table, write_run_manifest
from labcycle.tasks.taxonomy import report as render
from labcycle.tasks.taxonomy.stage import discover_leaves, select_changed_leaves, validate_taxonomy


def _failure(futures: dict[str, PrefectFuture]) -> str | None:
    """The first user-facing error among finished futures, as one line per failed leaf."""
    lines = []
    for future in futures.values():
        future.wait()
        if future.state.is_failed():
            try:
                future.result()
            except LabcycleError as exc:
                lines.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - reported, and the run stops
                lines.append(f"{type(exc).__name__}: {exc}")
    return "\n".join(lines) or None


@flow(name="taxonomy", log_prints=True)
def prepare_taxonomy(taxonomy: str = "taxonomy", base: str | None = None, output: str | None = None,
                     config: Config | str | None = None) -> Any:
    """Read a qna.yaml taxonomy into a run folder: validation report, chunks, manifest.

    Args:
        taxonomy: the taxonomy root (a folder holding knowledge/, compositional_skills/, ...).
        base: the git ref the changed leaves are selected against; "empty" selects every leaf;
            default origin/main, else main.
        output: the run folder; default runs/<timestamp>.
        config: a labcycle.yaml, or the config lab_cycle parsed; default: built-in defaults.
    """
    try:
        cfg = config_module.settings(config)
    except LabcycleError as exc:
        return Failed(message=str(exc))
    root = Path(taxonomy).resolve()
    run = RunFolder.at(output)
    run_dir = run.root
    folders = cfg.taxonomy.folders

    files = discover_leaves(root, folders)
    if not files:
        return Failed(message=f"{root}: no qna.yaml found under {', '.join(folders)}; point --taxonomy at the taxonomy root")
    report = validate_taxonomy(root, files, folders, cfg.taxonomy.strict, run_dir)
    if not report.valid:
        return Failed(message="\n".join([render.summary(report), *render.text_lines(report)]))

    try:
        diff = select_changed_leaves(root, base, folders)
    except LabcycleError as exc:
        return Failed(message=str(exc))
    by_path = {Path(f.path).resolve(): f for f in report.files}
    selected = {leaf.path: (leaf, by_path[(root / leaf.path).resolve()]) for leaf in diff.leaves}

    documents = {
        path: fetch_leaf_documents.submit(Path(path).parent.as_posix(), leaf_report.data["document"], cache_dir(cfg), root,
                                          cfg.documents.max_bytes)
        for path, (_, leaf_report) in selected.items()
        if leaf_report.kind == "knowledge"
    }
    if problem := _failure(documents):
        return Failed(message=problem)
    chunks = {
        path: chunk_leaf_documents.submit(future.result(), cfg.chunking, run_dir)
        for path, future in documents.items()
    }
    if problem := _failure(chunks):
        return Failed(message=problem)

    manifest = write_run_manifest(
        root=root,
        run_dir=run_dir,
        base=diff.base,
        selected=[(leaf, leaf_report) for leaf, leaf_report in selected.values()],
        documents={p: f.result() for p, f in documents.items()},
        chunk_counts={p: f.result() for p, f in chunks.items()},
        all_leaves=len(files),
        config_digest=cfg.digest(),
    )
    leaves_table(manifest)
    return {"run_dir": str(run_dir), "manifest": str(run.manifest), "leaves": len(manifest["leaves"])}
