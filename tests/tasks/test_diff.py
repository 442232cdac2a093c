"""`labcycle taxonomy diff` core, exercised on real temporary git repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from labcycle.errors import LabcycleError
from labcycle.tasks.taxonomy.diff import ChangedLeaf, DiffResult, changed_leaves, default_base, git


@pytest.fixture(autouse=True)
def _hermetic_git(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's ~/.gitconfig (signing, hooks, default branch) must not change the outcome.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)


def sh(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def write(root: Path, rel: str, text: str = "version: 3\n") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def init_repo(repo: Path) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    sh(repo, "init", "-q", "-b", "main")
    sh(repo, "config", "user.name", "Test")
    sh(repo, "config", "user.email", "test@example.com")
    sh(repo, "config", "commit.gpgsign", "false")
    return repo


def commit_all(repo: Path, message: str = "commit") -> None:
    sh(repo, "add", "-A")
    sh(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main holds two knowledge leaves, one skill leaf, and a README; HEAD is a topic branch off it."""
    repo = init_repo(tmp_path / "taxonomy")
    write(repo, "knowledge/science/physics/qna.yaml")
    write(repo, "knowledge/science/chemistry/qna.yaml")
    write(repo, "compositional_skills/writing/poetry/qna.yaml")
    write(repo, "README.md", "# taxonomy\n")
    commit_all(repo, "base")
    sh(repo, "checkout", "-q", "-b", "topic")
    return repo


def leaves(result: DiffResult) -> dict[str, str]:
    return {leaf.path: leaf.status for leaf in result.leaves}


def test_clean_branch_has_no_changes(repo: Path) -> None:
    assert changed_leaves(repo) == DiffResult("main", [])


def test_committed_on_branch_vs_main(repo: Path) -> None:
    write(repo, "knowledge/science/physics/qna.yaml", "version: 3\nchanged: true\n")
    write(repo, "knowledge/history/rome/qna.yaml")
    commit_all(repo, "topic work")
    result = changed_leaves(repo)
    assert result.base == "main"
    assert result.leaves == [
        ChangedLeaf("knowledge/history/rome/qna.yaml", "added"),
        ChangedLeaf("knowledge/science/physics/qna.yaml", "modified"),
    ]


def test_changes_on_main_after_branching_are_not_listed(repo: Path) -> None:
    # Comparing with the merge base, not main's tip: work landed on main since is not ours.
    sh(repo, "checkout", "-q", "main")
    write(repo, "knowledge/other/qna.yaml")
    commit_all(repo, "main moves on")
    sh(repo, "checkout", "-q", "topic")
    assert changed_leaves(repo).leaves == []


def test_staged_unstaged_and_untracked(repo: Path) -> None:
    write(repo, "knowledge/science/physics/qna.yaml", "version: 3\nstaged: true\n")
    write(repo, "knowledge/staged_new/qna.yaml")
    sh(repo, "add", "-A")
    write(repo, "knowledge/science/chemistry/qna.yaml", "version: 3\nunstaged: true\n")
    write(repo, "compositional_skills/untracked/qna.yaml")
    assert leaves(changed_leaves(repo)) == {
        "compositional_skills/untracked/qna.yaml": "added",
        "knowledge/science/chemistry/qna.yaml": "modified",
        "knowledge/science/physics/qna.yaml": "modified",
        "knowledge/staged_new/qna.yaml": "added",
    }


def test_deleted_leaves_are_excluded(repo: Path) -> None:
    sh(repo, "rm", "-q", "knowledge/science/physics/qna.yaml")
    commit_all(repo, "drop physics")
    (repo / "knowledge/science/chemistry/qna.yaml").unlink()  # deleted, not staged
    write(repo, "knowledge/tmp/qna.yaml")
    sh(repo, "add", "-A")
    (repo / "knowledge/tmp/qna.yaml").unlink()  # staged as new, then removed from disk
    assert changed_leaves(repo).leaves == []


def test_renamed_leaf_is_added_at_new_path_only(repo: Path) -> None:
    sh(repo, "mv", "knowledge/science/physics", "knowledge/science/mechanics")
    commit_all(repo, "rename")
    assert changed_leaves(repo).leaves == [ChangedLeaf("knowledge/science/mechanics/qna.yaml", "added")]


def test_modified_then_reverted_is_not_listed(repo: Path) -> None:
    leaf = "knowledge/science/physics/qna.yaml"
    write(repo, leaf, "version: 3\nchanged: true\n")
    commit_all(repo, "change")
    write(repo, leaf, "version: 3\n")
    commit_all(repo, "revert")
    write(repo, "knowledge/science/chemistry/qna.yaml", "version: 3\nchanged: true\n")
    sh(repo, "add", "-A")
    write(repo, "knowledge/science/chemistry/qna.yaml", "version: 3\n")  # staged change undone on disk
    assert changed_leaves(repo).leaves == []


def test_untracked_leaf_known_at_merge_base(repo: Path) -> None:
    # `git rm --cached` leaves the file on disk untracked; it is a change only if its content changed.
    sh(repo, "rm", "-q", "--cached", "knowledge/science/physics/qna.yaml", "knowledge/science/chemistry/qna.yaml")
    write(repo, "knowledge/science/chemistry/qna.yaml", "version: 3\nchanged: true\n")
    assert changed_leaves(repo).leaves == [ChangedLeaf("knowledge/science/chemistry/qna.yaml", "modified")]


def test_foundational_skills_included(repo: Path) -> None:
    write(repo, "foundational_skills/reasoning/logic/qna.yaml")
    assert changed_leaves(repo).leaves == [ChangedLeaf("foundational_skills/reasoning/logic/qna.yaml", "added")]


def test_non_leaf_files_are_not_leaves(repo: Path) -> None:
    write(repo, "README.md", "# changed\n")
    write(repo, "knowledge/science/physics/README.md", "notes\n")
    write(repo, "knowledge/science/physics/qna.yml")
    write(repo, "knowledge/science/physics/attribution.txt", "source\n")
    write(repo, "knowledge/science/physics/old_qna.yaml")
    write(repo, "other_top/x/qna.yaml")  # not under a taxonomy folder
    write(repo, "qna.yaml")
    assert changed_leaves(repo).leaves == []


def test_ignored_leaf_is_not_listed(repo: Path) -> None:
    write(repo, ".gitignore", "scratch/\n")
    write(repo, "knowledge/scratch/qna.yaml")
    assert changed_leaves(repo).leaves == []


def test_folders_argument_limits_the_diff(repo: Path) -> None:
    write(repo, "knowledge/new/qna.yaml")
    write(repo, "compositional_skills/new/qna.yaml")
    result = changed_leaves(repo, folders=["compositional_skills"])
    assert leaves(result) == {"compositional_skills/new/qna.yaml": "added"}


def test_explicit_base_ref(repo: Path) -> None:
    write(repo, "knowledge/one/qna.yaml")
    commit_all(repo, "one")
    sh(repo, "tag", "v1")
    write(repo, "knowledge/two/qna.yaml")
    commit_all(repo, "two")
    result = changed_leaves(repo, base="v1")
    assert result.base == "v1"
    assert leaves(result) == {"knowledge/two/qna.yaml": "added"}


def test_path_with_spaces_and_unicode(repo: Path) -> None:
    write(repo, "knowledge/science/physics/qna.yaml", "version: 3\nchanged: true\n")
    sh(repo, "mv", "knowledge/science/physics", "knowledge/science/quantum physics")
    write(repo, "knowledge/Écoles du monde/qna.yaml")
    write(repo, "compositional_skills/writing/poetry/qna.yaml", "version: 3\nhaiku: 俳句\n")
    assert leaves(changed_leaves(repo)) == {
        "compositional_skills/writing/poetry/qna.yaml": "modified",
        "knowledge/science/quantum physics/qna.yaml": "added",
        "knowledge/Écoles du monde/qna.yaml": "added",
    }


def test_taxonomy_root_in_a_subdirectory(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "monorepo")
    write(repo, "data/taxonomy/knowledge/a/qna.yaml")
    write(repo, "knowledge/outside/qna.yaml")  # outside the taxonomy root: ignored
    commit_all(repo, "base")
    sh(repo, "checkout", "-q", "-b", "topic")
    write(repo, "data/taxonomy/knowledge/a/qna.yaml", "version: 3\nchanged: true\n")
    write(repo, "data/taxonomy/knowledge/b c/qna.yaml")
    write(repo, "knowledge/outside/qna.yaml", "version: 3\nchanged: true\n")
    write(repo, "knowledge/outside2/qna.yaml")
    result = changed_leaves(repo / "data" / "taxonomy")
    assert leaves(result) == {"knowledge/a/qna.yaml": "modified", "knowledge/b c/qna.yaml": "added"}
    everything = changed_leaves(repo / "data" / "taxonomy", base="empty")
    assert leaves(everything) == {"knowledge/a/qna.yaml": "added", "knowledge/b c/qna.yaml": "added"}


def test_base_empty_lists_every_leaf_in_a_git_repo(repo: Path) -> None:
    write(repo, "foundational_skills/new/qna.yaml")  # untracked still counts
    (repo / "knowledge/science/chemistry/qna.yaml").unlink()
    result = changed_leaves(repo, base="empty")
    assert result.base == "empty"
    assert result.leaves == [
        ChangedLeaf("compositional_skills/writing/poetry/qna.yaml", "added"),
        ChangedLeaf("foundational_skills/new/qna.yaml", "added"),
        ChangedLeaf("knowledge/science/physics/qna.yaml", "added"),
    ]


def test_base_empty_in_a_plain_directory(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    write(root, "knowledge/a b/qna.yaml")
    write(root, "compositional_skills/x/y/qna.yaml")
    write(root, "foundational_skills/z/qna.yaml")
    write(root, "knowledge/a b/qna.yml")
    write(root, "README.md")
    result = changed_leaves(root, base="empty")
    assert result.to_json() == {
        "base": "empty",
        "leaves": [
            {"path": "compositional_skills/x/y/qna.yaml", "status": "added"},
            {"path": "foundational_skills/z/qna.yaml", "status": "added"},
            {"path": "knowledge/a b/qna.yaml", "status": "added"},
        ],
    }


def test_base_empty_without_git_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "plain"
    write(root, "knowledge/a/qna.yaml")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert leaves(changed_leaves(root, base="empty")) == {"knowledge/a/qna.yaml": "added"}
    with pytest.raises(LabcycleError, match="git is not installed.*--base empty"):
        changed_leaves(root)


def test_repo_without_commits(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "fresh")
    write(repo, "knowledge/a/qna.yaml")
    write(repo, "compositional_skills/b/qna.yaml")
    assert leaves(changed_leaves(repo, base="empty")) == {
        "compositional_skills/b/qna.yaml": "added",
        "knowledge/a/qna.yaml": "added",
    }
    with pytest.raises(LabcycleError, match="no commits yet.*--base empty"):
        changed_leaves(repo)


def test_default_base_is_main_without_remote(repo: Path) -> None:
    assert default_base(repo) == "main"


def test_default_base_prefers_origin_main_in_a_clone(repo: Path, tmp_path: Path) -> None:
    sh(repo, "checkout", "-q", "main")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, capture_output=True)
    sh(clone, "config", "user.name", "Test")
    sh(clone, "config", "user.email", "test@example.com")
    assert default_base(clone) == "origin/main"
    # A leaf committed on the local main but not pushed is still a change against origin/main.
    write(clone, "knowledge/local/qna.yaml")
    commit_all(clone, "local only")
    result = changed_leaves(clone)
    assert result.base == "origin/main"
    assert leaves(result) == {"knowledge/local/qna.yaml": "added"}


def test_default_base_missing(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "trunk")
    sh(repo, "checkout", "-q", "-b", "trunk")
    write(repo, "knowledge/a/qna.yaml")
    commit_all(repo)
    with pytest.raises(LabcycleError, match="neither 'origin/main' nor 'main'.*--base"):
        changed_leaves(repo)


def test_missing_base_ref_error(repo: Path) -> None:
    with pytest.raises(LabcycleError) as info:
        changed_leaves(repo, base="upstream/release")
    message = str(info.value)
    assert "'upstream/release' does not exist" in message
    assert "git fetch" in message and "--base <ref>" in message
    assert "\n" not in message


def test_option_like_base_is_refused(repo: Path) -> None:
    with pytest.raises(LabcycleError, match="not a ref name"):
        changed_leaves(repo, base="--output=/tmp/x")


def test_not_a_git_repo_error(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    write(root, "knowledge/a/qna.yaml")
    with pytest.raises(LabcycleError) as info:
        changed_leaves(root)
    assert "not a git repository" in str(info.value)
    assert "--base empty" in str(info.value)
    assert info.value.where == str(root)
    with pytest.raises(LabcycleError, match="not a git repository"):
        default_base(root)


def test_missing_taxonomy_dir_error(tmp_path: Path) -> None:
    with pytest.raises(LabcycleError, match="taxonomy directory not found"):
        changed_leaves(tmp_path / "nope", base="empty")


def test_no_merge_base_error(repo: Path) -> None:
    sh(repo, "checkout", "-q", "--orphan", "unrelated")
    commit_all(repo, "unrelated history")
    with pytest.raises(LabcycleError, match="no merge base"):
        changed_leaves(repo, base="main")


def test_git_helper(repo: Path) -> None:
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "topic"
    assert git(repo, "rev-parse", "--verify", "--quiet", "nope", check=False) == ""
    with pytest.raises(LabcycleError) as info:
        git(repo, "show", "no-such-ref")
    assert str(info.value).startswith(f"{repo}: git show failed:")
    assert "\n" not in str(info.value)
