"""labcycle.yaml: checked against its schema before any work, with the file and line of a mistake."""

from __future__ import annotations

import pytest

from labcycle import config
from labcycle.errors import LabcycleError


def test_defaults_without_a_file():
    cfg = config.load(None)
    assert cfg.taxonomy.folders == ("knowledge", "compositional_skills", "foundational_skills")
    assert cfg.chunking.bound == (1000, 100)


def test_values_from_a_file(tmp_path):
    f = tmp_path / "labcycle.yaml"
    f.write_text("taxonomy:\n  folders: [knowledge]\n  strict: true\nchunking:\n  tokenizer: /models/student\n  max_tokens: 256\n  overlap_tokens: 32\n")
    cfg = config.load(f)
    assert cfg.taxonomy.folders == ("knowledge",) and cfg.taxonomy.strict
    assert cfg.chunking.bound == (256, 32)
    assert cfg.digest() != config.load(None).digest()


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("chunking:\n  max_words: 1000\n  max_wrods: 10\n", ":3:3", "max_wrods"),
        ("taxonomy:\n  strict: maybe\n", ":2:3", "strict"),
        ("chunking:\n  max_words: 100\n  overlap_words: 100\n", "", "overlap_words must be smaller"),
        ("chunking: [1, 2]\n", ":1:1", "chunking"),
        ("a: [unclosed\n", ":2:1", "syntax"),
    ],
)
def test_mistakes_name_the_file_line_and_key(tmp_path, text, where, words):
    f = tmp_path / "labcycle.yaml"
    f.write_text(text)
    with pytest.raises(LabcycleError) as info:
        config.load(f)
    assert info.value.where == f"{f}{where}"
    assert words in info.value.message


def test_missing_file(tmp_path):
    with pytest.raises(LabcycleError, match="not found"):
        config.load(tmp_path / "nope.yaml")
