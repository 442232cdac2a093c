"""Data-parallel tuning (tuning.processes) on the CPU: 2 processes with the gloo backend on the tiny student,
checked against one process on the same data and settings: the same samples a step, the same loss curve,
and a phase whose process is killed resumes from its last complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from labcycle.errors import LabcycleError
from labcycle.tasks.tune import data as tune_data
from labcycle.tasks.tune import distributed, trainer
from labcycle.tasks.tune.settings import LoraSettings, PhaseSettings, TuneSettings, from_mapping

# 16 samples, 8 a step (4 a micro-batch x 2 accumulated on one process; 4 x 1 on each of two): 2 steps an epoch.
# Unpacked, so that a micro-batch is the same samples on one process and on two.
STEPS, SAVE = 24, 4
PHASE = PhaseSettings(max_steps=STEPS, learning_rate=5e-3, batch_size=4, gradient_accumulation=2, save_steps=SAVE,
                      logging_steps=1, max_length=256, warmup_ratio=0.0, lr_scheduler="constant", packing=False,
                      keep_checkpoints=2)
# Losses per step agree to this between one process and two, and between a killed-and-resumed run and an
# uninterrupted one. The first steps agree to 1e-4 (a micro-batch and its gradient are the same; DDP's mean of
# the two processes' gradients is the accumulated one), then bf16 rounding in other orders of summation (another
# thread count, gloo's all-reduce) drifts: at most 0.018 on losses of 7 to 2.9 over 24 steps, 0.021 at the
# resumed run's last step, in the runs measured on a 2-core machine.
TOLERANCE = 0.05


def _settings(processes: int | str) -> TuneSettings:
    return TuneSettings(lora=LoraSettings(r=8, alpha=16, dropout=0.0), knowledge=PHASE, skills=PHASE, processes=processes)


def _history(result: dict) -> list[dict]:
    return [h for h in json.loads((Path(result["work_dir"]) / "log_history.json").read_text()) if "loss" in h]


def _tokens_a_step(history: list[dict], resumed_from: int | None = None) -> list[float]:
    """The tokens each step trained on, from TRL's running count (which restarts at 0 on a resume: the
    Trainer's checkpoint does not hold it)."""
    out, before = [], 0.0
    for h in history:
        if h["step"] == (resumed_from or 0) + 1:
            before = 0.0
        out.append(h["num_tokens"] - before)
        before = h["num_tokens"]
    return out


@pytest.fixture(scope="module")
def runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One QLoRA phase on one process, the same on two, and on two with a process killed then resumed."""
    folder = tmp_path_factory.mktemp("distributed")
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is item {i}?"},
                                                     {"role": "assistant", "content": f"Item {i} is thing number {i}."}]}) + "\n"
                            for i in range(16)))
    out: dict = {"data": data}
    out["single"] = trainer.train_phase("knowledge", tiny_model, data, folder / "single", _settings(1))
    events: list[dict] = []
    trainer.LISTENERS.append(events.append)
    try:
        out["two"] = distributed.run_phase("knowledge", tiny_model, data, folder / "two", _settings(2))
    finally:
        trainer.LISTENERS.remove(events.append)
    out["events"] = events

    # Killed: process 1 gets SIGKILL once the checkpoint at step 8 is complete (the phase takes about 3 s more).
    work = folder / "killed"
    killed: dict = {}

    def kill() -> None:
        deadline = time.monotonic() + 120
        state = work / "checkpoints" / "checkpoint-8" / "trainer_state.json"
        pid = work / distributed.FOLDER / "rank-1.pid"
        while time.monotonic() < deadline:
            if state.exists() and pid.exists():
                killed["pid"] = int(pid.read_text())
                os.kill(killed["pid"], signal.SIGKILL)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        distributed.run_phase("knowledge", tiny_model, data, work, _settings(2))
    except LabcycleError as exc:
        out["kill_error"] = exc
    killer.join()
    out["killed_pid"] = killed.get("pid")
    out["after_kill"] = sorted(p.name for p in (work / "checkpoints").glob("checkpoint-*"))
    out["resumed"] = distributed.run_phase("knowledge", tiny_model, data, work, _settings(2))
    return out


def test_two_processes_see_the_same_samples_as_one(runs):
    single, two = runs["single"], runs["two"]
    assert two["processes"] == 2 and single["processes"] == 1
    assert (two["step"]["per_device"], two["step"]["accumulation"]) == (4, 1)
    assert (single["step"]["per_device"], single["step"]["accumulation"]) == (4, 2)
    assert two["step"]["samples_per_step"] == single["step"]["samples_per_step"] == 8 and two["step"]["split"] is None
    assert two["metrics"]["steps"] == single["metrics"]["steps"] == STEPS
    # num_tokens is gathered over the processes: the tokens trained on, step by step, are the same
    a, b = _history(single), _history(two)
    assert [h["step"] for h in a] == [h["step"] for h in b] == list(range(1, STEPS + 1))
    assert _tokens_a_step(a) == _tokens_a_step(b)
    assert two["metrics"]["tokens"] == single["metrics"]["tokens"]
    # the first step's loss is the untrained model's on the step's samples: the same samples give the same loss
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], abs=1e-4)


def test_two_processes_give_the_loss_curve_of_one(runs):
    a, b = _history(runs["single"]), _history(runs["two"])
    deltas = [abs(x["loss"] - y["loss"]) for x, y in zip(a, b)]
    assert max(deltas) < TOLERANCE, deltas
    assert b[-1]["loss"] < 0.8 * b[0]["loss"]  # it learned


def test_only_the_first_process_writes_and_its_progress_reaches_the_listeners(runs):
    two = runs["two"]
    work = Path(two["work_dir"])
    assert (Path(two["output"]) / "adapter_model.safetensors").exists()
    assert (Path(two["output"]) / "tokenizer_config.json").exists()
    assert (work / "model_card.md").exists() and (work / "loss.png").exists()
    assert "x 2 data-parallel processes" in (work / "model_card.md").read_text()
    steps = [e["step"] for e in runs["events"] if e.get("loss") is not None]
    assert steps == list(range(1, STEPS + 1))  # once each: rank 0's events only
    assert {e["phase"] for e in runs["events"]} == {"knowledge"}


def test_a_killed_process_fails_the_phase_clearly_and_it_resumes(runs):
    assert runs["killed_pid"], "the killer found no checkpoint-8 in time"
    error = runs["kill_error"]
    assert "process 1 of 2" in error.message and "SIGKILL" in error.message, error.message
    assert "resume" in error.message and "Traceback" not in error.message
    assert error.where.endswith("rank-1.log")
    assert "checkpoint-8" in runs["after_kill"]

    resumed = runs["resumed"]
    assert resumed["resumed_from_step"] >= 8
    assert resumed["metrics"]["steps"] == STEPS
    a, b = _history(runs["two"]), _history(resumed)
    assert [h["step"] for h in b] == [h["step"] for h in a]  # the history before the kill was restored
    assert _tokens_a_step(b, resumed["resumed_from_step"]) == _tokens_a_step(a)  # the same samples, step by step
    assert resumed["metrics"]["final_loss"] == pytest.approx(runs["two"]["metrics"]["final_loss"], abs=TOLERANCE)
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) < TOLERANCE


def test_a_process_error_is_the_phase_error(tiny_model, tmp_path):
    """A LabcycleError in a process reaches the launcher's caller as is, not as a traceback of torchrun's: the
    process entry (run here in-process, as rank 0) hands it over in a file that _failure raises."""
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Long?"},
                                             {"role": "assistant", "content": "word " * 400}]}) + "\n")
    s = TuneSettings(knowledge=PhaseSettings(max_steps=2, max_length=32), processes=2)
    folder = tmp_path / "work" / distributed.FOLDER
    folder.mkdir(parents=True)
    job = {"phase": "knowledge", "base_model": str(tiny_model), "data": str(data), "work_dir": str(tmp_path / "work"),
           "settings": s.to_json(), "init_adapter": None, "lineage": {}}
    (folder / "job.json").write_text(json.dumps(job))
    assert distributed.main([str(folder / "job.json")]) == 1
    (folder / "launcher.log").write_text("torchrun: a worker failed\n")
    error = distributed._failure("knowledge", folder, 2, 1)
    assert "longer than tuning.knowledge.max_length" in error.message and error.where == str(data)
    # without an error file: the process, its exit code and its last lines
    (folder / "error-0.json").unlink()
    (folder / "rank-0.log").write_text("loading\nTraceback (most recent call last):\nRuntimeError: boom\n")
    error = distributed._failure("knowledge", folder, 2, 1)
    assert error.message.startswith("the knowledge phase's process 0 of 2 (data-parallel, tuning.processes) failed with "
                                    "torchrun exit code 1; its last output: loading | Traceback") and "RuntimeError: boom" in error.message


# --- without launching ---------------------------------------------------------------------------------------------

def test_processes_setting():
    assert distributed.resolve_processes("auto", 0) == 1
    assert distributed.resolve_processes("auto", 1) == 1
    assert distributed.resolve_processes("auto", 4) == 4
    assert distributed.resolve_processes(2, 0) == 2  # a CPU: gloo
    assert distributed.resolve_processes(2, 4) == 2
    with pytest.raises(LabcycleError, match="has 2 GPUs"):
        distributed.resolve_processes(4, 2)
    with pytest.raises(LabcycleError, match="at least 1"):
        distributed.resolve_processes(0, 0)
    # how, not what: the phase's cache key does not change with the processes
    assert _settings(1).digest_for("knowledge") == _settings(2).digest_for("knowledge") == _settings("auto").digest_for("knowledge")
    assert from_mapping({"processes": 3}).processes == 3 and from_mapping({}).processes == "auto"


def test_the_config_schema_takes_processes(tmp_path):
    from labcycle.flows import config

    f = tmp_path / "labcycle.yaml"
    f.write_text("tuning:\n  processes: 2\n")
    assert config.load(f).tuning.processes == 2
    for bad in ("0", "two"):
        f.write_text(f"tuning:\n  processes: {bad}\n")
        with pytest.raises(LabcycleError, match="processes"):
            config.load(f)


def test_a_step_split_over_processes():
    split = tune_data.split_over_processes
    plain = {"per_device": 4, "accumulation": 2, "packing": False, "micro_batches": 4, "samples_per_step": 8,
             "samples_per_row": 1.0}
    assert split(plain, 2) == ({**plain, "accumulation": 1}, None)
    # the accumulation does not divide, the micro-batch does: 4 x 1 becomes 2 x 1 on each of two
    assert split({**plain, "accumulation": 1, "samples_per_step": 4}, 2)[0] == \
        {**plain, "per_device": 2, "accumulation": 1, "samples_per_step": 4}
    assert split({**plain, "accumulation": 3, "samples_per_step": 12}, 2)[0] == \
        {**plain, "per_device": 3, "accumulation": 2, "samples_per_step": 12}
    # packed rows do not split: 3 rows a step on 2 processes take 2 rows each, and the phase says so
    packed = {"per_device": 1, "accumulation": 3, "packing": True, "micro_batches": 30, "samples_per_step": 30,
              "samples_per_row": 10.0}
    shape, line = split(packed, 2)
    assert shape["accumulation"] == 2 and shape["samples_per_step"] == 40
    assert "do not split evenly over 2 processes" in line and "40 samples instead of 30" in line
    # plan_steps: the steps of an epoch-based phase are counted per process
    p = PhaseSettings(epochs=2, batch_size=2, gradient_accumulation=2, logging_steps=1)
    one, two = tune_data.plan_steps(p, [10] * 400, packing=False), tune_data.plan_steps(p, [10] * 400, packing=False, processes=2)
    assert one["steps"] == two["steps"] == 200 and two["processes"] == 2 and two["accumulation"] == 1


def test_torchrun_failure_summary_is_read():
    summary = """[ERROR] failed (exitcode: -9) local_rank: 1 (pid: 12) of binary: python
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-04_10:14:53
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 12)
"""
    assert distributed._first_failure(summary) == (1, -9)
    assert distributed._first_failure("nothing") == (None, None)


def test_a_remote_tune_run_asks_for_the_gpus_it_trains_on(tmp_path, monkeypatch):
    import prefect.deployments

    from labcycle.flows import config, remote

    assert distributed.job_variables(4) == {"gpu_count": 4}
    assert distributed.job_variables(1) is None and distributed.job_variables("auto") is None  # the deployment's own
    f = tmp_path / "labcycle.yaml"
    f.write_text("tuning:\n  processes: 2\n")
    assert distributed.job_variables(config.settings(str(f)).tuning.processes) == {"gpu_count": 2}
    calls: list[dict] = []
    monkeypatch.setattr(prefect.deployments, "run_deployment", lambda name, **kwargs: calls.append(kwargs) or "run")
    assert remote._start("tune", "tune/gpu", {}, timeout=0, job_variables={"gpu_count": 4}) == "run"
    assert calls[0]["job_variables"] == {"gpu_count": 4}
