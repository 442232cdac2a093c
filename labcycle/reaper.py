"""Servers labcycle starts must not outlive it, however it ends.

labcycle stops the servers it starts (Prefect's embedded server, a vLLM server) on a normal exit, on
Ctrl-C and when a flow run is cancelled. Some ends leave no chance for that: SIGKILL (`kill -9`, the OOM
killer, a scheduler's hard stop), and SIGTERM or SIGHUP once Prefect has recorded the crash (it re-raises
the signal, and exit handlers do not run). The server would then keep its port, its memory and, for
vLLM, the GPU, and the next run would find them taken.

`guard(pid)` starts a small watchdog process for one such server. Once a second it checks whether the
process that started it is still its parent; when it is not, it stops the server (SIGTERM, then SIGKILL
after a grace period, for the server's own children too). The watchdog ends by itself once the server
has ended. vLLM's in-process engine (AsyncLLM) runs in child processes of ours, EngineCore and its
workers, which vLLM does not stop when we die: `guard_children_started` guards those.

    python -m labcycle.reaper PARENT_PID TARGET_PID pid|group GRACE_S
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def guard(pid: int, *, group: bool = False, grace_s: float = 10.0) -> subprocess.Popen[bytes]:
    """Stop process `pid` (with group: its whole process group) when this process ends; returns the watchdog."""
    return subprocess.Popen([sys.executable, "-m", "labcycle.reaper", str(os.getpid()), str(pid),
                             "group" if group else "pid", str(grace_s)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # a signal to our group (Ctrl-C) must not reach it


@contextlib.contextmanager
def guard_children_started(watchdogs: list[subprocess.Popen[bytes]], grace_s: float = 10.0,
                           scan_s: float = 0.2) -> Iterator[None]:
    """Guard every child process of ours that starts inside the block, from the moment it appears: a kill
    while an engine is still starting (model loading, tens of seconds) must not leave it behind either.
    The watchdogs are added to `watchdogs`. multiprocessing's resource tracker is left alone (it lives as
    long as we do and ends by itself after us), and so are other watchdogs."""
    seen = children(os.getpid())
    done = threading.Event()

    def scan() -> None:
        for pid in sorted(children(os.getpid()) - seen):
            seen.add(pid)
            cmdline = _cmdline(pid) or b""
            # not another watchdog (started by another thread meanwhile): stopping it first would free its server
            if b"resource_tracker" not in cmdline and b"labcycle.reaper" not in cmdline:
                watchdogs.append(guard(pid, grace_s=grace_s))

    def keep_scanning() -> None:
        while not done.wait(scan_s):
            scan()

    scanner = threading.Thread(target=keep_scanning, name="labcycle-reaper-scan", daemon=True)
    scanner.start()
    try:
        yield
    finally:
        done.set()
        scanner.join()
        scan()


def collect(watchdogs: list[subprocess.Popen[bytes]], timeout_s: float = 3.0) -> None:
    """After their servers were stopped: each watchdog ends within a second; collect it, or end it."""
    for watchdog in watchdogs:
        try:
            watchdog.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, ...); None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def _ppids() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None:
            out[int(entry.name)] = int(fields[1])
    return out


def children(pid: int) -> set[int]:
    return {child for child, parent in _ppids().items() if parent == pid}


def descendants(pid: int) -> set[int]:
    ppids, found, todo = _ppids(), set(), [pid]
    while todo:
        current = todo.pop()
        for child, parent in ppids.items():
            if parent == current and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _started(pid: int) -> int | None:
    """When the process started (clock ticks since boot); None once it is gone or a zombie. A pid can be
    reused after its process ends, but not with the same start time. (Not the command line: vLLM renames
    its processes once they run.)"""
    fields = _stat(pid)
    return None if fields is None or fields[0] in ("Z", "X") else int(fields[19])


def _alive(pid: int, group: bool) -> bool:
    try:
        os.killpg(pid, 0) if group else os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _send(pid: int, group: bool, sig: int) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def watch(parent: int, target: int, group: bool, grace_s: float, poll_s: float = 1.0) -> str:
    """Wait until the target ends (returns "ended") or the parent does (stops the target; returns "stopped")."""
    identity = _started(target)  # a group id cannot be reused while the group has members; a pid can
    while True:
        if not _alive(target, group) or (not group and _started(target) != identity):
            return "ended"
        if os.getppid() != parent:
            break
        time.sleep(poll_s)
    # Its children, as they are now: a server stopping in its own way stops them, but a hung one may not.
    below = {pid: _started(pid) for pid in descendants(target)}

    def left() -> list[int]:
        return [pid for pid, started in below.items() if started is not None and _started(pid) == started]

    def target_left() -> bool:
        return _alive(target, group) and (group or _started(target) == identity)

    _send(target, group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (target_left() or left()):
        time.sleep(0.2)
    if target_left():
        _send(target, group, signal.SIGKILL)
    for pid in left():
        _send(pid, False, signal.SIGKILL)
    return "stopped"


if __name__ == "__main__":
    parent_pid, target_pid, kind, grace = sys.argv[1:5]
    watch(int(parent_pid), int(target_pid), kind == "group", float(grace))
