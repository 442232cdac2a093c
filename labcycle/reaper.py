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
workers, which vLLM does not stop when we die: `guard_new_children` guards those.

    python -m labcycle.reaper PARENT_PID TARGET_PID pid|group GRACE_S
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def guard(pid: int, *, group: bool = False, grace_s: float = 10.0) -> subprocess.Popen[bytes]:
    """Stop process `pid` (with group: its whole process group) when this process ends; returns the watchdog."""
    return subprocess.Popen([sys.executable, "-m", "labcycle.reaper", str(os.getpid()), str(pid),
                             "group" if group else "pid", str(grace_s)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # a signal to our group (Ctrl-C) must not reach it


def guard_new_children(before: set[int], *, grace_s: float = 10.0) -> list[subprocess.Popen[bytes]]:
    """Guard every child of ours that is not in `before` (children() taken before starting them), but for
    multiprocessing's resource tracker: it lives as long as we do and ends by itself after us."""
    new = sorted(children(os.getpid()) - before)
    return [guard(pid, grace_s=grace_s) for pid in new if b"resource_tracker" not in (_cmdline(pid) or b"")]


def _ppids() -> dict[int, int]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = int(stat.read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
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
    identity = _cmdline(target)  # a pid can be reused once its process is gone; a group id cannot while it has members
    while True:
        if not _alive(target, group) or (not group and _cmdline(target) != identity):
            return "ended"
        if os.getppid() != parent:
            break
        time.sleep(poll_s)
    # Its children, as they are now: a server stopping in its own way stops them, but a hung one may not.
    below = {pid: _cmdline(pid) for pid in descendants(target)}
    _send(target, group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (_alive(target, group) or any(_cmdline(p) == c for p, c in below.items())):
        time.sleep(0.2)
    if _alive(target, group):
        _send(target, group, signal.SIGKILL)
    for pid, cmdline in below.items():
        if _cmdline(pid) == cmdline:
            _send(pid, False, signal.SIGKILL)
    return "stopped"


if __name__ == "__main__":
    parent_pid, target_pid, kind, grace = sys.argv[1:5]
    watch(int(parent_pid), int(target_pid), kind == "group", float(grace))
