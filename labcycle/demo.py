"""Lay out the shipped example taxonomy as real git repositories, so the demo runs offline.

`make demo` calls `python -m labcycle.demo SRC OUT`: OUT/taxonomy becomes a git repository holding the
example leaves, and each folder under SRC/documents/ becomes a git repository OUT/documents/<name>.
Document repositories are committed with a fixed author and date, so their commit ids are the same on
every machine and the example qna.yaml files can pin them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

_FIXED = {
    "GIT_AUTHOR_NAME": "labcycle example",
    "GIT_AUTHOR_EMAIL": "example@labcycle.invalid",
    "GIT_COMMITTER_NAME": "labcycle example",
    "GIT_COMMITTER_EMAIL": "example@labcycle.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+00:00",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+00:00",
}


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **_FIXED, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def commit_tree(src: Path, dest: Path, message: str) -> str:
    """Copy src into a fresh git repository at dest and commit it; returns the commit id."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", message)
    return _git(dest, "rev-parse", "HEAD")


def prepare(src: Path, out: Path) -> dict[str, str]:
    """Build OUT/taxonomy and OUT/documents/*; returns {document repo name: commit id}."""
    commits = {}
    for doc_dir in sorted(p for p in (src / "documents").iterdir() if p.is_dir()):
        commits[doc_dir.name] = commit_tree(doc_dir, out / "documents" / doc_dir.name, f"{doc_dir.name} documents")
    tax = out / "taxonomy"
    if tax.exists():
        shutil.rmtree(tax)
    shutil.copytree(src, tax, ignore=shutil.ignore_patterns("documents", "README.md"))
    _git(tax, "init", "-q", "-b", "main")
    _git(tax, "add", "-A")
    _git(tax, "commit", "-q", "-m", "example taxonomy")
    return commits


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m labcycle.demo SRC_TAXONOMY OUT_DIR")
    for name, sha in prepare(Path(sys.argv[1]), Path(sys.argv[2])).items():
        print(f"documents/{name} at {sha}")
