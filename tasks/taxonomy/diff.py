"""Which qna.yaml leaves of a taxonomy changed since a base ref: the core of `labcycle taxonomy diff`.

A leaf is a file named exactly `qna.yaml` under one of the top folders, at any depth. The changed
leaves are those that differ between the merge base of the base ref and HEAD on one side, and the
working tree on the other: committed, staged, unstaged and untracked changes all count, deleted
leaves do not. `--base empty` takes every leaf and needs no git at all.

Plain subprocess calls to git, no GitPython and no Prefect: the flow wraps this in a task.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from labcycle.errors import LabcycleError

from labcycle.tasks.taxonomy.discover import DEFAULT_FOLDERS, LEAF_NAME
EMPTY_BASE = "empty"
ADDED = "added"
MODIFIED = "modified"

# Set by git while it runs hooks; inherited, they would point git at another repository than `root`.
_REDIRECT_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_PREFIX")


@dataclass(frozen=True)
class ChangedLeaf:
    path: str  # posix path of the qna.yaml relative to the taxonomy root
    status: str  # "added" | "modified"


@dataclass(frozen=True)
class DiffResult:
    base: str  # the base as resolved for display: "origin/main", "main", the user's ref, or "empty"
    leaves: list[ChangedLeaf]  # sorted by path

    def to_json(self) -> dict:
        return {"base": self.base, "leaves": [{"path": leaf.path, "status": leaf.status} for leaf in self.leaves]}


# --- running git ------------------------------------------------------------------------------


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REDIRECT_VARS}
    env.update(
        GIT_TERMINAL_PROMPT="0",  # never hang on a credential prompt
        LC_ALL="C",  # stable English messages to match and summarize
        GIT_OPTIONAL_LOCKS="0",  # a read-only diff must not rewrite the index under a concurrent git
        GIT_LITERAL_PATHSPECS="1",  # folder and file names are paths, never glob patterns
    )
    return env


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    from labcycle.gitremote import GIT_TIMEOUT_S, git_env

    try:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=git_env(_git_env()),  # the checkout stage fetches through here too
            timeout=GIT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        command = next((a for a in args if not a.startswith("-")), "")
        raise LabcycleError(f"git {command} took longer than {GIT_TIMEOUT_S}s; check the repository (and the "
                            "network, for a fetch), then rerun", where=str(root), transient=True) from None
    except FileNotFoundError:
        raise LabcycleError(
            "git is not installed or not on PATH; install git, or pass --base empty to take every leaf without git"
        ) from None


def _decode(data: bytes) -> str:
    # surrogateescape keeps file names that are not UTF-8 usable as paths instead of crashing
    return data.decode("utf-8", errors="surrogateescape")


def _summarize(stderr: bytes, returncode: int) -> str:
    """git's complaint in one line: the first fatal/error line, else the last line it printed."""
    lines = [line.strip() for line in _decode(stderr).splitlines() if line.strip()]
    for line in lines:
        for prefix in ("fatal:", "error:"):
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
    return lines[-1] if lines else f"exit status {returncode}"


def _failure(root: Path, args: Sequence[str], proc: subprocess.CompletedProcess[bytes]) -> LabcycleError:
    command = next((a for a in args if not a.startswith("-")), "")
    summary = _summarize(proc.stderr, proc.returncode)
    return LabcycleError(f"git {command} failed: {summary}; fix the taxonomy repository and retry", where=str(root))


def git(root: Path, *args: str, check: bool = True) -> str:
    """Run `git -C root ARGS` and return its stdout.

    With check, a non-zero exit raises LabcycleError carrying git's own complaint in one line;
    without, stdout is returned whatever the exit status (git prints nothing on most failures).
    """
    proc = _run(root, *args)
    if check and proc.returncode != 0:
        raise _failure(root, args, proc)
    return _decode(proc.stdout)


# --- repository checks ------------------------------------------------------------------------


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise LabcycleError(
            "taxonomy directory not found; pass --taxonomy <dir> naming the taxonomy checkout", where=str(root)
        )


def _require_work_tree(root: Path) -> None:
    _require_dir(root)
    proc = _run(root, "rev-parse", "--is-inside-work-tree")
    if proc.returncode != 0:
        if b"not a git repository" in proc.stderr:
            raise LabcycleError(
                "not a git repository; run `git init` and commit the taxonomy there, "
                "or pass --base empty to take every leaf",
                where=str(root),
            )
        raise _failure(root, ["rev-parse"], proc)
    if _decode(proc.stdout).strip() != "true":
        # e.g. the .git directory itself, or a bare repository: there is no working tree to diff
        raise LabcycleError(
            "not inside a git working tree; pass --taxonomy <dir> naming the checked-out taxonomy", where=str(root)
        )


def _require_commits(root: Path) -> None:
    if not _resolve(root, "HEAD"):
        raise LabcycleError(
            "the taxonomy repository has no commits yet; commit the taxonomy, or pass --base empty to take every leaf",
            where=str(root),
        )


def _resolve(root: Path, ref: str) -> str | None:
    """The commit `ref` names, or None when there is none."""
    out = git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip()
    return out or None


def default_base(root: Path) -> str:
    """`origin/main` when the repository has it (a clone), else the local `main`."""
    root = Path(root)
    _require_work_tree(root)
    _require_commits(root)
    for candidate in ("origin/main", "main"):
        if _resolve(root, candidate):
            return candidate
    raise LabcycleError(
        "neither 'origin/main' nor 'main' exists; pass --base <ref> naming the branch to compare with, "
        "or --base empty to take every leaf",
        where=str(root),
    )


# --- leaves -----------------------------------------------------------------------------------


def _folder_parts(folders: Sequence[str]) -> list[tuple[str, ...]]:
    return [PurePosixPath(f.strip("/")).parts for f in folders if f.strip("/")]


def _is_leaf(path: str, folder_parts: list[tuple[str, ...]]) -> bool:
    parts = PurePosixPath(path).parts
    if not parts or parts[-1] != LEAF_NAME:
        return False
    return any(len(parts) > len(top) and parts[: len(top)] == top for top in folder_parts)


def _nul_fields(out: str) -> list[str]:
    return [field for field in out.split("\0") if field]


def _in_work_tree(root: Path) -> bool:
    """Whether git can see a working tree at root; False without git too, so `--base empty` still works."""
    try:
        proc = _run(root, "rev-parse", "--is-inside-work-tree")
    except LabcycleError:
        return False
    return proc.returncode == 0 and proc.stdout.strip() == b"true"


def _all_leaves(root: Path, folders: Sequence[str]) -> list[str]:
    """Every leaf in the working tree: the whole taxonomy compared with nothing."""
    _require_dir(root)
    tops = _folder_parts(folders)
    if _in_work_tree(root):
        # Ask git so that ignored qna.yaml files stay out, as they do in a real diff.
        out = git(root, "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *folders)
        # --cached also lists files deleted from disk but still in the index; those are gone
        paths = {p for p in _nul_fields(out) if _is_leaf(p, tops) and (root / p).is_file()}
        return sorted(paths)
    paths: set[str] = set()
    for folder in folders:
        top = root / folder
        if not top.is_dir():
            continue
        for dirpath, _dirnames, filenames in os.walk(top):
            if LEAF_NAME in filenames and (Path(dirpath) / LEAF_NAME).is_file():
                paths.add((Path(dirpath) / LEAF_NAME).relative_to(root).as_posix())
    return sorted(p for p in paths if _is_leaf(p, tops))


def _blobs_at(root: Path, commit: str, paths: Sequence[str]) -> dict[str, str]:
    """path -> blob id at commit, for those of paths that exist there."""
    if not paths:
        return {}
    out = git(root, "ls-tree", "-r", "-z", commit, "--", *paths)
    blobs: dict[str, str] = {}
    for entry in _nul_fields(out):
        meta, _, path = entry.partition("\t")  # "<mode> <type> <object>\t<path>"
        fields = meta.split()
        if len(fields) == 3 and fields[1] == "blob":
            blobs[path] = fields[2]
    return blobs


def changed_leaves(root: Path, base: str | None = None, folders: Sequence[str] = DEFAULT_FOLDERS) -> DiffResult:
    """The leaves that changed between the merge base of `base` and HEAD, and the working tree."""
    root = Path(root)
    if base == EMPTY_BASE:
        return DiffResult(EMPTY_BASE, [ChangedLeaf(p, ADDED) for p in _all_leaves(root, folders)])

    _require_work_tree(root)
    _require_commits(root)
    shown = default_base(root) if base is None else base
    if shown.startswith("-"):
        # git would read it as an option
        raise LabcycleError(f"'{shown}' is not a ref name; pass --base <ref>, e.g. --base main", where=str(root))
    base_commit = _resolve(root, shown)
    if base_commit is None:
        raise LabcycleError(
            f"base ref '{shown}' does not exist; run `git fetch` if it is a remote branch, "
            "or pass --base <ref> naming an existing branch (or --base empty to take every leaf)",
            where=str(root),
        )
    proc = _run(root, "merge-base", base_commit, "HEAD")
    if proc.returncode == 1 and not proc.stderr.strip():
        raise LabcycleError(
            f"'{shown}' and HEAD share no history (no merge base); pass --base <ref> naming a branch HEAD "
            "was created from, or --base empty to take every leaf",
            where=str(root),
        )
    if proc.returncode != 0:
        raise _failure(root, ["merge-base"], proc)
    merge_base = _decode(proc.stdout).strip()

    tops = _folder_parts(folders)
    statuses: dict[str, str] = {}
    unsure: list[str] = []  # leaves whose status needs a look at the merge base's tree

    # One commit-to-working-tree diff covers committed, staged and unstaged changes. --relative keeps
    # paths relative to the taxonomy root (which may sit below the repository's top) and drops the rest;
    # --no-renames makes a moved leaf an add at its new path and a delete at the old one.
    out = git(
        root, "diff", "--name-status", "-z", "--no-renames", "--no-ext-diff", "--relative", merge_base, "--", *folders
    )
    fields = _nul_fields(out)
    for letter, path in zip(fields[0::2], fields[1::2]):
        if not _is_leaf(path, tops):
            continue
        if letter.startswith("A"):
            statuses[path] = ADDED
        elif letter.startswith(("M", "T")):
            statuses[path] = MODIFIED
        elif not letter.startswith("D"):
            unsure.append(path)  # e.g. "U", unmerged in the middle of a merge

    # Untracked files are invisible to the diff; ignored ones are left out on purpose.
    out = git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", *folders)
    untracked = [p for p in _nul_fields(out) if _is_leaf(p, tops)]
    unsure.extend(untracked)

    if unsure:
        at_base = _blobs_at(root, merge_base, unsure)
        # An untracked leaf can still exist at the merge base (after `git rm --cached`); it only
        # counts when its content differs from there.
        compare = [p for p in untracked if p in at_base and (root / p).is_file()]
        current = dict(zip(compare, git(root, "hash-object", "--", *compare).split())) if compare else {}
        for path in unsure:
            if path not in at_base:
                statuses[path] = ADDED
            elif path not in current or current[path] != at_base[path]:
                statuses[path] = MODIFIED

    # The diff can name paths that no longer exist on disk (staged, then removed); those are deleted leaves.
    leaves = [ChangedLeaf(path, status) for path, status in sorted(statuses.items()) if (root / path).is_file()]
    return DiffResult(shown, leaves)
