"""GitHub and GitLab push payloads read into one typed Push, and the repository and branch filters.

Pure functions: no I/O, no framework. A payload that is not a push this module can read raises
PayloadError, which the receiver answers with 400.

A push is forwarded to a worker that clones from its URL and checks out its ref, so both are checked
here, signature or not: the clone URL as labcycle checks any remote (labcycle/gitremote.py: https or ssh,
no `ext::`/`fd::` remote helpers, nothing git or ssh would read as an option) and, unless the receiver
allows local repositories, not a path or file:// URL on the worker; the ref as `git check-ref-format`
would (and a little stricter); the commit ids as 40 or 64 hex digits.
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
MAX_URL_CHARS = 2048
MAX_REF_CHARS = 1024
# What git check-ref-format refuses anywhere in a ref (besides control characters).
_REF_BAD_CHARS = " ~^:?*[\\"


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
    if not _SHA.fullmatch(value):
        raise PayloadError(f"{key} is not a commit id (40 or 64 lowercase hex digits)")
    return value


def printable(text: str, limit: int = 300) -> str:
    """Text from a payload or a header, safe for a response and a log line: unprintable characters as '?',
    at most `limit` characters (then '…')."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[:limit] + "…"


def clone_url_problem(url: str, allow_local: bool = False) -> str | None:
    """Why the worker must not clone from `url`, or None. Local paths and file:// URLs name something on
    the worker, not the pushed repository: refused unless `allow_local` (tests, one-machine setups)."""
    from labcycle.gitremote import is_local, remote_problem

    if len(url) > MAX_URL_CHARS:
        return f"is over {MAX_URL_CHARS} characters"
    if url != url.strip():
        return "has leading or trailing white space"
    problem = remote_problem(url)
    if problem is not None:
        return problem.split("; give an https or ssh URL")[0]  # the advice is for a user, not for GitHub
    if not allow_local and is_local(url):
        return ("is a local path or file:// URL, not a remote a worker can clone from; the receiver accepts "
                "those only with allow_local_repositories: true")
    return None


def ref_problem(ref: str) -> str | None:
    """Why `ref` is not a full git ref name as `git check-ref-format` reads it (stricter on a few points:
    no component may start with '-', and no character may be unprintable), or None."""
    if len(ref) > MAX_REF_CHARS:
        return f"is over {MAX_REF_CHARS} characters"
    if not ref.startswith("refs/"):
        return "does not start with refs/ (refs/heads/<branch> or refs/tags/<tag>)"
    if any(ord(c) < 32 or c == "\x7f" for c in ref):
        return "contains a control character"
    if not ref.isprintable():
        return "contains an unprintable character"
    bad = sorted({c for c in ref if c in _REF_BAD_CHARS})
    if bad:
        return "contains " + " ".join("a space" if c == " " else f"'{c}'" for c in bad)
    if ".." in ref:
        return "contains '..'"
    if "@{" in ref:
        return "contains '@{'"
    if ref.endswith("/"):
        return "ends with '/'"
    if ref.endswith("."):
        return "ends with '.'"
    for part in ref.split("/"):
        if not part:
            return "contains '//' (an empty component)"
        if part.startswith("."):
            return "has a component that starts with '.'"
        if part.startswith("-"):
            return "has a component that starts with '-'"
        if part.endswith(".lock"):
            return "has a component that ends with '.lock'"
    return None


def _clone_url(data: dict[str, Any], key: str, where: str, allow_local: bool) -> str:
    url = _str(data, key, where)
    problem = clone_url_problem(url, allow_local)
    if problem is not None:
        raise PayloadError(printable(f"{where}{key} {problem}"))
    return url


def _ref(data: dict[str, Any]) -> str:
    ref = _str(data, "ref")
    problem = ref_problem(ref)
    if problem is not None:
        raise PayloadError(f"ref is not a valid git ref: it {problem}")
    return ref


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


def github_push(data: Any, allow_local_repositories: bool = False) -> Push:
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
        repo_url=_clone_url(repo, "clone_url", "repository.", allow_local_repositories),
        urls=tuple(u for k in ("clone_url", "html_url", "ssh_url", "git_url", "url") if isinstance(u := repo.get(k), str)),
        ref=_ref(data),
        before=_sha(data, "before"),
        after=_sha(data, "after"),
        changed=changed,
        removed=removed,
        pusher=str(pusher.get("name") or ""),
        complete=not isinstance(commits, list) or len(commits) < GITHUB_MAX_COMMITS,
        forced=bool(data.get("forced")),
    )


def gitlab_push(data: Any, allow_local_repositories: bool = False) -> Push:
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
        repo_url=_clone_url(project, "git_http_url", "project.", allow_local_repositories),
        urls=tuple(u for k in ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url", "url")
                   if isinstance(u := project.get(k), str)),
        ref=_ref(data),
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
