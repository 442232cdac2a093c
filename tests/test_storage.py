"""labcycle/storage.py: a run folder to shared storage and back (a local path, file://, fsspec's memory://),
sending only what changed, and never taking a half-written file for a complete one."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from labcycle import storage
from labcycle.errors import LabcycleError


def _tree(root: Path) -> Path:
    (root / "cycle-1" / "mixed" / "knowledge").mkdir(parents=True)
    (root / "manifest.json").write_text('{"leaves": []}\n')
    (root / "cycle-1" / "mixed" / "knowledge" / "data.jsonl").write_text('{"messages": []}\n' * 3)
    (root / "cycle-1" / "mixed" / "held_out.jsonl").write_text("")
    return root


@pytest.fixture(params=["path", "file", "memory"])
def url(request, tmp_path) -> str:
    if request.param == "memory":
        return f"memory://labcycle-tests/{uuid.uuid4().hex}"
    folder = tmp_path / "shared" / "run-1"
    return str(folder) if request.param == "path" else f"file://{folder}"


def test_a_folder_goes_up_and_comes_back_the_same(url, tmp_path):
    run = _tree(tmp_path / "run")
    sent = storage.upload(run, url, ["manifest.json", "cycle-1/mixed"])
    assert sorted(sent["sent"]) == ["cycle-1/mixed/held_out.jsonl", "cycle-1/mixed/knowledge/data.jsonl", "manifest.json"]
    got = storage.download(url, tmp_path / "copy")
    assert sorted(got["fetched"]) == sorted(sent["sent"])
    for rel in sent["sent"]:
        assert (tmp_path / "copy" / rel).read_bytes() == (run / rel).read_bytes()
    # only what was asked for
    part = storage.download(url, tmp_path / "part", ["cycle-1/mixed/knowledge"])
    assert part["fetched"] == ["cycle-1/mixed/knowledge/data.jsonl"]
    assert not (tmp_path / "part" / "manifest.json").exists()


def test_unchanged_files_are_skipped_and_a_changed_one_is_sent_again(url, tmp_path):
    run = _tree(tmp_path / "run")
    storage.upload(run, url)
    again = storage.upload(run, url)
    assert again["sent"] == [] and len(again["skipped"]) == 3
    data = run / "cycle-1" / "mixed" / "knowledge" / "data.jsonl"
    data.write_text("changed, same folder\n")
    assert storage.upload(run, url)["sent"] == ["cycle-1/mixed/knowledge/data.jsonl"]

    copy = tmp_path / "copy"
    storage.download(url, copy)
    assert storage.download(url, copy)["fetched"] == []
    # a local file that differs (even at the same size) is fetched again
    local = copy / "manifest.json"
    local.write_text(local.read_text().replace("leaves", "LEAVES"))
    assert storage.download(url, copy)["fetched"] == ["manifest.json"]
    assert local.read_text() == (run / "manifest.json").read_text()


def test_into_puts_files_under_a_folder_of_the_storage(url, tmp_path):
    taxonomy = tmp_path / "taxonomy"
    (taxonomy / "knowledge" / "a").mkdir(parents=True)
    (taxonomy / "knowledge" / "a" / "qna.yaml").write_text("version: 3\n")
    (taxonomy / "knowledge" / "b.yaml").write_text("not selected\n")
    assert storage.upload(taxonomy, url, ["knowledge/a/qna.yaml"], into="taxonomy")["sent"] == ["taxonomy/knowledge/a/qna.yaml"]
    storage.download(url, tmp_path / "worker", ["taxonomy"])
    assert (tmp_path / "worker" / "taxonomy" / "knowledge" / "a" / "qna.yaml").read_text() == "version: 3\n"


def test_files_the_index_does_not_list_do_not_exist(url, tmp_path):
    """What a crashed upload left behind (a file, but no index entry) is never downloaded."""
    run = _tree(tmp_path / "run")
    storage.upload(run, url, ["manifest.json"])
    fs, root = storage.open_url(url)
    fs.makedirs(f"{root}/cycle-1", exist_ok=True)
    fs.pipe_file(f"{root}/cycle-1/half.jsonl", b'{"partial')
    got = storage.download(url, tmp_path / "copy")
    assert got["fetched"] == ["manifest.json"]
    with pytest.raises(LabcycleError, match="not in this storage"):
        storage.download(url, tmp_path / "copy", ["cycle-1"])
    assert storage.download(url, tmp_path / "copy", ["cycle-1"], missing_ok=True)["missing"] == ["cycle-1"]


def test_a_file_changed_behind_the_index_is_refused_not_used(url, tmp_path):
    run = _tree(tmp_path / "run")
    storage.upload(run, url, ["manifest.json"])
    fs, root = storage.open_url(url)
    fs.pipe_file(f"{root}/manifest.json", b'{"leaves": [1]}\n')  # same size? no matter: the hash decides
    with pytest.raises(LabcycleError, match="upload it again") as info:
        storage.download(url, tmp_path / "copy")
    assert info.value.where.endswith("manifest.json")
    assert not (tmp_path / "copy" / "manifest.json").exists()
    assert not list((tmp_path / "copy").glob("**/*.part"))  # no temporary file left behind
    # the next upload notices the storage no longer holds what the index says, and repairs it
    assert storage.upload(run, url, ["manifest.json"])["sent"] == ["manifest.json"]
    assert storage.download(url, tmp_path / "copy")["fetched"] == ["manifest.json"]


def test_a_download_replaces_a_hard_linked_file_without_writing_through_the_link(tmp_path):
    """Tuned outputs in a run folder are hard links into the tuning cache: a sync must not rewrite the cache."""
    url = str(tmp_path / "shared")
    run = _tree(tmp_path / "run")
    storage.upload(run, url, ["manifest.json"])
    cache = tmp_path / "cache.json"
    cache.write_text("cached, other content\n")
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "manifest.json").hardlink_to(cache)
    storage.download(url, tmp_path / "copy")
    assert (tmp_path / "copy" / "manifest.json").read_text() == (run / "manifest.json").read_text()
    assert cache.read_text() == "cached, other content\n"


def test_json_files_and_mistakes(tmp_path):
    url = f"memory://labcycle-tests/{uuid.uuid4().hex}/.stages/run.json"
    assert storage.read_json(url) is None
    storage.write_json(url, {"output": "x"})
    assert storage.read_json(url) == {"output": "x"}
    with pytest.raises(LabcycleError, match="no such file or folder"):
        storage.upload(tmp_path, str(tmp_path / "shared"), ["missing"])
    with pytest.raises(LabcycleError, match="leaves the folder"):
        storage.upload(tmp_path, str(tmp_path / "shared"), ["../elsewhere"])
    with pytest.raises(LabcycleError, match="cannot open this storage"):
        storage.upload(tmp_path, "nosuchprotocol://bucket/x")
    assert storage.join("memory://a/", "b", "c/") == "memory://a/b/c"
    assert storage.join("relative/folder", "run") == str(Path("relative/folder").resolve() / "run")


def test_writers_handing_back_at_once_lose_none_of_each_others_files(url, tmp_path):
    """Workers of a fanned-out stage upload into one mirror at the same time, each into its own shard of the
    index; a download sees all of their files, and folding a finished writer's shard keeps them."""
    import threading

    groups = []
    for g in range(4):
        folder = tmp_path / f"worker-{g}"
        for leaf in range(6):
            (folder / "generated" / f"g{g}" / f"leaf-{leaf}").mkdir(parents=True)
            (folder / "generated" / f"g{g}" / f"leaf-{leaf}" / "samples.jsonl").write_text(f"{g}/{leaf}\n" * (leaf + 1))
        groups.append(folder)
    storage.upload(_tree(tmp_path / "run"), url)  # the orchestrator's own files, in the index
    start = threading.Barrier(len(groups))

    def hand_back(g: int) -> None:
        start.wait()
        storage.upload(groups[g], url, [f"generated/g{g}"], writer=f"flow-run-{g}")

    threads = [threading.Thread(target=hand_back, args=(g,)) for g in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {f"generated/g{g}/leaf-{leaf}/samples.jsonl" for g in range(4) for leaf in range(6)}
    got = storage.download(url, tmp_path / "back", ["generated"])
    assert set(got["fetched"]) == expected
    storage.fold(url, "flow-run-0")
    storage.fold(url, "flow-run-0")  # a second fold of the same writer finds nothing to do
    assert set(storage.download(url, tmp_path / "again", ["generated"])["fetched"]) == expected
    # the orchestrator's next upload of its own files keeps the workers' entries
    storage.upload(tmp_path / "run", url, ["manifest.json"])
    for g in range(1, 4):
        storage.fold(url, f"flow-run-{g}")
    assert set(storage.download(url, tmp_path / "last", ["generated"])["fetched"]) == expected
    assert storage.download(url, tmp_path / "last", ["generated"])["fetched"] == []


def test_the_newest_entry_of_a_file_wins_between_the_index_and_a_shard(url, tmp_path):
    run = _tree(tmp_path / "run")
    worker = tmp_path / "worker"
    (worker / "cycle-1" / "mixed").mkdir(parents=True)
    (worker / "cycle-1" / "mixed" / "held_out.jsonl").write_text("from the worker\n")
    storage.upload(run, url)
    storage.upload(worker, url, ["cycle-1/mixed/held_out.jsonl"], writer="w")
    copy = tmp_path / "copy"
    storage.download(url, copy)
    assert (copy / "cycle-1" / "mixed" / "held_out.jsonl").read_text() == "from the worker\n"
    (run / "cycle-1" / "mixed" / "held_out.jsonl").write_text("the orchestrator's, later\n")
    storage.upload(run, url, ["cycle-1/mixed/held_out.jsonl"])
    storage.download(url, copy)
    assert (copy / "cycle-1" / "mixed" / "held_out.jsonl").read_text() == "the orchestrator's, later\n"
