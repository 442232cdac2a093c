"""The checkout stage: the taxonomy repository at the pushed commit, cloned into the run folder.

Runs started by a push (the `taxonomy.push` trigger), from the Prefect UI or on a schedule name a
repository, a branch and a commit instead of a local folder. The clone lands in RUN/taxonomy/, so the
run keeps the exact taxonomy it was made from, and a rerun on the same folder fetches only what is new.

Why not a Prefect pull step: pull steps template blocks, variables and environment variables, not the
flow run's parameters (Prefect 3.7, `prefect/deployments/steps/core.py`), so a step cannot know which
commit a triggered run is for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from prefect import task

from labcycle.errors import LabcycleError
from labcycle.gitremote import is_transient, remote_problem
from labcycle.tasks.taxonomy.diff import git

_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")


class FetchError(LabcycleError):
    """The repository could not be reached for a moment (network, a busy server): worth a retry, unlike a
    missing repository, a refused login or a missing commit."""


@dataclass(frozen=True)
class Checkout:
    root: Path
    repo: str  # without credentials
    branch: str | None
    commit: str

    def to_json(self) -> dict[str, str | None]:
        return {"root": str(self.root), "repo": self.repo, "branch": self.branch, "commit": self.commit}


def redact(url: str) -> str:
    """The URL without user:password@, for messages and records (tokens ride in https URLs)."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, parts.fragment))


def blank(value: str | None) -> str | None:
    """None for unset or empty values: the trigger's templates render a missing payload key as ''."""
    return value.strip() if value and value.strip() else None


def checkout(repo: str, dest: Path, branch: str | None = None, commit: str | None = None) -> Checkout:
    """Clone or update `repo` in `dest` and check out `commit` (else the tip of `branch`, else the
    repository's default branch). Remote branches are fetched as origin/<name>, so `--base origin/main`
    works in the clone as in any other. Raises LabcycleError naming the repository and what to fix."""
    repo, branch, commit = repo.strip(), blank(branch), blank(commit)
    shown = redact(repo)
    if commit and not _SHA.match(commit):
        raise LabcycleError(f"commit {commit!r} is not a commit id; give the full or abbreviated hash the push named",
                            where=shown)
    if branch and (branch.startswith("-") or ".." in branch):
        raise LabcycleError(f"branch {branch!r} is not a branch name", where=shown)
    if not repo or repo.startswith("-"):
        raise LabcycleError("no taxonomy repository to clone; give its URL (taxonomy_repo) or a local taxonomy folder",
                            where=shown or None)
    if problem := remote_problem(repo):
        raise LabcycleError(f"taxonomy_repo {problem}", where=shown)
    if dest.exists() and not (dest / ".git").is_dir():
        if any(dest.iterdir()):
            raise LabcycleError("the run folder already has a taxonomy/ that is not a git clone; pick another output "
                                "folder", where=str(dest))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        git(dest, "init", "-q")
        if git(dest, "remote", check=False).split().count("origin"):
            git(dest, "remote", "set-url", "origin", repo)
        else:
            git(dest, "remote", "add", "origin", repo)
        git(dest, "fetch", "-q", "--prune", "--no-tags", "origin", "+refs/heads/*:refs/remotes/origin/*")
    except LabcycleError as exc:
        error = FetchError if exc.transient or is_transient(repo, str(exc)) else LabcycleError
        raise error(f"could not fetch the taxonomy repository: {_clean(str(exc), repo)}; check the URL and "
                    "that this worker can read it (git credentials, network)", where=shown) from None
    target = commit or (f"origin/{branch}" if branch else _default_branch(dest, shown))
    if commit and not _resolve(dest, commit):
        # A commit no branch holds any more (force-pushed away) may still be fetchable by id.
        git(dest, "fetch", "-q", "--no-tags", "origin", commit, check=False)
    sha = _resolve(dest, target)
    if not sha:
        what = f"commit {commit}" if commit else f"branch {branch!r}"
        raise LabcycleError(f"{what} not found in the taxonomy repository (force-pushed away, or a typo?)", where=shown)
    git(dest, "checkout", "-q", "--force", "--detach", sha)
    git(dest, "clean", "-q", "-ffdx")
    return Checkout(root=dest, repo=shown, branch=branch, commit=sha)


def _resolve(root: Path, ref: str) -> str | None:
    return git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip() or None


def _default_branch(root: Path, shown: str) -> str:
    """origin's HEAD branch; main or master when the remote does not say."""
    head = git(root, "ls-remote", "--symref", "origin", "HEAD", check=False)
    match = re.search(r"^ref: refs/heads/(\S+)\s+HEAD", head, re.MULTILINE)
    for name in ([match.group(1)] if match else []) + ["main", "master"]:
        if _resolve(root, f"origin/{name}"):
            return f"origin/{name}"
    raise LabcycleError("the taxonomy repository has no branches to check out; name a branch or a commit", where=shown)


def _clean(message: str, repo: str) -> str:
    return message.replace(repo, redact(repo))


def _fetch_failed(task, task_run, state) -> bool:  # type: ignore[no-untyped-def]
    return isinstance(state.result(raise_on_failure=False), FetchError)


@task(name="checkout taxonomy", retries=2, retry_delay_seconds=10, retry_condition_fn=_fetch_failed)
def checkout_task(repo: str, dest: Path, branch: str | None, commit: str | None) -> Checkout:
    """Fetches fail now and then (network, a busy git server): two retries; a missing commit fails at once."""
    return checkout(repo, dest, branch, commit)
