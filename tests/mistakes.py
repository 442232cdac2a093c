"""The shared check behind every "a mistake names the file, line and key" test of a settings file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from labcycle.errors import LabcycleError


def assert_mistake(load: Callable[[Path], Any], path: Path, text: str, where: str, words: str) -> None:
    """Loading `text` from `path` fails with a LabcycleError at path+where (":line:col") that says `words`."""
    path.write_text(text)
    with pytest.raises(LabcycleError) as info:
        load(path)
    assert info.value.where == f"{path}{where}"
    assert words in info.value.message
