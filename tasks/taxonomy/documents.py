"""Fetch a knowledge leaf's source documents (document: repo/commit/patterns) at a pinned commit.

Cache layout: `cache_dir/repos/<sha256(normalized repo)[:16]>/<full commit sha>/` holds the plain
checked-out tree of that commit (its `.git` is removed once checked out). A commit never changes,
so an entry that exists is complete and reused without touching the network; entries are built
in a `.tmp-*` sibling and renamed into place, so a crash leaves only a temp dir, never a half entry.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from labcycle.errors import LabcycleError
from labcycle.files import FileTooLarge, describe_os_error, read_bounded
from labcycle.gitremote import GIT_TIMEOUT_S, git_env, is_transient, remote_problem

# A long book is a few MB of Markdown; a 200 MB file made 42,757 chunks, and hours of teacher calls.
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024
ACCEPTED = {".md": "markdown", ".markdown": "markdown", ".pdf": "pdf"}
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # sha1 or sha256 object names
_ABBREV_SHA = re.compile(r"[0-9a-f]{4,63}")


@dataclass(frozen=True)
class Document:
    path: str  # posix path relative to the repository root
    text: str  # decoded UTF-8 text (Markdown) or extracted text (PDF)
    sha256: str  # of the file's bytes

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class DocumentSet:
    leaf_id: str
    repo: str  # as written in qna.yaml (a relative path stays relative, so manifests stay portable)
    commit: str  # the full resolved commit sha
    documents: list[Document]  # sorted by path

    def to_json(self) -> dict:
        return {"leaf_id": self.leaf_id, "repo": self.repo, "commit": self.commit,
                "documents": [d.to_json() for d in self.documents]}


def _is_url(repo: str) -> bool:
    # git's own rule: "scheme://..." is a URL; "host:path" (scp-like) when a colon comes before
    # any slash; everything else is a local path.
    if "://" in repo:
        return True
    colon, slash = repo.find(":"), repo.find("/")
    return colon > 0 and (slash < 0 or colon < slash)


def normalize_repo(repo: str, base_dir: Path | None) -> str:
    """The repo as git should see it: URLs as written, local paths made absolute."""
    repo = repo.strip()
    if _is_url(repo):
        return repo.rstrip("/")
    path = Path(repo).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return str(path.resolve())


def _git(args: list[str], cwd: Path, leaf_id: str) -> subprocess.CompletedProcess[str]:
    env = git_env()
    env["LC_ALL"] = "C"
    try:
        return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=GIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LabcycleError(f"git {args[0]} took longer than {GIT_TIMEOUT_S}s; check the network "
                            "and document.repo, then rerun", where=leaf_id, transient=True) from None
    except FileNotFoundError:
        raise LabcycleError("git is not installed; install git to fetch knowledge documents",
                            where=leaf_id) from None


def _summary(stderr: str) -> str:
    # git's last line is often boilerplate ("and the repository exists."); the first line from
    # ssh, the server or git's fatal/error is the one that says what went wrong.
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    cause = [ln for ln in lines if ln.startswith(("ssh:", "remote:", "fatal:", "error:"))]
    return (cause or lines or ["no error output"])[0].rstrip(".")


def _rev_parse(work: Path, rev: str, leaf_id: str) -> str | None:
    for candidate in (rev, f"refs/remotes/origin/{rev}"):
        out = _git(["rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"], work, leaf_id)
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def _checkout(repo: str, commit: str, key_dir: Path, leaf_id: str) -> Path:
    """Fetch `commit` of `repo` into a temp dir, check it out, and rename it into the cache."""
    key_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=key_dir))
    try:
        _git(["init", "-q"], work, leaf_id)
        sha = None
        # Most servers (and protocol v2) serve a single commit by name: the cheapest fetch.
        # Abbreviated shas can't be fetched by name, so they need the full history.
        if not _ABBREV_SHA.fullmatch(commit) or _FULL_SHA.fullmatch(commit):
            shallow = _git(["fetch", "-q", "--depth", "1", repo, commit], work, leaf_id)
            if shallow.returncode == 0:
                sha = _rev_parse(work, "FETCH_HEAD", leaf_id)
        if sha is None:
            full = _git(["fetch", "-q", repo, "+refs/heads/*:refs/remotes/origin/*",
                         "+refs/tags/*:refs/tags/*"], work, leaf_id)
            if full.returncode != 0:
                # Retried only when another try may help: a missing repository or a refused login fails now.
                raise LabcycleError(f"cannot fetch document.repo {repo!r}: "
                                    f"{_summary(full.stderr)}; check the URL/path and your "
                                    "access to it", where=leaf_id,
                                    transient=is_transient(repo, full.stderr))
            sha = _rev_parse(work, commit, leaf_id)
            if sha is None:
                raise LabcycleError(f"commit {commit!r} not found in {repo!r}; check "
                                    "document.commit (was it pushed?)", where=leaf_id)
        # autocrlf would change the bytes (and so the sha256) depending on the user's config.
        out = _git(["-c", "core.autocrlf=false", "-c", "advice.detachedHead=false",
                    "checkout", "-q", "--detach", sha], work, leaf_id)
        if out.returncode != 0:
            raise LabcycleError(f"cannot check out {sha} of {repo!r}: {_summary(out.stderr)}",
                                where=leaf_id)
        shutil.rmtree(work / ".git")
        dest = key_dir / sha
        try:
            os.rename(work, dest)
        except OSError:
            if not dest.is_dir():  # another run may have filled the same entry first: fine
                raise
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cached(key_dir: Path, commit: str) -> Path | None:
    # Only sha-like commits can be answered offline; branch/tag names move, so they are fetched.
    if not _ABBREV_SHA.fullmatch(commit) or not key_dir.is_dir():
        return None
    hits = [p for p in key_dir.iterdir() if p.is_dir() and p.name.startswith(commit)]
    return hits[0] if len(hits) == 1 else None


def _check_pattern(pattern: str, leaf_id: str) -> None:
    parts = PurePosixPath(pattern.replace("\\", "/")).parts
    absolute = pattern.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", pattern)
    if not pattern.strip() or absolute:
        raise LabcycleError(f"document pattern {pattern!r} must be a glob relative to the "
                            "repository root (e.g. 'docs/*.md')", where=leaf_id)
    if ".." in parts:
        raise LabcycleError(f"document pattern {pattern!r} escapes the repository ('..'); "
                            "use a path inside the repository", where=leaf_id)


def _files(root: Path) -> Iterator[tuple[str, ...]]:
    """Every file of the tree as path parts, without following links to folders: a link like `a -> .`
    would otherwise make `**` walk the same files again at every depth, without end."""
    for dirpath, dirnames, filenames in os.walk(root):  # os.walk never descends into a linked folder
        dirnames[:] = sorted(d for d in dirnames if d != ".git" and not os.path.islink(os.path.join(dirpath, d)))
        rel = Path(dirpath).relative_to(root).parts
        for name in sorted(filenames):
            yield (*rel, name)


def _component_matches(pattern: str, name: str) -> bool:
    if not _has_magic(pattern):
        return pattern == name
    # As glob: a wildcard does not match a leading dot (hidden files are named explicitly).
    return not (name.startswith(".") and not pattern.startswith(".")) and fnmatch.fnmatchcase(name, pattern)


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def matches(pattern: str, parts: Sequence[str]) -> bool:
    """Whether a file's path parts match a glob pattern as glob.glob(recursive=True) matches it: `**` is
    any number of folders (not hidden ones), `*`, `?` and `[...]` stay within one name. A set of positions
    in the pattern is carried along the path, so no pattern or depth makes it recurse or backtrack."""
    pat = [p for p in pattern.replace("\\", "/").split("/") if p not in ("", ".")]

    def closure(states: set[int]) -> set[int]:
        out, todo = set(states), list(states)
        while todo:
            i = todo.pop()
            if i < len(pat) and pat[i] == "**" and i + 1 not in out:
                out.add(i + 1)
                todo.append(i + 1)
        return out

    states = closure({0})
    for name in parts:
        step: set[int] = set()
        for i in states:
            if i == len(pat):
                continue
            if pat[i] == "**":
                if not name.startswith("."):
                    step.add(i)
            elif _component_matches(pat[i], name):
                step.add(i + 1)
        states = closure(step)
        if not states:
            return False
    return len(pat) in states


def _select(tree: Path, patterns: Sequence[str], leaf_id: str) -> list[str]:
    root = tree.resolve()
    for pattern in patterns:
        _check_pattern(pattern, leaf_id)
    found: set[str] = set()
    for parts in _files(root):
        if not any(matches(pattern, parts) for pattern in patterns):
            continue
        posix = PurePosixPath(*parts)
        # A symlink to a file may lead out of the checkout (folders above it are real: see _files).
        if not Path(os.path.realpath(root.joinpath(*parts))).is_relative_to(root):
            raise LabcycleError(f"document {posix} is a symlink pointing outside the "
                                "repository; remove it from the patterns", where=leaf_id)
        found.add(str(posix))
    if not found:
        raise LabcycleError(f"document.patterns {list(patterns)} match no file at the pinned "
                            "commit; fix the patterns or the commit", where=leaf_id)
    other = sorted(p for p in found if PurePosixPath(p).suffix.lower() not in ACCEPTED)
    if other:
        raise LabcycleError(f"document.patterns match {', '.join(other)}: only Markdown (.md, "
                            ".markdown) and PDF (.pdf) are accepted; narrow the patterns",
                            where=leaf_id)
    return sorted(found)


def _read(tree: Path, rel: str, max_bytes: int, leaf_id: str) -> bytes:
    try:
        return read_bounded(tree / rel, max_bytes)
    except FileTooLarge as exc:
        # The size is exact when the file said it; one that grew while read is only known to be too large.
        size = f"{exc.size:,} bytes" if exc.size > exc.limit + 1 else f"more than {max_bytes:,} bytes"
        raise LabcycleError(f"document {rel} is {size}; documents may be at most {max_bytes:,} bytes "
                            "(documents.max_bytes in the config): split it, or raise the limit",
                            where=leaf_id) from None
    except OSError as exc:
        raise LabcycleError(f"cannot read document {rel}: {describe_os_error(exc)}; documents must be "
                            "plain files in the repository", where=leaf_id) from None


def _text(path: str, data: bytes, leaf_id: str) -> str:
    if ACCEPTED[PurePosixPath(path).suffix.lower()] == "markdown":
        try:
            return data.decode("utf-8-sig")  # a BOM is an encoding mark, not text
        except UnicodeDecodeError as exc:
            raise LabcycleError(f"document {path} is not valid UTF-8 ({exc.reason} at byte "
                                f"{exc.start}); re-save it as UTF-8", where=leaf_id) from None
    try:
        import pypdf  # optional: only leaves with PDFs need it
    except ImportError:
        raise LabcycleError(f"document {path} is a PDF; install PDF support with "
                            "pip install 'labcycle[pdf]'", where=leaf_id) from None
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        return "\n".join(page.extract_text() or "" for page in reader.pages)
    except Exception as exc:  # pypdf raises many types for damaged files
        raise LabcycleError(f"cannot read PDF {path}: {exc}; check the file",
                            where=leaf_id) from None


def fetch_documents(leaf_id: str, repo: str, commit: str, patterns: Sequence[str], *,
                    cache_dir: Path, base_dir: Path | None = None,
                    max_bytes: int = MAX_DOCUMENT_BYTES) -> DocumentSet:
    """Check out `repo` at `commit` (cached) and read the files that `patterns` select, each at most
    `max_bytes` long."""
    commit = str(commit).strip()
    if not commit or not repo.strip() or commit.startswith("-") or repo.strip().startswith("-"):
        raise LabcycleError("document.repo and document.commit must be set (and not start "
                            "with '-')", where=leaf_id)
    if problem := remote_problem(repo):
        raise LabcycleError(f"document.repo {problem}", where=leaf_id)
    if _ABBREV_SHA.fullmatch(commit.lower()):
        commit = commit.lower()
    url = normalize_repo(repo, base_dir)
    key_dir = Path(cache_dir) / "repos" / hashlib.sha256(url.encode()).hexdigest()[:16]
    tree = _cached(key_dir, commit) or _checkout(url, commit, key_dir, leaf_id)
    docs = []
    for rel in _select(tree, patterns, leaf_id):
        data = _read(tree, rel, max_bytes, leaf_id)
        docs.append(Document(rel, _text(rel, data, leaf_id), hashlib.sha256(data).hexdigest()))
    return DocumentSet(leaf_id=leaf_id, repo=repo, commit=tree.name, documents=docs)


# --- Prefect task ----------------------------------------------------------------------------------

from prefect import task  # noqa: E402

from labcycle.errors import retry_if_transient  # noqa: E402


@task(name="fetch documents", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_if_transient,
      task_run_name="fetch documents: {leaf_id}")
def fetch_leaf_documents(leaf_id: str, document: dict, cache_dir: Path, base_dir: Path,
                         max_bytes: int = MAX_DOCUMENT_BYTES) -> DocumentSet:
    """A knowledge leaf's documents at the pinned commit; retried, since fetching crosses the network."""
    return fetch_documents(leaf_id, document["repo"], str(document["commit"]), document["patterns"], cache_dir=cache_dir,
                           base_dir=base_dir, max_bytes=max_bytes)
