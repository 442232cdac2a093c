"""GitHub and GitLab push payloads read into one typed Push, and the repository and branch filters.

Pure functions: no I/O, no framework. A payload that is not a push this module can read raises
PayloadError, which the receiver answers with 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

LEAF_FILE = "qna.yaml"
# GitHub lists at most 2048 commits in a push payload; a push that reaches the cap may have more.
GITHUB_MAX_COMMITS = 2048
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # SHA-1 and SHA-256 object names


class PayloadError(ValueError):
    """The body is not a push payload we can read; the message says which field is wrong."""


@dataclass(frozen=True)
class Push:
    provider: str  # "github" | "gitlab"
    repo_name: str  # full name: owner/name, group/subgroup/name
    repo_url: str  # the https clone URL
    urls: tuple[str, ...]  # every URL the payload gives for the repository, for matching
    ref: str
    before: str
    after: str
    changed: tuple[str, ...]  # qna.yaml paths added or modified by the push, sorted
    removed: tuple[str, ...]  # qna.yaml paths removed by the push, sorted
    pusher: str
    complete: bool  # False when the payload lists only part of the pushed commits
    forced: bool = False

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def is_tag(self) -> bool:
        return self.ref.startswith("refs/tags/")

    @property
    def deleted(self) -> bool:
        """A branch deletion: the new tip is the all-zero object name."""
        return set(self.after) == {"0"}


def _str(data: dict[str, Any], key: str, where: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{where}{key} is missing or not a string")
    return value


def _obj(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise PayloadError(f"{key} is missing or not an object")
    return value


def _sha(data: dict[str, Any], key: str) -> str:
    value = _str(data, key)
    if not _SHA.match(value):
        raise PayloadError(f"{key} is not a commit id (40 or 64 lowercase hex digits)")
    return value


def leaf_changes(commits: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(changed, removed) qna.yaml paths over the push's commits, oldest first as both providers list them:
    a path's last action wins, so a leaf added then removed in one push counts as removed."""
    if commits is None:
        return (), ()
    if not isinstance(commits, list):
        raise PayloadError("commits is not a list")
    state: dict[str, bool] = {}  # path -> present after the push
    for i, commit in enumerate(commits):
        if not isinstance(commit, dict):
            raise PayloadError(f"commits[{i}] is not an object")
        for key, present in (("added", True), ("modified", True), ("removed", False)):
            paths = commit.get(key) or []
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise PayloadError(f"commits[{i}].{key} is not a list of paths")
            for path in paths:
                if path.rsplit("/", 1)[-1] == LEAF_FILE:
                    state[path] = present
    return (tuple(sorted(p for p, present in state.items() if present)),
            tuple(sorted(p for p, present in state.items() if not present)))


def github_push(data: Any) -> Push:
    """A GitHub `push` webhook payload (docs.github.com: webhook events and payloads, push)."""
    if not isinstance(data, dict):
        raise PayloadError("the payload is not a JSON object")
    repo = _obj(data, "repository")
    commits = data.get("commits")
    changed, removed = leaf_changes(commits)
    pusher = data.get("pusher") if isinstance(data.get("pusher"), dict) else {}
    return Push(
        provider="github",
        repo_name=_str(repo, "full_name", "repository."),
        repo_url=_str(repo, "clone_url", "repository."),
        urls=tuple(u for k in ("clone_url", "html_url", "ssh_url", "git_url", "url") if isinstance(u := repo.get(k), str)),
        ref=_str(data, "ref"),
        before=_sha(data, "before"),
        after=_sha(data, "after"),
        changed=changed,
        removed=removed,
        pusher=str(pusher.get("name") or ""),
        complete=not isinstance(commits, list) or len(commits) < GITHUB_MAX_COMMITS,
        forced=bool(data.get("forced")),
    )


def gitlab_push(data: Any) -> Push:
    """A GitLab `Push Hook` payload (docs.gitlab.com: webhook events, push events)."""
    if not isinstance(data, dict):
        raise PayloadError("the payload is not a JSON object")
    if data.get("object_kind", "push") != "push":
        raise PayloadError(f"object_kind is {data.get('object_kind')!r}, not 'push'")
    project = _obj(data, "project")
    commits = data.get("commits")
    changed, removed = leaf_changes(commits)
    total = data.get("total_commits_count")
    # GitLab lists at most 20 commits (by default) and says how many there were.
    complete = not (isinstance(total, int) and isinstance(commits, list) and total > len(commits))
    return Push(
        provider="gitlab",
        repo_name=_str(project, "path_with_namespace", "project."),
        repo_url=_str(project, "git_http_url", "project."),
        urls=tuple(u for k in ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url", "url")
                   if isinstance(u := project.get(k), str)),
        ref=_str(data, "ref"),
        before=_sha(data, "before"),
        after=_sha(data, "after"),
        changed=changed,
        removed=removed,
        pusher=str(data.get("user_username") or data.get("user_name") or ""),
        complete=complete,
    )


# --- filters ---------------------------------------------------------------------------------------

_SCP = re.compile(r"^(?:[^@/:]+@)?(?P<host>[^/:]+):(?P<path>[^/].*)$")  # git@host:owner/name.git


def normalize_url(url: str) -> str | None:
    """'host/owner/name' for an https, ssh, git or scp-style URL (no user, port, .git or case); None if
    `url` is not a URL (a full name such as owner/name)."""
    url = url.strip()
    if "://" in url:
        parts = urlsplit(url)
        host, path = parts.hostname, parts.path
    elif (m := _SCP.match(url)) is not None:
        host, path = m["host"], m["path"]
    else:
        return None
    path = path.strip("/").removesuffix(".git").strip("/")
    if not host or not path:
        return None
    return f"{host.lower()}/{path.lower()}"


def _normalize_name(name: str) -> str:
    return name.strip().strip("/").removesuffix(".git").lower()


@dataclass(frozen=True)
class PushFilter:
    """The configured repositories and branches; an empty list lets everything through."""

    names: frozenset[str] = frozenset()
    urls: frozenset[str] = frozenset()
    branches: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, repositories: tuple[str, ...], branches: tuple[str, ...]) -> PushFilter:
        names, urls = set(), set()
        for entry in repositories:
            url = normalize_url(entry)
            if url is None:
                names.add(_normalize_name(entry))
            else:
                urls.add(url)
        return cls(frozenset(names), frozenset(urls), tuple(branches))

    def repository_allowed(self, push: Push) -> bool:
        if not self.names and not self.urls:
            return True
        if _normalize_name(push.repo_name) in self.names:
            return True
        return any(normalize_url(u) in self.urls for u in push.urls)

    def branch_allowed(self, branch: str) -> bool:
        return not self.branches or any(fnmatchcase(branch, pattern) for pattern in self.branches)
