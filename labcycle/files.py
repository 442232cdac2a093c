"""Reading a user's file without trusting what its name points at.

A name in a taxonomy, a document repository or on the command line can be a FIFO (opening it waits for a
writer forever), a link to /dev/zero or /dev/urandom (st_size says 0, reading never ends) or a file far
larger than any honest one. So: open without blocking, look at what was opened (fstat, not the name, so a
swap between check and open changes nothing), take regular files only, and read at most `limit` + 1 bytes
whatever the size claimed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class NotRegularFile(OSError):
    """The name leads to a FIFO, a device or a socket: nothing labcycle reads."""

    def __init__(self, path: Path, kind: str):
        super().__init__(errno.EINVAL, f"it is {kind}, not a regular file", str(path))
        self.kind = kind


class FileTooLarge(OSError):
    """More than `limit` bytes were there to read."""

    def __init__(self, path: Path, size: int, limit: int):
        super().__init__(errno.EFBIG, f"it is larger than {limit:,} bytes", str(path))
        self.size, self.limit = size, limit


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def read_bounded(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file at `path` (symlinks followed), at most `limit` of them.

    Raises NotRegularFile, FileTooLarge, IsADirectoryError, or the OSError of open/read (ENOENT, EACCES, ELOOP for a symlink
    loop, ...). Returns within the time it takes to read `limit` bytes, whatever `path` names.
    """
    path = Path(path)
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; it changes nothing for a
    # regular file. O_NOCTTY: a terminal device named here must not become our controlling terminal.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, _kind(st.st_mode))
        if st.st_size > limit:
            raise FileTooLarge(path, st.st_size, limit)
        chunks, total = [], 0
        while total <= limit:  # the file may grow while it is read: stop one byte past the limit
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise FileTooLarge(path, total, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def describe_os_error(exc: OSError) -> str:
    """One line for a file that could not be read: what it is, or the system's reason."""
    if isinstance(exc, (NotRegularFile, FileTooLarge)):
        return exc.strerror
    if exc.errno == errno.ELOOP:
        return "it is a symlink loop, a link that leads back to itself"
    return exc.strerror or str(exc)
