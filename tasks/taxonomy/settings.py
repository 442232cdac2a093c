"""The taxonomy stage's settings: the config's taxonomy, documents and chunking sections."""

from __future__ import annotations

from dataclasses import dataclass

from labcycle.tasks.taxonomy.discover import DEFAULT_FOLDERS


@dataclass(frozen=True)
class TaxonomyConfig:
    folders: tuple[str, ...] = DEFAULT_FOLDERS
    strict: bool = False


@dataclass(frozen=True)
class DocumentsConfig:
    cache_dir: str | None = None
    max_bytes: int = 20 * 1024 * 1024  # a knowledge document larger than this is refused (tasks/taxonomy/documents.py)


@dataclass(frozen=True)
class ChunkingConfig:
    tokenizer: str | None = None
    max_words: int = 1000
    overlap_words: int = 100
    max_tokens: int = 500
    overlap_tokens: int = 50

    @property
    def bound(self) -> tuple[int, int]:
        """(max size, overlap) in the unit the chunker counts: tokens with a tokenizer, else words."""
        return (self.max_tokens, self.overlap_tokens) if self.tokenizer else (self.max_words, self.overlap_words)
