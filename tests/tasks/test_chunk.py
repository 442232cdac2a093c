"""Tests for labcycle.tasks.taxonomy.chunk: Markdown chunking under a word or token bound."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labcycle.tasks.taxonomy.chunk import Chunk, chunk_markdown, tokenizer_counter, word_count

# No '#', '`' or '~', so generated prose never turns into a heading or a fence by accident.
_WORD_CHARS = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789éßжπ中文🙂',-().:;!?\"/")
words_st = st.text(alphabet=_WORD_CHARS, min_size=1, max_size=10)
spaces_st = st.sampled_from([" ", " ", " ", "  ", "\t", "\u00a0", "\u3000"])


@st.composite
def markdown_docs(draw: st.DrawFn) -> tuple[str, list[int], list[tuple[int, int]]]:
    """Markdown-like text, with the offsets of its heading lines and the spans of its code blocks."""
    parts: list[str] = [draw(st.sampled_from(["", "\n", "  \n\n"]))]
    headings: list[int] = []
    code_blocks: list[tuple[int, int]] = []

    def line(min_words: int, max_words: int) -> str:
        ws = draw(st.lists(words_st, min_size=min_words, max_size=max_words))
        return "".join(w + draw(spaces_st) for w in ws[:-1]) + (ws[-1] if ws else "")

    def paragraph() -> str:
        lines = [line(1, 12) for _ in range(draw(st.integers(1, 4)))]
        return "\n".join(lines)

    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["heading", "paragraph", "paragraph", "code", "list"]))
        offset = sum(map(len, parts))
        if kind == "heading":
            headings.append(offset)
            # Every heading gets a paragraph, as in a real document.
            block = "#" * draw(st.integers(1, 6)) + " " + line(1, 5) + "\n\n" + paragraph()
        elif kind == "code":
            fence = draw(st.sampled_from(["```", "~~~", "````"]))
            body = "\n".join("    " * draw(st.integers(0, 2)) + line(0, 6) for _ in range(draw(st.integers(1, 6))))
            block = f"{fence}{draw(st.sampled_from(['', 'python']))}\n{body}\n{fence}"
            code_blocks.append((offset, offset + len(block)))
        elif kind == "list":
            block = "\n".join("- " + line(1, 6) for _ in range(draw(st.integers(1, 4))))
        else:
            block = paragraph()
        parts.append(block)
        parts.append(draw(st.sampled_from(["\n\n", "\n\n", "\n", "\n\n\n", "\r\n\r\n", "\n \t\n"])))
    return "".join(parts), headings, code_blocks


def check_chunks(text: str, chunks: list[Chunk], max_size: int, count: Callable[[str], int]) -> None:
    """The guarantees every caller relies on, whatever the counter."""
    assert bool(chunks) == bool(text.strip())
    for c in chunks:
        assert c.text == text[c.start : c.end]
        assert c.text.strip(), "no empty or whitespace-only chunks"
        # Never mid-word: chunks start and end at the text boundary or next to whitespace.
        assert c.start == 0 or text[c.start - 1].isspace()
        assert c.end == len(text) or text[c.end].isspace()
        if count(c.text) > max_size:
            assert len(c.text.split()) == 1, "only a lone oversized word may exceed the bound"
    # In order, covering every non-whitespace character: whatever lies between two chunks is blank.
    non_space = [i for i, ch in enumerate(text) if not ch.isspace()]
    if chunks:
        assert chunks[0].start == non_space[0]
        assert chunks[-1].end == non_space[-1] + 1
    for prev, nxt in zip(chunks, chunks[1:]):
        assert prev.start < nxt.start and prev.end < nxt.end
        assert nxt.start <= prev.end or not text[prev.end : nxt.start].strip()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=markdown_docs(), max_size=st.integers(1, 40), data=st.data())
def test_chunks_respect_bound_cover_text_and_markdown(
    doc: tuple[str, list[int], list[tuple[int, int]]], max_size: int, data: st.DataObject
) -> None:
    text, headings, code_blocks = doc
    overlap = data.draw(st.integers(0, max_size - 1))
    chunks = chunk_markdown(text, "doc.md", max_size=max_size, overlap=overlap)
    check_chunks(text, chunks, max_size, word_count)
    for prev, nxt in zip(chunks, chunks[1:]):
        if nxt.start < prev.end:
            assert word_count(text[nxt.start : prev.end]) <= overlap
    for c in chunks:
        # A heading inside a chunk means the chunk runs on to the next heading (or the end):
        # sections are never cut when a chunk could have started at a heading instead.
        if any(c.start < h < c.end for h in headings):
            after = len(text) - len(text[c.end :].lstrip())
            assert after == len(text) or after in headings
    for lo, hi in code_blocks:
        if word_count(text[lo:hi]) <= max_size:
            assert any(c.start <= lo and hi <= c.end for c in chunks), "a code block that fits is kept whole"
    assert chunk_markdown(text, "doc.md", max_size=max_size, overlap=overlap) == chunks


def test_empty_and_short_documents() -> None:
    assert chunk_markdown("", "a.md") == []
    assert chunk_markdown(" \n\t\n\u00a0", "a.md") == []
    text = "\n\n# Title\n\nA short document.\n\n"
    [chunk] = chunk_markdown(text, "docs/a.md")
    assert chunk.to_json() == {"source": "docs/a.md", "start": 2, "end": 28, "text": text.strip()}


def test_overlap_must_be_smaller_than_max_size() -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_markdown("some text", "a.md", max_size=10, overlap=10)
    with pytest.raises(ValueError, match="max_size"):
        chunk_markdown("some text", "a.md", max_size=0, overlap=0)


def test_sections_are_packed_and_chunks_start_at_headings() -> None:
    section = "Some words in a sentence here. " * 4  # 24 words
    text = "".join(f"## Part {i}\n\n{section}\n\n" for i in range(5))  # 27 words a section
    chunks = chunk_markdown(text, "a.md", max_size=60, overlap=10)
    assert [c.text.split("\n")[0] for c in chunks] == ["## Part 0", "## Part 2", "## Part 4"]
    assert all(c.text.count("## Part") == 2 for c in chunks[:2])


def test_heading_stays_with_its_text() -> None:
    text = "Intro paragraph one two three.\n\n# Heading line\n\n" + "body " * 30
    chunks = chunk_markdown(text, "a.md", max_size=12, overlap=0)
    assert chunks[0].text == "Intro paragraph one two three."
    assert chunks[1].text.startswith("# Heading line\n\nbody")
    assert not any(c.text.endswith("Heading line") for c in chunks)


def test_overlap_repeats_the_tail_and_prefers_sentence_starts() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    chunks = chunk_markdown(text, "a.md", max_size=30, overlap=10)
    assert [c.text.split()[0] for c in chunks] == ["w0", "w20", "w40", "w60", "w80"]
    assert all(len(c.text.split()) == 30 for c in chunks[:-1])
    disjoint = chunk_markdown(text, "a.md", max_size=30, overlap=0)
    assert " ".join(c.text for c in disjoint) == text

    # The 6-word tail would start at "e"; the overlap starts at the sentence inside it instead.
    sentences = "A b c d e f. G h i j. K l m."
    first, second = chunk_markdown(sentences, "a.md", max_size=12, overlap=6)
    assert (first.text, second.text) == ("A b c d e f. G h i j.", "G h i j. K l m.")


def test_code_blocks_are_kept_whole_or_split_at_lines() -> None:
    code = "```python\n" + "\n".join(f"x{i} = f({i}, {i})" for i in range(10)) + "\n```"  # 40 words
    text = "A lead paragraph with seven words.\n\n" + code + "\n\nAfter."
    chunks = chunk_markdown(text, "a.md", max_size=45, overlap=5)
    assert any(code in c.text for c in chunks)
    small = chunk_markdown(text, "a.md", max_size=12, overlap=0)
    lo = text.index("```")
    inside = [c for c in small if lo < c.end < lo + len(code)]
    assert inside and all(text[c.end] == "\n" for c in inside), "an oversized block is cut at line ends"


def test_large_document_is_fast_and_counts_little_text() -> None:
    paragraph = " ".join(f"word{i % 997}" for i in range(300)) + "."
    text = "".join(f"## Section {i}\n\n{paragraph}\n\n" for i in range(440))
    assert len(text) > 1_000_000
    t0 = time.perf_counter()
    chunks = chunk_markdown(text, "big.md")
    assert time.perf_counter() - t0 < 2.0
    assert all(word_count(c.text) <= 1000 for c in chunks)

    counted = 0

    def counting(s: str) -> int:
        nonlocal counted
        counted += len(s)
        return word_count(s)

    # A slow counter (a tokenizer) must see about the text once, not once per candidate cut.
    assert chunk_markdown(text, "big.md", count=counting) == chunks
    assert counted < 2 * len(text)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ByteLevel BPE tokenizer trained here on a few sentences, saved in Hugging Face format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<s>", "</s>"],
        show_progress=False,
    )
    corpus = [
        "The taxonomy holds knowledge and skills.",
        "Synthetic data is generated from the seed examples.",
        "Each chunk of the document becomes context for questions and answers.",
    ]
    tok.train_from_iterator(corpus * 20, trainer)
    path = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(path)
    return path


def test_tokenizer_counter_bounds_tokens(tiny_tokenizer: Path) -> None:
    count = tokenizer_counter(tiny_tokenizer)
    assert count("") == 0, "special tokens are not counted"
    assert count("the taxonomy") < count("zqxj vwkp")  # trained merges make known words cheap
    url = "https://example.com/" + "a1b2c3" * 20
    text = (
        "# Knowledge\n\nThe taxonomy holds knowledge and skills. Each chunk becomes context.\n\n"
        f"See {url} for more.\n\n```\nprint('synthetic data')\n```\n\n" + "Questions and answers. " * 30
    )
    for max_size in (8, 20, 60):
        chunks = chunk_markdown(text, "k.md", max_size=max_size, overlap=max_size // 4, count=count)
        check_chunks(text, chunks, max_size, count)
        assert any(c.text == url for c in chunks), "an oversized word is a chunk of its own"
        if max_size >= 20:
            assert chunks[0].text.startswith("# Knowledge\n\nThe taxonomy")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=markdown_docs(), max_size=st.integers(4, 80), data=st.data())
def test_token_bound_holds_on_generated_markdown(
    tiny_tokenizer: Path, doc: tuple[str, list[int], list[tuple[int, int]]], max_size: int, data: st.DataObject
) -> None:
    count = _token_counter(tiny_tokenizer)
    text = doc[0]
    overlap = data.draw(st.integers(0, max_size - 1))
    chunks = chunk_markdown(text, "doc.md", max_size=max_size, overlap=overlap, count=count)
    check_chunks(text, chunks, max_size, count)


_counters: dict[Path, Callable[[str], int]] = {}


def _token_counter(path: Path) -> Callable[[str], int]:
    if path not in _counters:
        _counters[path] = tokenizer_counter(path)
    return _counters[path]
