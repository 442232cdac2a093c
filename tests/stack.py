"""A production-like labcycle stack on this machine, for the live tests and bench/push.py: a real
`prefect server start` (SQLite, its own home, a free loopback port), the work pools, the deployments of
deployments/prefect.yaml, process workers and the webhook receiver, each its own process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (a worker's flow-run processes included), then SIGKILL what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


class Stack:
    def __init__(self, home: Path, env: dict[str, str]):
        self.home = home
        self.env = env
        self.procs: list[subprocess.Popen] = []

    @property
    def api_url(self) -> str:
        return self.env["PREFECT_API_URL"]

    def spawn(self, name: str, args: list[str], ready=None, timeout: float = 120, env: dict | None = None,  # type: ignore[no-untyped-def]
              cwd: Path | None = None) -> subprocess.Popen:
        log = self.home / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(args, env={**self.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=cwd or self.home, start_new_session=True)
        self.procs.append(proc)
        if ready is not None:
            _wait(ready, name, proc, log, timeout)
        return proc

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text()

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 300) -> str:
        """A command against this stack; its output, or RuntimeError with the output."""
        proc = subprocess.run(list(args), env=self.env, cwd=cwd or REPO_ROOT, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc.stdout

    def worker(self, pool: str, name: str | None = None, poll_seconds: float = 10, limit: int | None = None) -> subprocess.Popen:
        """`prefect worker start` on `pool`, polling every poll_seconds (Prefect's default: 10), running at most
        `limit` flow runs at once (None: no limit)."""
        name = name or f"worker-{pool}"
        return self.spawn(name, [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                                 "--name", name, *(["--limit", str(limit)] if limit else [])],
                          env={"PREFECT_WORKER_QUERY_SECONDS": str(poll_seconds),
                               "PREFECT_WORKER_PREFETCH_SECONDS": "0"},
                          ready=lambda: "started!" in self.log(name).lower() or "polling" in self.log(name).lower(),
                          timeout=180)

    def receiver(self, config: Path, secret: str) -> str:
        """`labcycle webhook serve` on a free port; its base URL."""
        import httpx

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        self.spawn("receiver", [str(BIN / "labcycle"), "webhook", "serve", "--port", str(port), "--config", str(config)],
                   env={"LABCYCLE_WEBHOOK_SECRET": secret},
                   ready=lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200)
        return base

    def close(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)


@contextmanager
def prefect_stack(home: Path, base_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A real Prefect server with its own home under `home`; stopped, with everything spawned, on exit."""
    import httpx

    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**(base_env if base_env is not None else os.environ)}
    for key in [k for k in env if k.startswith("PREFECT_") and k not in _KEEP]:
        del env[key]  # e.g. a test harness's settings; this stack is its own server
    env.update({
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    stack = Stack(home, env)
    try:
        stack.spawn("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                               "--no-ui", "--analytics-off"],
                    ready=lambda: httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200,
                    timeout=180)
        yield stack
    finally:
        stack.close()


# Settings that are about this machine, not about which server to talk to.
_KEEP = {"PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_SERVER_MEMO_STORE_PATH"}


def deploy(stack: Stack, *names: str) -> str:
    """`prefect deploy` from deployments/prefect.yaml (every deployment, or those named), from the repository root."""
    which = [arg for name in names for arg in ("--name", name)] or ["--all"]
    return stack.run(str(BIN / "prefect"), "--no-prompt", "deploy", *which, "--prefect-file",
                     str(REPO_ROOT / "deployments" / "prefect.yaml"))


def flow_runs(stack: Stack, deployment: str) -> list[Any]:
    """The flow runs of a deployment ("flow/deployment"), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def wait_for_runs(stack: Stack, deployment: str, count: int, final: bool, timeout: float) -> list[Any]:
    """Wait until the deployment has `count` flow runs (all in a final state, if `final`)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = flow_runs(stack, deployment)
        if len(runs) >= count and (not final or all(r.state and r.state.is_final() for r in runs)):
            return runs
        if time.monotonic() > deadline:
            states = [(r.name, r.state.name if r.state else None) for r in runs]
            raise AssertionError(f"{deployment}: {states} after {timeout:.0f}s (wanted {count}, final={final})")
        time.sleep(0.5)
