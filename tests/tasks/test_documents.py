"""fetch_documents against real git repositories built in tmp_path."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from labcycle.errors import LabcycleError
from labcycle.tasks.taxonomy.documents import Document, fetch_documents

LEAF = "knowledge/science/ai_risk"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(path: Path, files: dict[str, str | bytes]) -> str:
    """A repository at `path` with one commit of `files`; returns the commit sha."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    return commit_files(path, files)


def commit_files(path: Path, files: dict[str, str | bytes]) -> str:
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "update")
    return git(path, "rev-parse", "HEAD")


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, str]:
    files = {"README.md": "# Readme\n", "docs/a.md": "alpha\n", "docs/deep/b.markdown": "beta\n",
             "docs/deep/notes.txt": "not a document\n"}
    repo = tmp_path / "documents" / "ai-risk"
    return repo, make_repo(repo, files)


def fetch(repo: str, commit: str, patterns: list[str], tmp_path: Path, **kw):
    return fetch_documents(LEAF, repo, commit, patterns, cache_dir=tmp_path / "cache", **kw)


def test_local_path_relative_to_base_dir(source, tmp_path: Path) -> None:
    repo, sha = source
    taxonomy = tmp_path / "taxonomy"
    taxonomy.mkdir()
    ds = fetch("../documents/ai-risk", sha, ["*.md"], tmp_path, base_dir=taxonomy)
    assert ds.commit == sha and ds.leaf_id == LEAF
    assert [d.path for d in ds.documents] == ["README.md"]
    doc = ds.documents[0]
    assert doc.text == "# Readme\n"
    assert doc.to_json() == {"path": "README.md", "sha256": doc.sha256} and len(doc.sha256) == 64


def test_file_url_returns_pinned_commit_and_cache_needs_no_source(source, tmp_path: Path) -> None:
    repo, sha = source
    commit_files(repo, {"docs/a.md": "changed\n"})  # the branch moves on; the pin must not
    ds = fetch(f"file://{repo}", sha, ["docs/*.md"], tmp_path)
    assert ds.documents == [Document("docs/a.md", "alpha\n", ds.documents[0].sha256)]
    entries = list((tmp_path / "cache" / "repos").glob("*/*"))
    assert [e.name for e in entries] == [sha]  # one complete entry, no temp dirs left behind
    shutil.move(repo, tmp_path / "moved")  # a second fetch must not touch the source
    again = fetch(f"file://{repo}", sha, ["docs/*.md"], tmp_path)
    assert again == ds
    assert fetch(f"file://{repo}", sha[:10], ["docs/*.md"], tmp_path).commit == sha


def test_abbreviated_sha_resolves_to_full(source, tmp_path: Path) -> None:
    repo, sha = source
    commit_files(repo, {"docs/a.md": "changed\n"})
    ds = fetch(str(repo), sha[:8], ["docs/a.md"], tmp_path)
    assert ds.commit == sha and ds.documents[0].text == "alpha\n"


def test_double_star_matches_across_directories(source, tmp_path: Path) -> None:
    repo, sha = source
    ds = fetch(str(repo), sha, ["docs/**/*.md", "**/*.markdown", "docs/a.md"], tmp_path)
    assert [d.path for d in ds.documents] == ["docs/a.md", "docs/deep/b.markdown"]


def test_patterns_matching_nothing(source, tmp_path: Path) -> None:
    repo, sha = source
    with pytest.raises(LabcycleError, match=r"\['nope/\*\.md'\] match no file") as err:
        fetch(str(repo), sha, ["nope/*.md"], tmp_path)
    assert err.value.where == LEAF and LEAF in str(err.value)


@pytest.mark.parametrize("pattern", ["../*.md", "docs/../../x.md", "/etc/*.md"])
def test_pattern_escaping_repo_refused(source, tmp_path: Path, pattern: str) -> None:
    repo, sha = source
    with pytest.raises(LabcycleError, match="relative to the repository|escapes") as err:
        fetch(str(repo), sha, [pattern], tmp_path)
    assert err.value.where == LEAF


def test_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "secret.md"
    outside.write_text("secret\n")
    repo = tmp_path / "src"
    sha = make_repo(repo, {"real.md": "real\n"})
    (repo / "inside.md").symlink_to("real.md")
    (repo / "escape.md").symlink_to(outside)
    sha = commit_files(repo, {})
    ds = fetch(str(repo), sha, ["inside.md", "real.md"], tmp_path)
    pairs = [(d.path, d.text) for d in ds.documents]
    assert pairs == [("inside.md", "real\n"), ("real.md", "real\n")]
    with pytest.raises(LabcycleError, match="escape.md is a symlink pointing outside") as err:
        fetch(str(repo), sha, ["*.md"], tmp_path)
    assert err.value.where == LEAF


def test_non_markdown_match_refused(source, tmp_path: Path) -> None:
    repo, sha = source
    with pytest.raises(LabcycleError, match=r"docs/deep/notes\.txt: only Markdown") as err:
        fetch(str(repo), sha, ["docs/**"], tmp_path)
    assert err.value.where == LEAF


def test_invalid_utf8_markdown(tmp_path: Path) -> None:
    repo = tmp_path / "src"
    sha = make_repo(repo, {"bad.md": b"caf\xe9\n"})
    with pytest.raises(LabcycleError, match="bad.md is not valid UTF-8") as err:
        fetch(str(repo), sha, ["*.md"], tmp_path)
    assert err.value.where == LEAF


def test_pdf_without_pypdf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pypdf", None)  # makes `import pypdf` fail
    repo = tmp_path / "src"
    sha = make_repo(repo, {"paper.pdf": b"%PDF-1.4\n"})
    with pytest.raises(LabcycleError, match=r"labcycle\[pdf\]") as err:
        fetch(str(repo), sha, ["*.pdf"], tmp_path)
    assert err.value.where == LEAF


def test_missing_commit(source, tmp_path: Path) -> None:
    repo, _ = source
    with pytest.raises(LabcycleError, match="commit '0{40}' not found") as err:
        fetch(str(repo), "0" * 40, ["*.md"], tmp_path)
    assert err.value.where == LEAF and LEAF in str(err.value)
    assert not list((tmp_path / "cache" / "repos").glob("*/*"))  # no half entry left behind


def test_unreachable_repo(tmp_path: Path) -> None:
    with pytest.raises(LabcycleError, match="cannot fetch document.repo") as err:
        fetch(str(tmp_path / "missing"), "0" * 40, ["*.md"], tmp_path)
    assert err.value.where == LEAF and LEAF in str(err.value)
    assert "does not appear to be a git repository" in err.value.message


def test_full_sha_fetches_only_that_commit(source, tmp_path: Path, monkeypatch) -> None:
    from labcycle.tasks.taxonomy import documents

    repo, sha = source
    commit_files(repo, {"docs/a.md": "changed\n"})
    fetches: list[list[str]] = []
    real_git = documents._git

    def spy(args: list[str], cwd: Path, leaf_id: str):
        if args[0] == "fetch":
            fetches.append(args)
        return real_git(args, cwd, leaf_id)

    monkeypatch.setattr(documents, "_git", spy)
    fetch(f"file://{repo}", sha, ["docs/a.md"], tmp_path)
    assert fetches == [["fetch", "-q", "--depth", "1", f"file://{repo}", sha]]


def test_branch_name_resolves_to_its_tip(source, tmp_path: Path) -> None:
    repo, _ = source
    tip = commit_files(repo, {"docs/a.md": "changed\n"})
    ds = fetch(str(repo), "main", ["docs/a.md"], tmp_path)
    assert ds.commit == tip and ds.documents[0].text == "changed\n"


# --- hostile repositories and documents ---------------------------------------------------------------------


def test_folder_links_are_not_followed_and_each_document_is_read_once(tmp_path: Path, monkeypatch) -> None:
    from labcycle.tasks.taxonomy import documents

    repo = tmp_path / "src"
    make_repo(repo, {"guide.md": "one document\n", "docs/part.md": "another\n"})
    (repo / "a").symlink_to(".")  # with glob's `**` this made 41 copies of guide.md; two such links, no end
    (repo / "docs" / "up").symlink_to("..")
    sha = commit_files(repo, {})
    reads: list[Path] = []
    real_read = documents.read_bounded

    def spy(path, limit):  # type: ignore[no-untyped-def]
        reads.append(Path(path))
        return real_read(path, limit)

    monkeypatch.setattr(documents, "read_bounded", spy)
    ds = fetch(str(repo), sha, ["**/*.md", "a/guide.md"], tmp_path)
    assert [d.path for d in ds.documents] == ["docs/part.md", "guide.md"]
    assert sorted(p.name for p in reads) == ["guide.md", "part.md"]


def test_patterns_match_as_glob_does_on_a_tree_without_links(tmp_path: Path) -> None:
    import glob

    from labcycle.tasks.taxonomy.documents import _files, matches

    root = tmp_path / "tree"
    for rel in ("a.md", "b.markdown", ".hidden.md", "docs/x.md", "docs/.h/y.md", "docs/deep/er/z.md", "docs/deep/n.txt",
                "other/docs/w.md", "[x].md"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    files = list(_files(root))
    for pattern in ("*.md", "**/*.md", "docs/**", "docs/**/*.md", "**/docs/*.md", "docs/*/*/*.md", "?.md", "[ab].*",
                    ".hidden.md", "docs/.h/*.md", "**", "docs/deep/**/z.md", "**/**/*.md", "*/*.md", "docs", "nope/*.md"):
        want = sorted({p for p in glob.glob(pattern, root_dir=root, recursive=True) if (root / p).is_file()})
        got = sorted("/".join(parts) for parts in files if matches(pattern, parts))
        assert got == want, pattern


@pytest.mark.parametrize(
    ("repo", "words"),
    [
        ("fd::17", "fd:: remote helper"),  # git waited on the descriptor forever
        ("ext::sh -c touch% /tmp/labcycle-pwned", "ext:: remote helper"),
        ("http://example.com/docs.git", "http:// transport (use https://)"),
        ("git://example.com/docs.git", "git:// transport"),
        ("ssh://-oProxyCommand=x/docs", "read as an option"),
        ("-oProxyCommand=x:docs", "not start with '-'"),
    ],
)
def test_transports_other_than_https_ssh_and_local_are_refused(tmp_path: Path, repo: str, words: str) -> None:
    with pytest.raises(LabcycleError) as err:
        fetch(repo, "main", ["*.md"], tmp_path)
    assert err.value.where == LEAF and words in err.value.message
    assert err.value.message.startswith("document.repo") or "must be set" in err.value.message
    assert not (tmp_path / "cache").exists()  # refused before git ran


@pytest.mark.parametrize("repo", ["https://example.com/docs.git", "ssh://git@example.com/docs.git",
                                  "git@example.com:org/docs.git", "file:///srv/docs", "../documents/x", "/srv/docs",
                                  "C:/docs"])
def test_allowed_transports(repo: str) -> None:
    from labcycle.gitremote import remote_problem

    assert remote_problem(repo) is None


def test_a_missing_local_repository_is_not_retried(tmp_path: Path) -> None:
    with pytest.raises(LabcycleError) as err:
        fetch(str(tmp_path / "missing"), "main", ["*.md"], tmp_path)
    assert err.value.transient is False
    with pytest.raises(LabcycleError) as err:
        fetch(f"file://{tmp_path / 'missing'}", "main", ["*.md"], tmp_path)
    assert err.value.transient is False


@pytest.mark.parametrize(
    ("repo", "stderr", "transient"),
    [
        ("https://h/x.git", "fatal: unable to access 'https://h/x.git/': Could not resolve host: h", True),
        ("https://h/x.git", "fatal: unable to access 'https://h/x.git/': Failed to connect to h port 443", True),
        ("https://h/x.git", "error: RPC failed; HTTP 502 curl 22\nfatal: expected flush after ref listing", True),
        ("git@h:x.git", "ssh: connect to host h port 22: Connection timed out\nfatal: Could not read from remote", True),
        ("https://h/x.git", "remote: Repository not found.\nfatal: repository 'https://h/x.git/' not found", False),
        ("https://h/x.git", "fatal: Authentication failed for 'https://h/x.git/'", False),
        ("https://h/x.git", "fatal: could not read Username for 'https://h': terminal prompts disabled", False),
        ("git@h:x.git", "git@h: Permission denied (publickey).\nfatal: Could not read from remote repository.", False),
        ("/srv/x", "fatal: '/srv/x' does not appear to be a git repository", False),
        ("file:///srv/x", "fatal: Connection reset", False),  # nothing on this machine gets better by waiting
    ],
)
def test_only_transient_failures_are_retried(repo: str, stderr: str, transient: bool) -> None:
    from labcycle.gitremote import is_transient

    assert is_transient(repo, stderr) is transient


def test_document_size_cap(tmp_path: Path) -> None:
    repo = tmp_path / "src"
    sha = make_repo(repo, {"big.md": "word " * 1000, "small.md": "ok\n"})
    assert [d.path for d in fetch(str(repo), sha, ["*.md"], tmp_path, max_bytes=5000).documents] == ["big.md", "small.md"]
    with pytest.raises(LabcycleError) as err:
        fetch(str(repo), sha, ["*.md"], tmp_path, max_bytes=4999)
    assert err.value.where == LEAF
    assert err.value.message.startswith("document big.md is ") and "documents.max_bytes" in err.value.message


def test_document_links_to_devices_and_loops(tmp_path: Path) -> None:
    repo = tmp_path / "src"
    make_repo(repo, {"ok.md": "ok\n"})
    (repo / "zero.md").symlink_to("/dev/zero")
    (repo / "loop.md").symlink_to("loop.md")
    sha = commit_files(repo, {})
    with pytest.raises(LabcycleError, match="zero.md is a symlink pointing outside"):
        fetch(str(repo), sha, ["zero.md"], tmp_path)
    with pytest.raises(LabcycleError, match="cannot read document loop.md: it is a symlink loop"):
        fetch(str(repo), sha, ["loop.md"], tmp_path)
