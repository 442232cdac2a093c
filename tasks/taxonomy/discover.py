"""Find the leaves of a taxonomy: every qna.yaml under the top folders (knowledge/, compositional_skills/,
foundational_skills/ by default), plus misnamed files (qna.yml, QNA.yaml) so validation can name the fix
instead of skipping them silently as the reference does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

DEFAULT_FOLDERS = ("knowledge", "compositional_skills", "foundational_skills")
LEAF_NAME = "qna.yaml"


def is_leaf_candidate(name: str) -> bool:
    """qna.yaml itself, and the near-misses users write by accident."""
    return name.lower() in ("qna.yaml", "qna.yml")


def _walk(directory: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_leaf_candidate(name):
                yield Path(dirpath) / name


def find_leaf_files(root: Path, folders: Sequence[str] = DEFAULT_FOLDERS) -> list[Path]:
    """Leaf files under the taxonomy root's top folders, in a stable order."""
    found: list[Path] = []
    for folder in folders:
        if (root / folder).is_dir():
            found.extend(_walk(root / folder))
    return found


def find_in_paths(paths: Sequence[Path]) -> list[Path]:
    """Files named on the command line are taken as given; directories are searched recursively."""
    found: list[Path] = []
    for path in paths:
        found.extend([path] if path.is_file() else _walk(path))
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def leaf_id(path: Path, root: Path) -> str:
    """A leaf's stable id: its directory relative to the taxonomy root, with / separators."""
    return path.resolve().parent.relative_to(root.resolve()).as_posix()


def top_folder(path: Path, root: Path | None, folders: Sequence[str] = DEFAULT_FOLDERS) -> str | None:
    """The taxonomy top folder a file sits in: from the root when the file is under it, else the nearest
    ancestor whose name is one of the folders (as the reference parser does)."""
    resolved = path.resolve()
    if root is not None:
        try:
            return resolved.relative_to(root.resolve()).parts[0]
        except (ValueError, IndexError):
            pass
    for part in reversed(resolved.parent.parts):
        if part in folders:
            return part
    return None
