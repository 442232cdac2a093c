"""One tuning phase on several data-parallel processes (tuning.processes), launched with torch.distributed.run.

    run_phase(...)   what the tune task calls: trainer.train_phase in this process when the phase trains on one
                     process, else launch(...)
    launch(...)      `python -m torch.distributed.run --standalone --nproc_per_node N -m
                     labcycle.tasks.tune.distributed JOB`, watched to the end
    main(JOB)        one process (rank): trainer.train_phase with the job's arguments

Every process runs trainer.train_phase: the Trainer (accelerate) sees torchrun's environment and trains with
DDP (NCCL on GPUs, gloo on a CPU), FSDP for full fine-tuning on GPUs (trainer.sft_config); the accumulation
is split over the processes so a step takes the samples it takes on one (data.split_over_processes). The
first process (rank 0) writes the adapter, result.json and the rest; every process writes its checkpoint
share as the Trainer does, so a phase killed in any process resumes from the last complete checkpoint.

WORK/distributed/ holds what the processes hand back: job.json, events.jsonl (rank 0's progress events, which
the launcher passes to trainer.LISTENERS as they come), rank-<r>.log (each process's output), rank-<r>.pid,
error-<r>.json (a LabcycleError a process stopped with: the launcher raises it as its own), launcher.log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError
from labcycle.io import write_json
from labcycle.tasks.tune import trainer
from labcycle.tasks.tune.settings import TuneSettings, from_mapping

FOLDER = "distributed"
EVENTS = "events.jsonl"


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_processes(setting: int | str, gpus: int) -> int:
    """The processes a phase trains on: tuning.processes as set, auto = one per GPU when there are several."""
    if setting == "auto":
        return gpus if gpus > 1 else 1
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise LabcycleError(f"tuning.processes is {setting!r}: give a whole number of at least 1, or auto (one process "
                            "per GPU of the worker)")
    if gpus and setting > gpus:
        raise LabcycleError(f"tuning.processes is {setting} but this worker has {gpus} GPU{'s' if gpus > 1 else ''}: "
                            f"set tuning.processes to at most {gpus} (or auto), or run the tune stage on a worker with "
                            f"{setting} GPUs (the GPU pool's gpu_count job variable)")
    return setting


def job_variables(processes: int | str) -> dict[str, Any] | None:
    """The GPU pool job variables of a remote tune run (lab_cycle passes them to remote.run_stage): gpu_count = tuning.processes when it
    is a number above 1; None (auto, 1): the deployment's own."""
    return {"gpu_count": processes} if isinstance(processes, int) and not isinstance(processes, bool) and processes > 1 else None


def run_phase(phase: str, base_model: Path, data: Path, work_dir: Path, settings: TuneSettings, *,
              init_adapter: Path | None = None, lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """trainer.train_phase on tuning.processes processes (the result.json content)."""
    processes = resolve_processes(settings.processes, gpu_count())
    if processes == 1:
        return trainer.train_phase(phase, base_model, data, work_dir, settings, init_adapter=init_adapter, lineage=lineage)
    return launch(processes, phase, base_model, data, work_dir, settings, init_adapter=init_adapter, lineage=lineage)


def launch(processes: int, phase: str, base_model: Path, data: Path, work_dir: Path, settings: TuneSettings, *,
           init_adapter: Path | None = None, lineage: dict[str, Any] | None = None, poll_s: float = 0.2) -> dict[str, Any]:
    """The phase on `processes` processes of torch.distributed.run; rank 0's progress events reach
    trainer.LISTENERS here; a process that fails makes a LabcycleError here (its own, or one naming it)."""
    work_dir = Path(work_dir)
    done = trainer.read_result(work_dir)
    if done is not None:
        return done
    # Half-written checkpoints are removed here, once, before any process lists them.
    trainer.complete_checkpoints(work_dir / trainer.CHECKPOINTS)
    folder = work_dir / FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    job = {"phase": phase, "base_model": str(base_model), "data": str(data), "work_dir": str(work_dir),
           "settings": settings.to_json(), "init_adapter": str(init_adapter) if init_adapter else None,
           "lineage": lineage or {}, "launcher_pid": os.getpid()}
    write_json(folder / "job.json", job)
    env = dict(os.environ)
    # torchrun sets 1 thread a process (and warns) when unset: share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "labcycle.tasks.tune.distributed", str(folder / "job.json")]
    events = _Events(folder / EVENTS)
    with open(folder / "launcher.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                events.forward()
                time.sleep(poll_s)
        finally:
            if proc.poll() is None:  # this process is stopping (an error in a listener, a cancelled run)
                _stop(proc)
    events.forward()  # what came after the last look
    if proc.returncode != 0:
        raise _failure(phase, folder, processes, proc.returncode)
    result = trainer.read_result(work_dir)
    if result is None:
        raise LabcycleError(f"the {phase} phase's {processes} processes ended without a result; see their output in "
                            f"{folder}", where=str(folder / "rank-0.log"))
    return result


def _stop(proc: subprocess.Popen) -> None:
    """torchrun and its processes (one session): SIGTERM (torchrun passes it on), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class _Events:
    """Reads rank 0's events file as it grows; each whole line is an event for trainer.LISTENERS."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def forward(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].splitlines():
            if line.strip():
                event = json.loads(line)
                for listener in list(trainer.LISTENERS):
                    listener(event)


def _failure(phase: str, folder: Path, processes: int, code: int) -> LabcycleError:
    """The error a process stopped with (rank 0's first), else one naming the process that failed first."""
    errors = sorted(folder.glob("error-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if errors:
        error = json.loads(errors[0].read_text(encoding="utf-8"))
        return LabcycleError(error["message"], where=error.get("where"), transient=bool(error.get("transient")))
    launcher = _read(folder / "launcher.log")
    rank, exit_code = _first_failure(launcher)
    if rank is None:
        rank = 0
    log = folder / f"rank-{rank}.log"
    tail = _last_lines(_read(log)) or _last_lines(launcher)
    signals = {-9: " (SIGKILL: killed, e.g. out of memory)", -15: " (SIGTERM: stopped)"}
    how = f"exit code {exit_code}{signals.get(exit_code, '')}" if exit_code is not None else f"torchrun exit code {code}"
    return LabcycleError(f"the {phase} phase's process {rank} of {processes} (data-parallel, tuning.processes) failed "
                         f"with {how}; its last output: {tail or '(none)'}; the checkpoints saved so far stay: run the same "
                         "command again to resume from the last complete one", where=str(log))


_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def _first_failure(launcher: str) -> tuple[int | None, int | None]:
    """(rank, exit code) of the first process that failed, from torchrun's summary."""
    found = _ROOT_CAUSE.search(launcher)
    return (int(found.group(1)), int(found.group(2))) if found else (None, None)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _last_lines(text: str, n: int = 4, limit: int = 600) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-limit:]


# --- one process ------------------------------------------------------------------------------------------------

class _EventWriter:
    """Rank 0's listener: each event one JSON line in the events file, written whole."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")

    def __call__(self, event: dict[str, Any]) -> None:
        self.file.write(json.dumps(event, default=str) + "\n")
        self.file.flush()


def _orphaned(launcher: int, every_s: float = 2.0) -> None:
    """Ends this process once the launching process is gone (killed with SIGKILL: it could not stop torchrun),
    so no orphaned phase keeps training beside the rerun that resumes it."""
    while True:
        time.sleep(every_s)
        try:
            os.kill(launcher, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    folder = Path(job["work_dir"]) / FOLDER
    if "WORLD_SIZE" in os.environ:  # under torchrun: this process's output to its own log
        log = open(folder / f"rank-{rank}.log", "ab", buffering=0)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    (folder / f"rank-{rank}.pid").write_text(str(os.getpid()), encoding="utf-8")
    if gpu_count():
        import torch

        torch.cuda.set_device(local_rank)  # before loading: a 4-bit base loads onto this process's GPU
    if job.get("launcher_pid"):
        threading.Thread(target=_orphaned, args=(job["launcher_pid"],), daemon=True).start()
    if rank == 0:
        trainer.LISTENERS.append(_EventWriter(folder / EVENTS))
    try:
        trainer.train_phase(job["phase"], Path(job["base_model"]), Path(job["data"]), Path(job["work_dir"]),
                            from_mapping(job["settings"]),
                            init_adapter=Path(job["init_adapter"]) if job["init_adapter"] else None, lineage=job["lineage"])
    except LabcycleError as exc:
        write_json(folder / f"error-{rank}.json", {"message": exc.message, "where": exc.where, "transient": exc.transient})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
