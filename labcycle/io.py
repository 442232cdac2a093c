"""Writing run-folder files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _create_aside(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path`: (fd, name). Created with mode 0o666 as open() creates files, so the
    process umask decides (0o644 under the usual 022): a model card or release.json in a shared registry is
    readable by the user serving it. tempfile.mkstemp would make it 0o600 whatever the umask says."""
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def write_text_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_aside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def link_tree(src: Path, dest: Path) -> None:
    """The file or folder src at dest, each file a hard link (no second copy of a model's weights) or, across
    filesystems or where links are not allowed, a copy; each put into place whole, over what dest held."""
    src, dest = Path(src), Path(dest)
    for path in [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file()):
        target = dest if path == src else dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copy2(path, tmp)
        os.replace(tmp, target)


def write_json(path: Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def digest_json(obj: Any) -> str:
    """A stable text of settings for a digest: sorted keys, and a whole-number float written as the int it
    equals, so 7 and 7.0 (a YAML int, or the same value after a trip through JSON into a float field) give
    the same digest."""

    def canonical(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        return value

    return json.dumps(canonical(obj), sort_keys=True)
