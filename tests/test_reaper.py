"""Servers labcycle starts end when labcycle is killed (labcycle/reaper.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from labcycle import reaper

# A parent that starts `sleep` (in a session of its own, or in its own group), guards it, says its pid, and waits.
PARENT = """
import subprocess, sys, time
from labcycle.reaper import guard
group = sys.argv[1] == "group"
child = subprocess.Popen(["sleep", "300"], start_new_session=group)
guard(child.pid, group=group, grace_s=2)
print(child.pid, flush=True)
time.sleep(300)
"""


def gone(pid: int, timeout_s: float) -> bool:
    """Ended (a zombie waiting for init to collect it counts) within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while reaper._started(pid) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("kind", ["pid", "group"])
def test_sigkilled_parent_takes_its_guarded_server_along(kind):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, kind], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())  # type: ignore[union-attr]
    try:
        time.sleep(1.5)
        assert not gone(child, 0)  # guarded, not stopped, while the parent lives
        parent.kill()  # SIGKILL: no exit handler runs
        parent.wait()
        assert gone(child, 10)
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_watchdog_ends_with_its_server():
    child = subprocess.Popen(["sleep", "300"])
    threading.Timer(0.5, child.kill).start()
    started = time.monotonic()
    assert reaper.watch(os.getppid(), child.pid, group=False, grace_s=1, poll_s=0.1) == "ended"
    assert time.monotonic() - started < 5
    child.wait()


@pytest.mark.slow
def test_a_killed_labcycle_tune_leaves_no_embedded_prefect_server(tiny_model, tmp_path):
    """`kill -9` of `labcycle tune` with no PREFECT_API_URL: Prefect's embedded server goes too."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                                     {"role": "assistant", "content": f"Answer {i}."}]}) + "\n"
                            for i in range(8)))
    cfg = tmp_path / "labcycle.yaml"
    cfg.write_text("tuning:\n  knowledge: {max_steps: 5000, save_steps: 1000, max_length: 128}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["LABCYCLE_HOME"] = str(tmp_path / "home")  # a Prefect home (and embedded server) of its own
    log = tmp_path / "cli.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "labcycle.cli", "tune", "--phase", "knowledge", "--base-model",
                                 str(tiny_model), "--knowledge-data", str(data), "--output", str(tmp_path / "out"),
                                 "--config", str(cfg)], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "Beginning flow run" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        port = re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", log.read_text())
        assert port, log.read_text()[-3000:]
        health = f"http://127.0.0.1:{port.group(1)}/api/health"
        with urllib.request.urlopen(health, timeout=5) as resp:
            assert resp.status == 200
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(health, timeout=1).close()
            except (urllib.error.URLError, OSError):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the embedded Prefect server still answers after labcycle was killed")
    finally:
        if proc.poll() is None:
            proc.kill()


ENGINE = """
import asyncio, sys, time
from labcycle.teacher.engine import EngineTeacher

async def main():
    teacher = EngineTeacher(sys.argv[1], max_model_len=512)
    await teacher._ensure()
    print("ready", flush=True)
    time.sleep(300)

if __name__ == "__main__":
    asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("when", ["starting", "ready"])
def test_a_killed_in_process_engine_takes_its_engine_processes_along(when, tiny_model, tmp_path):
    """vLLM's AsyncLLM runs EngineCore (and its worker) as child processes that vLLM leaves running when
    their parent is SIGKILLed, with the model's memory (on a GPU, the GPU's). The guard stops them, also
    when the kill comes while the engine is still loading."""
    script = tmp_path / "engine.py"
    script.write_text(ENGINE)
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_model)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    engine: set[int] = set()
    try:
        if when == "ready":
            for line in proc.stdout:  # type: ignore[union-attr]  # vLLM logs to stdout too
                if line.strip() == "ready":
                    break
            assert proc.poll() is None, "the engine did not start"
            engine = reaper.descendants(proc.pid)
            assert any(b"EngineCore" in (reaper._cmdline(pid) or b"") for pid in engine), "no EngineCore below it"
        else:
            deadline = time.monotonic() + 120
            while not any(b"spawn_main" in (reaper._cmdline(pid) or b"") for pid in reaper.children(proc.pid)):
                assert proc.poll() is None and time.monotonic() < deadline, "no engine process was started"
                time.sleep(0.05)
            time.sleep(1)  # the guard's scan runs every 0.2 s
            engine = reaper.descendants(proc.pid)
        proc.kill()
        proc.wait()
        watched = [pid for pid in engine if b"resource_tracker" not in (reaper._cmdline(pid) or b"")]
        left = {pid: reaper._cmdline(pid) for pid in watched if not gone(pid, 20)}
        assert not left
    finally:
        for pid in engine:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass



def test_processes_are_read_through_psutil_not_proc():
    """children, descendants, command lines and start times come from psutil, so the reaper also works where
    there is no /proc (macOS)."""
    source = (Path(reaper.__file__)).read_text()
    assert "/proc/" not in source.replace("/proc/PID/cmdline", "")
    outer = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                              "p = subprocess.Popen(['sleep', '30']); print(p.pid, flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        inner = int(outer.stdout.readline())  # type: ignore[union-attr]
        assert outer.pid in reaper.children(os.getpid())
        assert reaper.children(outer.pid) == {inner} and inner in reaper.descendants(os.getpid())
        assert b"sleep" in (reaper._cmdline(inner) or b"")
        started = reaper._started(inner)
        assert started is not None and reaper._started(inner) == started
    finally:
        outer.kill()
        outer.wait()
        os.kill(inner, signal.SIGKILL)
    assert gone(outer.pid, 5) and reaper._cmdline(outer.pid) is None
    assert reaper.children(outer.pid) == set()
