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
Processes are read through psutil, so this works wherever psutil does (Linux, macOS), not only with /proc.

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

import psutil


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


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def children(pid: int) -> set[int]:
    return _below(pid, recursive=False)


def descendants(pid: int) -> set[int]:
    return _below(pid, recursive=True)


def _below(pid: int, recursive: bool) -> set[int]:
    process = _process(pid)
    if process is None:
        return set()
    try:
        return {child.pid for child in process.children(recursive=recursive)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return set()


def _cmdline(pid: int) -> bytes | None:
    """The command line, NUL-separated as in /proc/PID/cmdline (a renamed process shows its new title); None
    once the process is gone or cannot be read."""
    process = _process(pid)
    try:
        return None if process is None else "\0".join(process.cmdline()).encode(errors="replace")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None


def _started(pid: int) -> float | None:
    """When the process started; None once it is gone or a zombie. A pid can be reused after its process
    ends, but not with the same start time. (Not the command line: vLLM renames its processes once they run.)"""
    process = _process(pid)
    try:
        if process is None or process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


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
