"""Shared storage for remote stages: files copied between a local folder and an fsspec URL (a local
path, file://, s3://, gs://, memory://, ...), sending only what changed.

    upload(RUN, "s3://bucket/labcycle/demo-1a2b", ["manifest.json", "cycle-1/mixed"])
    download("s3://bucket/labcycle/demo-1a2b", WORK, ["cycle-1/tuned"])

An index at URL/.labcycle-sync.json records the size and sha256 of every file as it was last sent, so a
repeated sync of a run folder sends or fetches only files whose content changed: the local side is
hashed, the remote side is listed but never read to compare. The index has one writer (the orchestrator).
Anyone else uploads with a `writer` name and records what it sent in its own shard,
URL/.labcycle-sync.d/<writer>.json, so that several workers handing back at once never overwrite each
other's entries; readers merge the shards over the index (the newest entry of a file wins), and `fold`
moves a finished writer's shard into the index. Only files the index lists exist for a
download, and each is checked against its hash as it arrives, so an upload that crashed half-way is
never taken for a complete file. Local destinations get a temporary file renamed into place (which also
leaves hard-linked caches untouched); an object store's put is atomic by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError

INDEX = ".labcycle-sync.json"
SHARDS = ".labcycle-sync.d"
_CHUNK = 1 << 20


def open_url(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, root path on it) of a storage URL or local path."""
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(str(url))
    except (ValueError, ImportError) as exc:
        raise LabcycleError(f"cannot open this storage ({exc}); use a local folder or an fsspec URL whose filesystem "
                            "package is installed (e.g. s3fs for s3://, gcsfs for gs://)", where=str(url)) from None
    return fs, root.rstrip("/") or "/"


def join(url: str, *parts: str) -> str:
    """url/part/...; a local path is made absolute first, so that another process reads the same folder."""
    url = str(url)
    if "://" not in url:
        url = str(Path(url).resolve())
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])


def upload(local: Path, url: str, paths: Iterable[str] = (".",), *, into: str = "",
           writer: str | None = None) -> dict[str, list[str]]:
    """Copy files or folders under `local` (paths relative to it; "." is all of it) to url/into/...,
    skipping those whose size and sha256 are what the index recorded and the storage still holds.
    writer: record the files sent in this writer's own shard, not in the index (a worker handing back
    while others may too). -> {"sent": [...], "skipped": [...]}, paths relative to url."""
    local = Path(local)
    files: dict[str, Path] = {}
    for p in paths:
        src = local / _norm(p)
        if src.is_file():
            files[_norm(posixpath.join(into, _norm(p)))] = src
        elif src.is_dir():
            for f in sorted(x for x in src.rglob("*") if x.is_file()):
                files[_norm(posixpath.join(into, f.relative_to(local).as_posix()))] = f
        else:
            raise LabcycleError("nothing to upload here (no such file or folder)", where=str(src))
    fs, root = open_url(url)
    index = _read_index(fs, root, url)
    present = _sizes(fs, root)
    sent: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    try:
        for rel, src in files.items():
            if rel == INDEX or rel.startswith(SHARDS + "/"):
                continue
            entry = {"size": src.stat().st_size, "sha256": sha256(src)}
            if _same(index.get(rel), entry) and present.get(rel) == entry["size"]:
                skipped.append(rel)
                continue
            _guard(url, rel, lambda: _put(fs, src, f"{root}/{rel}"))
            sent[rel] = {**entry, "t": time.time()}
    finally:
        # Also after a failure: what was sent is recorded, and is not sent again.
        if sent and writer:
            shard = _shard(writer)
            own = _read_files(fs, root, shard, url)
            _guard(url, shard, lambda: _write(fs, f"{root}/{shard}", _dumps({"format": 1, "files": {**own, **sent}})))
        elif sent:
            _guard(url, INDEX, lambda: _write(fs, f"{root}/{INDEX}", _dumps({"format": 1, "files": {**index, **sent}})))
    return {"sent": list(sent), "skipped": skipped}


def fold(url: str, writer: str) -> None:
    """A writer's shard into the index, once that writer has finished (its entries then stay in the index
    alone). Only the index's one writer calls this."""
    fs, root = open_url(url)
    shard = f"{root}/{_shard(writer)}"
    if not fs.exists(shard):
        return
    index = _read_index(fs, root, url)
    _guard(url, INDEX, lambda: _write(fs, f"{root}/{INDEX}", _dumps({"format": 1, "files": index})))
    _guard(url, _shard(writer), lambda: fs.rm_file(shard))


def download(url: str, local: Path, paths: Iterable[str] = (".",), *, missing_ok: bool = False) -> dict[str, list[str]]:
    """Copy files or folders of url (paths relative to it; "." is everything) to the same paths under
    `local`, skipping local files whose size and sha256 already match. A path with nothing in the storage
    is an error, unless missing_ok (then it is listed under "missing").
    -> {"fetched": [...], "skipped": [...], "missing": [...]}."""
    fs, root = open_url(url)
    index = _read_index(fs, root, url)
    fetched: list[str] = []
    skipped: list[str] = []
    missing: list[str] = []
    for p in paths:
        p = _norm(p)
        chosen = sorted(r for r in index if p == "." or r == p or r.startswith(p + "/"))
        if not chosen:
            if missing_ok:
                missing.append(p)
                continue
            raise LabcycleError(f"{p} is not in this storage (it was never uploaded here); run the stage that writes it "
                                "first", where=str(url))
        for rel in chosen:
            dest = Path(local) / rel
            entry = index[rel]
            if dest.is_file() and dest.stat().st_size == entry["size"] and sha256(dest) == entry["sha256"]:
                skipped.append(rel)
                continue
            _guard(url, rel, lambda: _get(fs, f"{root}/{rel}", dest, entry, join(url, rel)))
            fetched.append(rel)
    return {"fetched": fetched, "skipped": skipped, "missing": missing}


def write_json(url: str, obj: Any) -> None:
    """One small JSON file at url, whole or not at all."""
    fs, path = open_url(url)
    _guard(url, "", lambda: _write(fs, path, _dumps(obj)))


def read_json(url: str) -> Any:
    """The JSON file at url, or None when there is none."""
    fs, path = open_url(url)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabcycleError(f"cannot read this file ({exc})", where=str(url)) from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _norm(rel: str) -> str:
    """A clean relative posix path; one that climbs out (..) or is absolute is refused."""
    norm = posixpath.normpath(str(rel).replace(os.sep, "/")) if rel else "."
    if norm.startswith("../") or norm == ".." or norm.startswith("/"):
        raise LabcycleError(f"{rel!r} leaves the folder being synced; give a path inside it")
    return norm


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _shard(writer: str) -> str:
    return f"{SHARDS}/{re.sub(r'[^A-Za-z0-9._-]+', '-', writer)}.json"


def _same(recorded: dict[str, Any] | None, entry: dict[str, Any]) -> bool:
    return recorded is not None and recorded.get("size") == entry["size"] and recorded.get("sha256") == entry["sha256"]


def _read_files(fs: Any, root: str, rel: str, url: str) -> dict[str, dict[str, Any]]:
    """The files an index (or a shard) at root/rel lists."""
    try:
        data = json.loads(fs.cat_file(f"{root}/{rel}"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LabcycleError(f"unreadable sync index ({exc}); delete it to send everything again",
                            where=join(url, rel)) from None
    return dict(data.get("files", {})) if isinstance(data, dict) else {}


def _read_index(fs: Any, root: str, url: str) -> dict[str, dict[str, Any]]:
    """The index with every writer's shard merged over it: of two entries for one file, the newer wins."""
    index = _read_files(fs, root, INDEX, url)
    try:
        shards = sorted(posixpath.basename(str(p)) for p in fs.glob(f"{root}/{SHARDS}/*.json"))
    except (FileNotFoundError, NotADirectoryError):
        shards = []
    for shard in shards:
        for rel, entry in _read_files(fs, root, f"{SHARDS}/{shard}", url).items():
            if entry.get("t", 0) >= index.get(rel, {}).get("t", 0):
                index[rel] = entry
    return index


def _sizes(fs: Any, root: str) -> dict[str, int]:
    """Size of every file under root, by path relative to it."""
    try:
        found = fs.find(root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    prefix = fs._strip_protocol(root).rstrip("/") + "/"
    return {str(p)[len(prefix):]: int(info.get("size") or 0) for p, info in found.items() if str(p).startswith(prefix)}


def _put(fs: Any, src: Path, dest: str) -> None:
    if _is_local(fs):
        _replace_local(Path(dest), lambda tmp: shutil.copyfile(src, tmp))
    else:
        fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        fs.put_file(str(src), dest)


def _write(fs: Any, dest: str, data: bytes) -> None:
    if _is_local(fs):
        _replace_local(Path(dest), lambda tmp: Path(tmp).write_bytes(data))
    else:
        fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        fs.pipe_file(dest, data)


def _get(fs: Any, src: str, dest: Path, entry: dict[str, Any], shown: str) -> None:
    def fetch(tmp: str) -> None:
        fs.get_file(src, tmp)
        if Path(tmp).stat().st_size != entry["size"] or sha256(Path(tmp)) != entry["sha256"]:
            raise LabcycleError("this file is not what was uploaded (an interrupted or outside write); upload it again",
                                where=shown)

    try:
        _replace_local(dest, fetch)
    except FileNotFoundError:
        raise LabcycleError("listed in the storage's index but gone; upload it again", where=shown) from None


def _replace_local(dest: Path, fill: Any) -> None:
    """Write dest through a temporary file in its folder, renamed into place only when complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    # mkstemp makes the file private (0600); a shared folder is read by workers running as other users.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        fill(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _guard(url: str, rel: str, step: Any) -> None:
    """Run a transfer; storage errors become one line that says which file and what to do."""
    try:
        step()
    except LabcycleError:
        raise
    except OSError as exc:
        where = join(url, rel) if rel else str(url)
        raise LabcycleError(f"copying failed ({type(exc).__name__}: {exc}); check the storage is reachable and "
                            "writable, then run again", where=where, transient=True) from None
