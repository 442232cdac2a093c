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


def real(path: Path) -> Path:
    """The path with every symlink followed, as far as they lead: a symlink loop is returned as it stands
    (reading it then says so) instead of raising as Path.resolve does."""
    return Path(os.path.realpath(path))


def located(path: Path) -> Path:
    """Where a file sits: its folder resolved, its own name kept. A leaf that is a symlink is identified by
    where the link is, not by where it points."""
    return real(path.parent) / path.name


def leads_outside(path: Path, root: Path) -> bool:
    """True for a file inside `root` that is a symlink to a file outside it (read, it would bring in a file
    the taxonomy does not hold)."""
    top = real(root)
    return located(path).is_relative_to(top) and not real(path).is_relative_to(top)


def find_in_paths(paths: Sequence[Path]) -> list[Path]:
    """Files named on the command line are taken as given (a FIFO or a device too, so reading it can say
    what it is); directories are searched recursively."""
    found: list[Path] = []
    for path in paths:
        found.extend(_walk(path) if path.is_dir() else [path])
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = real(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def leaf_id(path: Path, root: Path) -> str:
    """A leaf's stable id: its directory relative to the taxonomy root, with / separators."""
    return located(path).parent.relative_to(real(root)).as_posix()


def top_folder(path: Path, root: Path | None, folders: Sequence[str] = DEFAULT_FOLDERS) -> str | None:
    """The taxonomy top folder a file sits in: from the root when the file is under it, else the nearest
    ancestor whose name is one of the folders (as the reference parser does)."""
    resolved = located(path)
    if root is not None:
        try:
            return resolved.relative_to(real(root)).parts[0]
        except (ValueError, IndexError):
            pass
    for part in reversed(resolved.parent.parts):
        if part in folders:
            return part
    return None
