"""Content fingerprints of files and folders: what a cached stage result was made from (the tune stage's
cache key and lineage, the evaluation's candidate and base)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def fingerprint_path(path: Path, *, edge_bytes: int | None = None) -> str:
    """A content fingerprint of a file or a folder's files.

    With edge_bytes, each file contributes its size and its first and last edge_bytes only: model
    weights run to many GB, and a changed checkpoint changes its size or its safetensors header.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{size}\0".encode())
        with f.open("rb") as fh:
            if edge_bytes is None or size <= 2 * edge_bytes:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(fh.read(edge_bytes))
                fh.seek(size - edge_bytes)
                h.update(fh.read(edge_bytes))
    return h.hexdigest()


def model_fingerprint(model_dir: Path) -> str:
    return fingerprint_path(model_dir, edge_bytes=1 << 20)


__all__ = ["fingerprint_path", "model_fingerprint"]
