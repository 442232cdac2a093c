"""Hostile and broken inputs through the real CLI: each gets an answer within seconds, exit 1 or 2, one line
that says what and where, and no traceback. Every command runs with a timeout, so a hang fails the test
instead of hanging the suite, and in a subprocess, so a crash (SIGSEGV) is a failed test, not a dead run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.leafgen import knowledge_v3

TIMEOUT_S = 60  # generous for a loaded CI machine; every case here answers in a second or two (run: ~15 s)


def labcycle(*args: str, cwd: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcycle.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=os.environ.copy(), timeout=timeout, stdin=subprocess.DEVNULL)


def assert_clean_failure(res: subprocess.CompletedProcess[str], *words: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode in (1, 2), f"exit {res.returncode}:\n{out}"
    assert "Traceback" not in out, out
    for word in words:
        assert word in out, out


@pytest.fixture()
def taxonomy(tmp_path: Path) -> Path:
    root = tmp_path / "tax"
    (root / "knowledge/good").mkdir(parents=True)
    (root / "knowledge/good/qna.yaml").write_text(knowledge_v3(1))
    return root


def leaf(root: Path, name: str) -> Path:
    path = root / "knowledge" / name / "qna.yaml"
    path.parent.mkdir(parents=True)
    return path


# --- deep nesting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "version: 3\nx: " + "[" * 30_000 + "]" * 30_000 + "\n",  # killed validate with SIGSEGV in libyaml's composer
        "version: 3\nx:\n" + "- " * 100_000 + "y\n",  # a block sequence 100,000 levels deep
        "version: 3\nx: " + "{a: " * 30_000 + "}" * 30_000 + "\n",
    ],
    ids=["flow-lists", "block-lists", "flow-mappings"],
)
def test_deep_leaf_is_a_too_deep_error(taxonomy: Path, text: str) -> None:
    leaf(taxonomy, "deep").write_text(text)
    res = labcycle("taxonomy", "validate", "--taxonomy", str(taxonomy), cwd=taxonomy)
    assert_clean_failure(res, "knowledge/deep/qna.yaml:", "nested more than 100 levels deep", "[yaml/too-deep]")
    assert res.returncode == 1


def test_deep_config_is_one_line_before_any_work(tmp_path: Path) -> None:
    config = tmp_path / "labcycle.yaml"
    config.write_text("tuning: " + "[" * 30_000 + "]" * 30_000 + "\n")
    res = labcycle("tune", "--config", str(config), "--base-model", str(tmp_path), "--output", str(tmp_path / "out"),
                   cwd=tmp_path)
    assert_clean_failure(res, f"{config}:1:", "nested more than 100 levels deep")


def test_deep_prefect_yaml_is_one_line(tmp_path: Path) -> None:
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text("definitions:\n  work_pools: " + "[" * 30_000 + "]" * 30_000 + "\n")
    res = labcycle("pools", "apply", "--prefect-file", str(prefect_file), "--dry-run", cwd=tmp_path)
    assert_clean_failure(res, f"{prefect_file}:2:", "nested more than 100 levels deep")


# --- special files and symlinks ------------------------------------------------------------------------------


def test_fifo_device_loop_and_outside_leaves_are_named_not_read(taxonomy: Path, tmp_path: Path) -> None:
    os.mkfifo(leaf(taxonomy, "fifo"))  # opening it for reading would wait for a writer forever
    leaf(taxonomy, "zero").symlink_to("/dev/zero")  # st_size 0, and reading never ends
    loop = leaf(taxonomy, "loop")
    loop.symlink_to(loop)
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(knowledge_v3(2))
    leaf(taxonomy, "outside").symlink_to(outside)
    res = labcycle("taxonomy", "validate", "--taxonomy", str(taxonomy), cwd=taxonomy)
    assert_clean_failure(res, "5 files checked: 1 valid, 4 invalid")
    lines = res.stdout.splitlines()
    assert any(ln.startswith("knowledge/fifo/qna.yaml:1:1: it is a FIFO") and ln.endswith("[file/not-regular]") for ln in lines)
    assert any(ln.startswith("knowledge/zero/qna.yaml:1:1:") and "outside the taxonomy" in ln for ln in lines)
    assert any(ln.startswith("knowledge/loop/qna.yaml:1:1:") and "symlink loop" in ln for ln in lines)
    assert any(ln.startswith("knowledge/outside/qna.yaml:1:1:") and ln.endswith("[file/outside-taxonomy]") for ln in lines)


def test_special_files_named_on_the_command_line(tmp_path: Path) -> None:
    fifo = tmp_path / "qna.yaml"
    os.mkfifo(fifo)
    res = labcycle("taxonomy", "validate", str(fifo), cwd=tmp_path)
    assert_clean_failure(res, "it is a FIFO (named pipe), not a regular file")
    zero = tmp_path / "z" / "qna.yaml"
    zero.parent.mkdir()
    zero.symlink_to("/dev/urandom")
    res = labcycle("taxonomy", "validate", str(zero), cwd=tmp_path)
    assert_clean_failure(res, "it is a device, not a regular file")
    loop = tmp_path / "l" / "qna.yaml"
    loop.parent.mkdir()
    loop.symlink_to(loop)
    res = labcycle("taxonomy", "validate", str(loop), cwd=tmp_path)
    assert_clean_failure(res, "symlink loop")


def test_fifo_config_is_refused(tmp_path: Path, taxonomy: Path) -> None:
    config = tmp_path / "labcycle.yaml"
    os.mkfifo(config)
    res = labcycle("run", "--until", "taxonomy", "--taxonomy", str(taxonomy), "--base", "empty", "--config", str(config),
                   "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert_clean_failure(res, f"--config {config}: not a regular file")


def test_run_until_taxonomy_stops_on_a_fifo_leaf(taxonomy: Path, tmp_path: Path) -> None:
    os.mkfifo(leaf(taxonomy, "fifo"))
    res = labcycle("run", "--until", "taxonomy", "--taxonomy", str(taxonomy), "--base", "empty",
                   "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert_clean_failure(res, "knowledge/fifo/qna.yaml:1:1: it is a FIFO", "[file/not-regular]")


# --- knowledge documents through `labcycle run --until taxonomy` ---------------------------------------------

RISKS = "knowledge/technology/generative_ai/risks"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _pin(leaf_file: Path, repo: str, commit: str, patterns: list[str]) -> None:
    """Point a knowledge leaf's document: block at `repo`, `commit` and `patterns`."""
    text = leaf_file.read_text()
    head = text[: text.index("document:\n")]
    lines = "".join(f'    - "{p}"\n' for p in patterns)
    leaf_file.write_text(f"{head}document:\n  repo: {repo}\n  commit: {commit}\n  patterns:\n{lines}")


def _add_leaf(taxonomy: Path, name: str, repo: str, commit: str, patterns: list[str]) -> None:
    dest = taxonomy / "knowledge/technology/generative_ai" / name
    dest.mkdir()
    (dest / "qna.yaml").write_text((taxonomy / RISKS / "qna.yaml").read_text())
    _pin(dest / "qna.yaml", repo, commit, patterns)


def run_until_taxonomy(taxonomy: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    _git(taxonomy, "add", "-A")
    _git(taxonomy, "commit", "-q", "-m", "hostile leaves")
    return labcycle("run", "--until", "taxonomy", "--taxonomy", str(taxonomy), "--base", "empty",
                    "--output", str(tmp_path / "run"), *extra, cwd=tmp_path, timeout=180)


def test_folder_links_in_a_document_repository_end(example_taxonomy: Path, tmp_path: Path) -> None:
    import json

    docs = (example_taxonomy / "../documents/ai-risk").resolve()
    (docs / "a").symlink_to(".")  # with two such links `run --until taxonomy` ran 10+ minutes, ignoring SIGTERM
    (docs / "b").symlink_to(".")
    _git(docs, "add", "-A")
    _git(docs, "commit", "-q", "-m", "links")
    _pin(example_taxonomy / RISKS / "qna.yaml", "../documents/ai-risk", _git(docs, "rev-parse", "HEAD"), ["**/*.md"])
    res = run_until_taxonomy(example_taxonomy, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    paths = [d["path"] for leaf in manifest["leaves"] for d in (leaf["documents"] or {}).get("files", [])]
    assert paths == ["mitigations.md", "risk-categories.md"]  # each once, none through a/ or b/


def test_bad_document_repositories_fail_at_once_with_one_line_each(example_taxonomy: Path, tmp_path: Path) -> None:
    import time

    docs = (example_taxonomy / "../documents/ai-risk").resolve()
    sha = _git(docs, "rev-parse", "HEAD")
    _add_leaf(example_taxonomy, "fd", "fd::17", sha, ["*.md"])  # git waited on the descriptor forever
    _add_leaf(example_taxonomy, "missing", "../documents/no-such-repo", sha, ["*.md"])  # was retried for 41-52 s
    config = tmp_path / "labcycle.yaml"
    config.write_text("documents:\n  max_bytes: 1000\n")  # the example documents are a few KB each
    start = time.monotonic()
    res = run_until_taxonomy(example_taxonomy, tmp_path, "--config", str(config))
    elapsed = time.monotonic() - start
    assert_clean_failure(res)
    out = res.stdout + res.stderr
    assert "knowledge/technology/generative_ai/fd: document.repo uses git's fd:: remote helper" in out
    assert "knowledge/technology/generative_ai/missing: cannot fetch document.repo" in out
    assert f"{RISKS}: document " in out and "documents.max_bytes" in out
    assert "AwaitingRetry" not in out, out  # none of these is worth a retry
    assert elapsed < 60, elapsed  # the embedded Prefect server's start is most of it


# --- other files a user names ------------------------------------------------------------------------------


def _call(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter, with a timeout: a read that hangs fails the test."""
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=os.environ.copy())


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("from labcycle.chat_data import load_chat_dataset as f; f('{p}')", "not a regular file"),
        ("from labcycle.tasks.evaluate.safety import load_safety_suite as f; f('{p}')", "not a regular file"),
        ("from labcycle.tasks.mix.recipe import load_recipe as f; f('{p}')", "it is a FIFO"),
        ("from labcycle.tasks.gate import load_policy as f; f('{p}')", "it is a FIFO"),
    ],
    ids=["dataset", "safety-suite", "recipe", "gate-policy"],
)
def test_a_fifo_named_as_a_settings_or_data_file_is_refused(tmp_path: Path, code: str, words: str) -> None:
    fifo = tmp_path / "named.jsonl"
    os.mkfifo(fifo)
    res = _call(code.format(p=fifo) + "\n", tmp_path)
    assert res.returncode == 1 and "LabcycleError" in res.stderr and words in res.stderr, res.stderr


def test_a_missing_taxonomy_repository_fails_at_once(tmp_path: Path) -> None:
    import time

    start = time.monotonic()
    res = labcycle("run", "--until", "taxonomy", "--taxonomy-repo", str(tmp_path / "no-such-repo"), "--base", "empty",
                   "--output", str(tmp_path / "run"), cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert_clean_failure(res, "could not fetch the taxonomy repository", "does not appear to be a git repository")
    out = res.stdout + res.stderr
    assert "AwaitingRetry" not in out, out  # was retried as a network failure: 41-52 s
    assert elapsed < 60, elapsed  # the embedded Prefect server's start is most of it


DEEP_JSON = "[" * 200_000 + "]" * 200_000


def test_deeply_nested_json_in_user_files_is_one_clear_error(tmp_path: Path) -> None:
    """JSON files a user writes (a pool's job template, a regression suite's data, a safety suite, held-out
    rows) nested past Python's recursion limit: a LabcycleError naming the file, not a RecursionError."""
    from labcycle.deploy.pools import load_template
    from labcycle.errors import LabcycleError
    from tasks.evaluate.questions import held_out_questions
    from tasks.evaluate.safety import load_safety_suite
    from tasks.evaluate.suite import _read_docs

    template, array, lines = tmp_path / "template.json", tmp_path / "data.json", tmp_path / "rows.jsonl"
    template.write_text(DEEP_JSON)
    array.write_text(DEEP_JSON)
    lines.write_text("\n" + DEEP_JSON + "\n")  # line 2: a blank line is skipped
    cases = [(lambda: load_template(template), str(template)), (lambda: _read_docs(array), str(array)),
             (lambda: _read_docs(lines), f"{lines}:2"), (lambda: load_safety_suite(lines), f"{lines}:2"),
             (lambda: held_out_questions(lines, {}, None), f"{lines}:2")]
    for call, where in cases:
        with pytest.raises(LabcycleError, match="nested too deeply") as err:
            call()
        assert err.value.where == where
