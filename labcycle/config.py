"""labcycle's run configuration: a YAML file checked against schemas/config.schema.json, then typed.

Unset keys take the defaults below; a bad key or value is reported with the file, line and the fix,
before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.tasks.taxonomy.discover import DEFAULT_FOLDERS


@dataclass(frozen=True)
class TaxonomyConfig:
    folders: tuple[str, ...] = DEFAULT_FOLDERS
    strict: bool = False


@dataclass(frozen=True)
class DocumentsConfig:
    cache_dir: str | None = None


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


@dataclass(frozen=True)
class Config:
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    documents: DocumentsConfig = field(default_factory=DocumentsConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def from_mapping(data: dict[str, Any], source: str = "config") -> Config:
    from labcycle.schemas import validator

    errors = sorted(validator("config.schema.json").iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "top level"
        raise LabcycleError(f"{where}: {err.message}; see schemas/config.schema.json for the allowed keys", where=source)
    tax = data.get("taxonomy", {})
    chunk = data.get("chunking", {})
    cfg = Config(
        taxonomy=TaxonomyConfig(folders=tuple(tax.get("folders", DEFAULT_FOLDERS)), strict=tax.get("strict", False)),
        documents=DocumentsConfig(**data.get("documents", {})),
        chunking=ChunkingConfig(**chunk),
    )
    for max_key, overlap_key in (("max_words", "overlap_words"), ("max_tokens", "overlap_tokens")):
        if getattr(cfg.chunking, overlap_key) >= getattr(cfg.chunking, max_key):
            raise LabcycleError(f"chunking.{overlap_key} must be smaller than chunking.{max_key}", where=source)
    return cfg


def load(path: str | Path | None) -> Config:
    """The config in `path`, or the defaults when no path is given."""
    if path is None:
        return Config()
    from labcycle.tasks.taxonomy.reader import read_yaml

    parsed = read_yaml(Path(path)) if Path(path).is_file() else None
    if parsed is None:
        raise LabcycleError("config file not found; pass an existing YAML file to --config", where=str(path))
    bad = [p for p in parsed.problems if p.rule != "file/empty"]
    if bad:
        p = bad[0]
        raise LabcycleError(p.message, where=f"{path}:{p.line}:{p.column}")
    return from_mapping(parsed.data or {}, source=str(path))
