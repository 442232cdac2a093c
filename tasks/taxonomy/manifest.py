"""The run manifest: what this run read (taxonomy commit, base, leaves with kinds and content hashes,
documents and chunk counts) and under which configuration. Later stages cache on the leaf hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labcycle.tasks.taxonomy.documents import DocumentSet

MANIFEST_VERSION = 1


@dataclass
class LeafEntry:
    id: str  # the leaf directory relative to the taxonomy root
    path: str  # its qna.yaml relative to the taxonomy root
    kind: str
    version: int | None
    status: str  # added | modified (as the diff found it)
    hash: str
    documents: dict[str, Any] | None = None  # repo, commit, files
    chunks: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "kind": self.kind,
            "version": self.version,
            "status": self.status,
            "hash": self.hash,
            "chunks": self.chunks,
            "documents": self.documents,
        }


def leaf_hash(qna_bytes: bytes, documents: DocumentSet | None) -> str:
    """Content hash over the leaf's YAML bytes and, for knowledge, the resolved documents' bytes.

    The repository URL is left out on purpose: moving the same documents to a mirror changes nothing
    that generation would see.
    """
    h = hashlib.sha256()
    h.update(b"qna\0")
    h.update(qna_bytes)
    if documents is not None:
        h.update(b"\0documents\0" + documents.commit.encode())
        for doc in documents.documents:
            h.update(b"\0" + doc.path.encode() + b"\0" + doc.sha256.encode())
    return h.hexdigest()


def build_manifest(*, taxonomy_root: str, taxonomy_commit: str | None, base: str, config_digest: str,
                   leaves: list[LeafEntry], all_leaves: int) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "taxonomy": {"root": taxonomy_root, "commit": taxonomy_commit, "base": base, "leaves_total": all_leaves},
        "config_digest": config_digest,
        "leaves": [leaf.to_json() for leaf in sorted(leaves, key=lambda e: e.id)],
    }


def validate_manifest(manifest: dict[str, Any]) -> None:
    from labcycle.schemas import validator

    validator("manifest.schema.json").validate(manifest)


def taxonomy_commit(root: Path) -> str | None:
    """HEAD of the taxonomy's git repository, or None when it is not one."""
    from labcycle.errors import LabcycleError
    from labcycle.tasks.taxonomy.diff import git

    try:
        return git(root, "rev-parse", "--verify", "-q", "HEAD").strip() or None
    except LabcycleError:
        return None


# --- Prefect tasks ---------------------------------------------------------------------------------

from prefect import task  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402


@task(name="write manifest")
def write_run_manifest(*, root: Path, run_dir: Path, base: str, selected: list, documents: dict[str, DocumentSet],
                       chunk_counts: dict[str, int], all_leaves: int, config_digest: str) -> dict[str, Any]:
    """RUN/manifest.json: the selected leaves with kinds, hashes, documents and chunk counts."""
    from labcycle.io import write_json
    from labcycle.run_folder import RunFolder

    entries = []
    for leaf, leaf_report in selected:
        docs = documents.get(leaf.path)
        entries.append(LeafEntry(
            id=Path(leaf.path).parent.as_posix(),
            path=leaf.path,
            kind=leaf_report.kind,
            version=leaf_report.version,
            status=leaf.status,
            hash=leaf_hash((root / leaf.path).read_bytes(), docs),
            documents=None if docs is None else {"repo": docs.repo, "commit": docs.commit, "files": [d.to_json() for d in docs.documents]},
            chunks=chunk_counts.get(leaf.path, 0),
        ))
    manifest = build_manifest(taxonomy_root=str(root), taxonomy_commit=taxonomy_commit(root), base=base,
                              config_digest=config_digest, leaves=entries, all_leaves=all_leaves)
    validate_manifest(manifest)
    write_json(RunFolder(run_dir).manifest, manifest)
    return manifest


@task(name="leaves table")
def leaves_table(manifest: dict[str, Any]) -> None:
    rows = [{"leaf": e["id"], "kind": e["kind"], "status": e["status"], "chunks": e["chunks"], "hash": e["hash"][:12]} for e in manifest["leaves"]]
    create_table_artifact(table=rows, key="leaves", description=f"{len(rows)} leaves selected against {manifest['taxonomy']['base']}")


def lineage(manifest_path: Path) -> dict[str, Any]:
    """What a tuned model's card records about its data: the taxonomy commit and the leaves (id, kind, hash)."""
    data = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    return {"taxonomy_commit": data["taxonomy"]["commit"], "taxonomy_base": data["taxonomy"]["base"],
            "leaves": [{"id": leaf["id"], "kind": leaf["kind"], "hash": leaf["hash"]} for leaf in data["leaves"]]}
