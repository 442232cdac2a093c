"""Versions in a model registry: written aside, moved into place, made visible by release.json.

A release is written into REGISTRY/NAME/.staging-<uuid>/, moved to the next free vN, then release.json
is written into vN. Locally the move is one rename: atomic, and it fails when a concurrent release took
vN first (then the next number is tried). Object stores have no atomic rename, so files are moved one by
one; readers still never see a partial version, because a vN without release.json is not a version
(`released_versions` skips it) and release.json goes in last, in one PUT. On a failure whatever was
written aside is removed (staging, and a vN without release.json); if that removal fails too, the
leftover vN still counts when the next number is chosen, so a number is never given to two releases.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.io import write_text_atomic
from labcycle.shareable import scrub
from labcycle.tasks.release.candidate import (CHUNK, Candidate, Source, check_finite, fingerprint, fingerprint_of,
                                               sha256_file, sources)
from labcycle.tasks.release.card import README, Training, base_model, release_card

RELEASE_JSON = "release.json"
# 2: a Hub model repo's layout (the adapter's files at the root, README.md the card); 1 had adapter/ and model_card.md.
RELEASE_FORMAT = 2
_VERSION = re.compile(r"^v([0-9]+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def logger() -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:  # outside a run, e.g. release() from a script
        return logging.getLogger(__name__)


def open_registry(registry: str, name: str) -> tuple[Any, str]:
    """(fsspec filesystem, path of REGISTRY/NAME on it)."""
    from fsspec.core import url_to_fs

    if not _NAME.match(name):
        raise LabcycleError(f"the model name {name!r} is not one folder name: use letters, digits, '.', '_' and '-'",
                            where=str(registry))
    try:
        fs, root = url_to_fs(str(registry))
    except (ValueError, ImportError) as exc:
        raise LabcycleError(f"cannot open this registry ({exc}); use a local folder or an fsspec URL whose "
                            "filesystem package is installed (e.g. s3fs for s3://)", where=str(registry)) from None
    return fs, f"{root.rstrip('/')}/{name}"


def is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _numbers(fs: Any, base: str) -> list[int]:
    """Every vN folder, complete or not."""
    fs.invalidate_cache(base)
    try:
        entries = fs.ls(base, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = (_VERSION.match(str(e).rstrip("/").rsplit("/", 1)[-1]) for e in entries)
    return sorted(int(m.group(1)) for m in found if m)


def _read_release(fs: Any, folder: str) -> dict[str, Any] | None:
    try:
        return json.loads(fs.cat_file(f"{folder}/{RELEASE_JSON}"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def _shown(fs: Any, registry: str, path: str) -> str:
    """A version's location as users name it: an absolute local path, or a URL in the registry's scheme."""
    if is_local(fs):
        return path
    base = str(registry).rstrip("/")
    return base + path[len(fs._strip_protocol(base).rstrip("/")):]


def released_versions(registry: str, name: str) -> list[dict[str, Any]]:
    """The complete versions (those with a release.json), oldest first: each release.json plus its path."""
    fs, base = open_registry(registry, name)
    out = []
    for n in _numbers(fs, base):
        meta = _read_release(fs, f"{base}/v{n}")
        if meta is not None:
            out.append({**meta, "path": _shown(fs, registry, f"{base}/v{n}")})
    return out


def _copy_file(src: Path, fs: Any, dest: str) -> dict[str, Any]:
    """One file into the registry, hashing what was read; -> {sha256, size}."""
    import hashlib

    h, size = hashlib.sha256(), 0
    fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
    with Path(src).open("rb") as f, fs.open(dest, "wb") as out:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return {"sha256": h.hexdigest(), "size": size}


def _write_small(fs: Any, path: str, text: str) -> dict[str, Any]:
    import hashlib

    data = text.encode("utf-8")
    if is_local(fs):
        write_text_atomic(Path(path), text)
    else:
        fs.pipe_file(path, data)  # one PUT: atomic on object stores
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


class Release:
    """One release attempt: written aside, moved into place, made visible; or discarded.

    Creating it writes nothing: it checks the candidate and looks for a version that already holds it
    (`existing`). `write()` releases; `discard()` removes what a failed write left."""

    def __init__(self, candidate: Candidate, registry: str, name: str):
        self.candidate, self.registry, self.name = candidate, str(registry), name
        self.fs, self.base = open_registry(registry, name)
        self.sources = sources(candidate)
        check_finite(candidate)
        self.fingerprint = fingerprint(candidate)
        self.staging = f"{self.base}/.staging-{uuid.uuid4().hex}"
        self.target: str | None = None
        self.result: dict[str, Any] | None = None
        self.existing = self._find_existing()

    def _find_existing(self) -> dict[str, Any] | None:
        try:
            numbers = _numbers(self.fs, self.base)
        except PermissionError as exc:
            raise LabcycleError(f"cannot read the model registry ({exc.strerror or exc}); give this user access or "
                                "choose another registry", where=self.registry) from None
        for n in reversed(numbers):
            meta = _read_release(self.fs, f"{self.base}/v{n}")
            if meta and meta.get("fingerprint") == self.fingerprint:
                return {"name": self.name, "version": meta["version"], "fingerprint": self.fingerprint,
                        "path": _shown(self.fs, self.registry, f"{self.base}/v{n}"), "created": meta["created"],
                        "already_released": True}
        return None

    def write(self) -> dict[str, Any]:
        try:
            return self._write()
        except PermissionError as exc:
            raise LabcycleError(f"cannot write to the model registry ({exc.strerror or exc}); give this user write "
                                "access or choose another registry", where=self.registry) from None
        except (FileExistsError, NotADirectoryError) as exc:
            raise LabcycleError(f"the model registry is not a folder ({exc}); choose a folder or an fsspec URL",
                                where=self.registry) from None

    def _put(self, source: Source) -> tuple[dict[str, Any] | None, str]:
        """One file into staging -> ({sha256, size} as written, or None; sha256 of the source as read)."""
        dest = f"{self.staging}/{source.dest}"
        if source.rewrite == "skip":
            return None, sha256_file(source.path)
        if source.rewrite == "copy":
            written = _copy_file(source.path, self.fs, dest)
            return written, written["sha256"]
        import hashlib

        data = Path(source.path).read_bytes()
        text = data.decode("utf-8")
        if source.rewrite == "adapter_config":
            config = json.loads(text)
            named = config.get("base_model_name_or_path")
            if isinstance(named, str) and os.path.isabs(named):
                # AutoPeftModelForCausalLM loads the base from here: a Hub id works anywhere, a path only there.
                config["base_model_name_or_path"] = base_model(named).name
            text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        elif source.rewrite == "json":
            text = json.dumps(scrub(json.loads(text), self.candidate.share_roots), indent=2, ensure_ascii=False) + "\n"
        else:
            text = scrub(text, self.candidate.share_roots)
        self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        return _write_small(self.fs, dest, text), hashlib.sha256(data).hexdigest()

    def _write(self) -> dict[str, Any]:
        fs, c = self.fs, self.candidate
        fs.makedirs(self.base, exist_ok=True)
        files: dict[str, dict[str, Any]] = {}
        read: dict[str, str] = {}
        for source in self.sources:
            written, sha = self._put(source)
            if written is not None:
                files[source.dest] = written
            if source.key:
                read[source.key] = sha
        if fingerprint_of(read) != self.fingerprint:
            raise LabcycleError("the candidate's files changed while they were copied; release again once the "
                                "stage writing them has finished", where=str(c.tuned))
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for _ in range(100):  # a concurrent release may take a number between listing and moving
            version = f"v{max(_numbers(fs, self.base), default=0) + 1}"
            card = release_card(c, self.name, version, created, self.fingerprint, sorted([*files, README, RELEASE_JSON]))
            files[README] = _write_small(fs, f"{self.staging}/{README}", card)
            if self._move(f"{self.base}/{version}"):
                break
        else:
            raise LabcycleError("could not take a free version number (too many concurrent releases); release again",
                                where=self.registry, transient=True)
        roots = self.candidate.share_roots
        meta = {"format": RELEASE_FORMAT, "name": self.name, "version": version, "fingerprint": self.fingerprint,
                "created": created, "taxonomy_commit": c.taxonomy_commit, "metrics": c.metrics,
                "decision": scrub(c.decision, roots),
                "headline": scrub(c.headline.to_json(), roots),
                "lineage": self._lineage(),
                "files": [{"path": rel, **files[rel]} for rel in sorted(files)]}
        assert self.target is not None
        _write_small(fs, f"{self.target}/{RELEASE_JSON}", json.dumps(meta, indent=2, default=str) + "\n")
        self.result = {"name": self.name, "version": version, "path": _shown(fs, self.registry, self.target),
                       "fingerprint": self.fingerprint, "created": created, "already_released": False}
        return self.result

    def _lineage(self) -> dict[str, Any]:
        training = Training.read(Path(self.candidate.tuned))
        if training is None:
            return {}
        # The base model's Hub id or folder name only: a path on the training machine means nothing to readers.
        return scrub({**training.lineage, "phase": training.phase, "method": training.method,
                      "base_model": base_model(training.base_model).name if training.base_model else None,
                      "data_fingerprint": training.data_fingerprint}, self.candidate.share_roots)

    def _move(self, target: str) -> bool:
        """Staging -> target; False (nothing moved) when target is taken."""
        fs = self.fs
        if is_local(fs):
            try:
                os.rename(self.staging, target)  # fails on a non-empty target: never overwrites a version
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False
                raise
            self.target = target
            return True
        if fs.exists(target):
            return False
        self.target = target  # from here on a half-moved target is ours to remove on failure
        for path in sorted(fs.find(self.staging)):
            fs.mv(path, target + path[len(self.staging):])
        fs.invalidate_cache(self.staging)
        if fs.exists(self.staging):
            fs.rm(self.staging, recursive=True)
        return True

    def discard(self) -> None:
        """Remove whatever was written aside; a version holding its release.json is released and stays."""
        fs = self.fs
        for path in (self.staging, self.target):
            if path is None or (path == self.target and _read_release(fs, path) is not None):
                continue
            try:
                fs.invalidate_cache(path)
                if fs.exists(path):
                    fs.rm(path, recursive=True)
            except Exception as exc:  # never hide the failure that led here
                logger().warning(f"could not remove {path} after a failed release: {exc}; remove it by hand "
                                 "(it is not a visible version)")


def release(candidate: Candidate, registry: str, name: str = "labcycle-model") -> dict[str, Any]:
    """The candidate as the next version of REGISTRY/NAME, or the version that already holds it.

    -> {"name", "version", "path", "fingerprint", "created", "already_released"}"""
    attempt = Release(candidate, registry, name)
    if attempt.existing:
        return attempt.existing
    try:
        return attempt.write()
    except BaseException:
        attempt.discard()
        raise
