"""labcycle/io.py: files written atomically get the mode the process umask gives every other file."""

from __future__ import annotations

import os
import stat

import pytest

from labcycle.io import write_json, write_text_atomic


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    # model_card.md and release.json in a shared registry were 0600 (mkstemp), unreadable by the serving user.
    old = os.umask(umask)
    try:
        card = write_text_atomic(tmp_path / "model_card.md", "# card\n")
        release = write_json(tmp_path / "release.json", {"version": "v1"})
        again = write_text_atomic(tmp_path / "model_card.md", "# card, again\n")  # replacing a file: the same rule
    finally:
        os.umask(old)
    for path in (card, release, again):
        assert stat.S_IMODE(path.stat().st_mode) == mode, oct(path.stat().st_mode)
    assert card.read_text() == "# card, again\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind


def test_link_tree_links_each_file_and_replaces_what_was_there(tmp_path):
    from labcycle.io import link_tree

    src = tmp_path / "work" / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(b"w" * 64)
    (src / "sub" / "config.json").write_text("{}")
    dest = tmp_path / "out" / "adapter"
    (dest).mkdir(parents=True)
    (dest / "weights.bin").write_bytes(b"old")
    link_tree(src, dest)
    assert (dest / "weights.bin").read_bytes() == b"w" * 64 and (dest / "sub" / "config.json").read_text() == "{}"
    assert (dest / "weights.bin").samefile(src / "weights.bin")  # one copy of the weights on disk
    assert sorted(p.name for p in dest.iterdir()) == ["sub", "weights.bin"]  # no temporary file left
    link_tree(src / "weights.bin", tmp_path / "single" / "w.bin")
    assert (tmp_path / "single" / "w.bin").samefile(src / "weights.bin")
