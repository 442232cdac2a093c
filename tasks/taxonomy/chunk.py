"""Split a Markdown document into overlapping chunks for knowledge synthetic-data generation.

Approach. The text is only ever cut between words (maximal runs of non-whitespace), so a chunk is
``text[start:end]`` from a word start to a word end: it never splits a word and carries no
leading or trailing whitespace. Each gap between two words gets a priority from the Markdown
around it (ATX headings and ``` / ~~~ fences are recognised line by line):

    heading start > blank line or code-fence edge > sentence end > line break > space
    > line break inside a code block > space inside a code block or a heading, or right after one

A chunk grows greedily: take the longest run of words from its start whose summed cost fits
``max_size`` and cut at the highest-priority gap in it, the latest one on ties. Small sections are
thus packed together, a chunk that can start at a heading does, and a code block that fits is not
cut, since every gap outside it outranks every gap inside it.

The next chunk repeats up to ``overlap`` units of the previous chunk's tail, starting at the best
gap in that tail (a heading or sentence start when there is one). There is no overlap after a cut
at a heading: a new section does not need the end of the previous one. The overlap also shrinks
when it would stop the next unit at the cut's level (say, the code block that follows) from
fitting whole.

Counting. Each distinct word is counted once with ``count`` and costs are summed. That is exact
for `word_count` and close for tokens, whose counts are nearly additive over concatenation; for
any other counter each chunk's text is re-counted and the chunk cut shorter until it fits, so the
bound holds for the real count. ``count`` therefore sees each distinct word once plus a few texts
per chunk, never a quadratic amount of text.

The one exception to the bound: a single word whose own count exceeds ``max_size`` (a long URL or
base64 blob, when counting tokens) cannot be cut without splitting it, so it becomes a chunk of its
own, with no overlap on either side.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_WORD = re.compile(r"\S+")
_ATX = re.compile(r" {0,3}#{1,6}(?:\s|$)")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_SENTENCE_END = re.compile(r"[.!?。！？][\"'”’)\]}*_]*$")

# Gap priorities: the higher, the better a place to end one chunk and start the next.
_AVOID, _CODE_LINE, _SPACE, _LINE, _SENTENCE, _BLOCK, _HEADING = range(7)


@dataclass(frozen=True)
class Chunk:
    source: str  # the document's path, as given by the caller
    start: int  # offset of the first character in the original text
    end: int  # offset just past the last character
    text: str  # always original[start:end]

    def to_json(self) -> dict:
        return {"source": self.source, "start": self.start, "end": self.end, "text": self.text}


def word_count(text: str) -> int:
    """Number of whitespace-separated words: the default size measure."""
    return len(text.split())


def tokenizer_counter(tokenizer_dir: str | Path) -> Callable[[str], int]:
    """Counter from a local Hugging Face tokenizer dir, counting tokens without special tokens."""
    from transformers import AutoTokenizer  # heavy import, only paid by callers who count tokens

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


def _line_structure(text: str) -> tuple[list[int], list[bool], list[int | None]]:
    """Per line: its start offset, whether it is a heading, and the id of its code block (if any).

    Fence lines belong to their block. An unclosed fence runs to the end of the document, as in
    CommonMark.
    """
    starts: list[int] = []
    headings: list[bool] = []
    blocks: list[int | None] = []
    fence = ""  # the open fence's run of ` or ~, "" outside code
    block = -1
    pos = 0
    for line in text.split("\n"):
        starts.append(pos)
        pos += len(line) + 1
        m = _FENCE.match(line)
        if fence:
            blocks.append(block)
            headings.append(False)
            run = m.group(1) if m else ""
            if run[:1] == fence[0] and len(run) >= len(fence) and not line[m.end() :].strip():
                fence = ""
        elif m and not (m.group(1)[0] == "`" and "`" in line[m.end() :]):
            fence = m.group(1)
            block += 1
            blocks.append(block)
            headings.append(False)
        else:
            blocks.append(None)
            headings.append(bool(_ATX.match(line)))
    return starts, headings, blocks


def _gap_priorities(text: str, words: list[tuple[int, int]]) -> list[int]:
    """prio[k] rates cutting between words[k-1] and words[k]; prio[0] and prio[n] are unused."""
    starts, headings, blocks = _line_structure(text)
    line_of: list[int] = []
    line = 0
    for word_start, _ in words:
        while line + 1 < len(starts) and starts[line + 1] <= word_start:
            line += 1
        line_of.append(line)

    prio = [_AVOID] * (len(words) + 1)
    for k in range(1, len(words)):
        a, b = line_of[k - 1], line_of[k]
        sentence = _SENTENCE_END.search(text, words[k - 1][0], words[k - 1][1]) is not None
        if a == b:
            if headings[a] or blocks[a] is not None:
                continue  # splitting a heading line or a line of code is a last resort
            prio[k] = _SENTENCE if sentence else _SPACE
        elif headings[b]:
            prio[k] = _HEADING
        elif headings[a]:
            continue  # a heading belongs with what follows it
        elif blocks[a] is not None and blocks[a] == blocks[b]:
            prio[k] = _CODE_LINE
        elif blocks[a] is not None or blocks[b] is not None or b - a > 1:
            # Lines between two words on different lines are blank: a paragraph break.
            prio[k] = _BLOCK
        else:
            prio[k] = _SENTENCE if sentence else _LINE
    return prio


def chunk_markdown(
    text: str,
    source: str,
    *,
    max_size: int = 1000,
    overlap: int = 100,
    count: Callable[[str], int] | None = None,
) -> list[Chunk]:
    """Split Markdown ``text`` into chunks of at most ``max_size`` units of ``count``.

    ``count`` defaults to `word_count`; pass `tokenizer_counter` to bound tokens instead.
    Consecutive chunks share at most about ``overlap`` units. See the module docstring for the
    cutting rules and the single-oversized-word exception.
    """
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    if not 0 <= overlap < max_size:
        raise ValueError(f"overlap must be >= 0 and smaller than max_size ({max_size}), got {overlap}")
    words = [m.span() for m in _WORD.finditer(text)]
    n = len(words)
    if n == 0:
        return []

    exact = count is None or count is word_count
    if exact:
        cum = list(range(n + 1))
    else:
        assert count is not None
        cache: dict[str, int] = {}
        cum = [0]
        for s, e in words:
            word = text[s:e]
            if word not in cache:
                cache[word] = count(word)
            cum.append(cum[-1] + cache[word])
    prio = _gap_priorities(text, words)

    chunks: list[Chunk] = []
    start = done = 0  # the next chunk is words[start:end]; words before `done` are already out
    while done < n:
        budget, cap = max_size, n
        while True:
            if cum[done + 1] - cum[start] > budget:
                # The chunk must take at least one new word: drop overlap until that word fits.
                start = bisect_left(cum, cum[done + 1] - budget, start, done)
            hi = min(cap, bisect_right(cum, cum[start] + budget) - 1)
            if hi <= done:
                end = done + 1  # one word over the bound on its own
            elif hi == n:
                end = n
            else:
                end = max(range(done + 1, hi + 1), key=lambda k: (prio[k], k))
            piece = text[words[start][0] : words[end - 1][1]]
            if exact or end - start == 1:
                break
            actual = count(piece)  # type: ignore[misc]
            if actual <= max_size:
                break
            # Summed word counts underestimated this text: retry on a proportionally smaller budget.
            if end == done + 1:
                start += 1
            else:
                cap = end - 1
                budget = (cum[end] - cum[start]) * max_size // actual
        chunks.append(Chunk(source, words[start][0], words[end - 1][1], piece))
        done = end
        if end < n:
            start = _next_start(cum, prio, start, end, overlap, max_size)
    return chunks


def _next_start(cum: list[int], prio: list[int], start: int, end: int, overlap: int, max_size: int) -> int:
    """First word of the chunk after words[start:end], which repeats part of that chunk's tail."""
    if prio[end] == _HEADING:
        return end
    lo = bisect_left(cum, cum[end] - overlap, start + 1, end)
    if lo >= end:
        return end
    best = max(range(lo, end), key=lambda k: (prio[k], -k))
    # Keep the next unit as strong as this cut (paragraph, code block, sentence) whole if it fits.
    level, unit_end, n = prio[end], end + 1, len(cum) - 1
    while unit_end < n and prio[unit_end] < level and cum[unit_end] - cum[end] <= max_size:
        unit_end += 1
    if cum[unit_end] - cum[end] <= max_size:
        best = max(best, bisect_left(cum, cum[unit_end] - max_size, best, end))
    return best


# --- the stage: chunk a leaf's documents into the run folder --------------------------------------

from functools import lru_cache  # noqa: E402

from prefect import task  # noqa: E402

from labcycle.tasks.taxonomy.settings import ChunkingConfig  # noqa: E402
from labcycle.io import write_jsonl  # noqa: E402
from labcycle.run_folder import RunFolder  # noqa: E402
from labcycle.tasks.taxonomy.documents import DocumentSet  # noqa: E402


@lru_cache(maxsize=4)
def _counter(tokenizer: str | None) -> Callable[[str], int]:
    return tokenizer_counter(tokenizer) if tokenizer else word_count


def chunk_documents(docs: DocumentSet, chunking: ChunkingConfig) -> list[Chunk]:
    """Every document of a leaf, chunked in document order (documents sorted by path)."""
    max_size, overlap = chunking.bound
    count = _counter(chunking.tokenizer)
    return [c for d in docs.documents for c in chunk_markdown(d.text, d.path, max_size=max_size, overlap=overlap, count=count)]


@task(name="chunk documents", task_run_name="chunk: {docs.leaf_id}")
def chunk_leaf_documents(docs: DocumentSet, chunking: ChunkingConfig, run_dir: Path) -> int:
    """RUN/documents/<leaf-id>/chunks.jsonl, one chunk per line; returns the chunk count."""
    chunks = chunk_documents(docs, chunking)
    write_jsonl(RunFolder(run_dir).documents / docs.leaf_id / "chunks.jsonl", [c.to_json() for c in chunks])
    return len(chunks)
