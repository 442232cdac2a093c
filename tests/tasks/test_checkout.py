"""The checkout stage: a taxonomy repository cloned at the pushed commit, branch, or default branch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from labcycle.errors import LabcycleError
from labcycle.tasks.taxonomy.checkout import FetchError, checkout, redact


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def origin(example_taxonomy: Path) -> Path:
    """The example taxonomy with a second commit on main and a feature branch with a third."""
    # A clone lives elsewhere: the document repository must be named by an absolute path, as a URL would be.
    leaf = example_taxonomy / "knowledge/technology/generative_ai/risks/qna.yaml"
    docs = (example_taxonomy / "../documents/ai-risk").resolve()
    leaf.write_text(leaf.read_text().replace("repo: ../documents/ai-risk", f"repo: {docs}"))
    (example_taxonomy / "NOTES.md").write_text("second commit\n")
    _git(example_taxonomy, "add", "-A")
    _git(example_taxonomy, "commit", "-q", "-m", "notes")
    _git(example_taxonomy, "checkout", "-q", "-b", "feature")
    (example_taxonomy / "FEATURE.md").write_text("on the branch\n")
    _git(example_taxonomy, "add", "-A")
    _git(example_taxonomy, "commit", "-q", "-m", "feature")
    _git(example_taxonomy, "checkout", "-q", "main")
    return example_taxonomy


def test_checks_out_the_commit_the_branch_or_the_default_branch(origin, tmp_path):
    first = _git(origin, "rev-parse", "main~1")
    got = checkout(str(origin), tmp_path / "a", commit=first[:12])
    assert got.commit == first and _git(got.root, "rev-parse", "HEAD") == first
    assert not (got.root / "NOTES.md").exists() and (got.root / "knowledge").is_dir()

    got = checkout(str(origin), tmp_path / "b", branch="feature")
    assert got.commit == _git(origin, "rev-parse", "feature") and (got.root / "FEATURE.md").is_file()

    got = checkout(str(origin), tmp_path / "c")  # the repository's default branch: main
    assert got.commit == _git(origin, "rev-parse", "main") and not (got.root / "FEATURE.md").exists()
    # Remote branches are there to diff against, as in any clone.
    assert _git(got.root, "rev-parse", "origin/feature") == _git(origin, "rev-parse", "feature")


def test_a_rerun_fetches_the_new_commit_and_drops_stray_files(origin, tmp_path):
    dest = tmp_path / "run" / "taxonomy"
    checkout(str(origin), dest, branch="main")
    (dest / "stray.txt").write_text("left by a crashed run")
    (origin / "THIRD.md").write_text("pushed later\n")
    _git(origin, "add", "-A")
    _git(origin, "commit", "-q", "-m", "third")
    got = checkout(str(origin), dest, branch="main", commit=_git(origin, "rev-parse", "HEAD"))
    assert (dest / "THIRD.md").is_file() and not (dest / "stray.txt").exists()
    assert got.commit == _git(origin, "rev-parse", "HEAD")


def test_mistakes_say_what_to_fix(origin, tmp_path):
    with pytest.raises(LabcycleError, match="commit 0123456789ab not found"):
        checkout(str(origin), tmp_path / "a", commit="0123456789ab")
    with pytest.raises(LabcycleError, match="branch 'nope' not found"):
        checkout(str(origin), tmp_path / "b", branch="nope")
    with pytest.raises(LabcycleError, match="is not a commit id"):
        checkout(str(origin), tmp_path / "c", commit="main; rm -rf /")
    # Credentials in the URL never reach a message.
    with pytest.raises(FetchError) as caught:
        checkout("https://user:s3cret@127.0.0.1:9/none.git", tmp_path / "d")
    assert "s3cret" not in str(caught.value) and "could not fetch" in str(caught.value)
    assert redact("https://user:tok@example.invalid/x.git") == "https://example.invalid/x.git"
    taken = tmp_path / "e"
    taken.mkdir()
    (taken / "file").write_text("x")
    with pytest.raises(LabcycleError, match="not a git clone"):
        checkout(str(origin), taken)


def test_lab_cycle_clones_the_pushed_commit_into_the_run(prefect_harness, origin, tmp_path):
    from labcycle.flows.lab_cycle import lab_cycle

    pushed = _git(origin, "rev-parse", "feature")
    out = tmp_path / "run"
    result = lab_cycle(taxonomy_repo=str(origin), branch="feature", commit=pushed, base="empty", output=str(out),
                       until="taxonomy")
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["taxonomy"]["commit"] == pushed
    assert Path(manifest["taxonomy"]["root"]) == (out / "taxonomy").resolve()

    # The trigger's defaults render missing payload keys as '': those mean "unset", not a ref named ''.
    state = lab_cycle(taxonomy_repo="", branch="", commit="", taxonomy=str(origin), base="empty",
                      output=str(tmp_path / "run2"), until="taxonomy", return_state=True)
    assert state.is_completed()
    state = lab_cycle(commit=pushed, output=str(tmp_path / "run3"), until="taxonomy", return_state=True)
    assert state.is_failed() and "give the repository's URL" in state.message


@pytest.mark.parametrize(("repo", "words"), [("fd::17", "fd:: remote helper"), ("ext::sh -c id", "ext:: remote helper"),
                                             ("http://example.com/t.git", "use https://")])
def test_transports_a_taxonomy_does_not_need_are_refused_before_git_runs(tmp_path, repo, words):
    with pytest.raises(LabcycleError) as caught:
        checkout(repo, tmp_path / "t")
    assert not isinstance(caught.value, FetchError)  # not retried
    assert caught.value.message.startswith("taxonomy_repo ") and words in caught.value.message
    assert not (tmp_path / "t").exists()


def test_a_missing_repository_fails_at_once(tmp_path):
    # Retried as a network failure, a missing local repository took 41-52 s to fail.
    for repo in (str(tmp_path / "missing"), f"file://{tmp_path / 'missing'}"):
        with pytest.raises(LabcycleError, match="could not fetch the taxonomy repository") as caught:
            checkout(repo, tmp_path / "t")
        assert not isinstance(caught.value, FetchError)
