"""One tuning phase with TRL's SFTTrainer: QLoRA (default), LoRA or full fine-tuning, resumable.

The work folder of a phase:

    WORK/checkpoints/checkpoint-<step>/   the Trainer's checkpoints (weights, optimizer, scheduler, RNG,
                                          trainer_state.json), the last `keep_checkpoints` kept
    WORK/adapter/                         the result: PEFT adapter (safetensors) + tokenizer; `model/` for full
    WORK/merged/                          optional: the adapter merged into a full-precision base
    WORK/log_history.json, loss.png, model_card.md
    WORK/result.json                      written last: the phase is complete and is never trained again

A run killed at any point resumes from the newest complete checkpoint: the Trainer restores the step
counter, optimizer and scheduler state and RNG, and skips the batches already seen, so the data order
is the one an uninterrupted run would have used. A checkpoint counts as complete once its
trainer_state.json (which the Trainer writes after everything else) parses; the Trainer's own
checkpoint folder can otherwise be left half-written by a kill.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from labcycle.env import datasets_bars_off
from labcycle.errors import LabcycleError
from labcycle.fingerprint import fingerprint_path
from labcycle.io import write_json
from labcycle.tasks.tune import data as tune_data
from labcycle.tasks.tune.settings import TuneSettings

RESULT = "result.json"
CHECKPOINTS = "checkpoints"

# Called as listener(event) with {phase, step, max_steps, loss, tokens_per_s, ...} on every logging step:
# the CLI draws its progress bar here.
LISTENERS: list[Callable[[dict[str, Any]], None]] = []


def read_result(work_dir: Path) -> dict[str, Any] | None:
    path = Path(work_dir) / RESULT
    if not path.exists():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    return result if Path(result["output"]).exists() else None


# --- checkpoints ----------------------------------------------------------------------------------------

def _step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def complete_checkpoints(folder: Path, remove: bool = True) -> list[Path]:
    """The folder's complete checkpoints, oldest first; half-written ones (a kill mid-save) are removed
    (remove=False: only left out, as each process of a data-parallel phase does; its launcher removed them)."""
    found = []
    for path in sorted(Path(folder).glob("checkpoint-*"), key=lambda p: _step(p) if p.name.split("-")[-1].isdigit() else -1):
        if not path.name.split("-")[-1].isdigit():
            continue
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            found.append(path)
        except (OSError, ValueError):
            if remove:
                shutil.rmtree(path, ignore_errors=True)
    return found


def world() -> tuple[int, int]:
    """(processes, this process's rank) of a data-parallel phase, from torch.distributed.run's environment;
    (1, 0) in a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


# --- the model --------------------------------------------------------------------------------------------

def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def compute_dtype(settings: TuneSettings):  # type: ignore[no-untyped-def]
    import torch

    name = settings.quantization.compute_dtype
    if name != "auto":
        return getattr(torch, name)
    if has_gpu():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16  # CPU: bf16 autocast runs on every x86_64 with AVX512 and is what the tests use


def choose_attention(setting: str, *, gpu: bool, half_precision: bool, flash_available: bool) -> str | None:
    """The attn_implementation to load the student with; None: transformers' default (sdpa).

    Packed samples share a row. A varlen flash-attention kernel computes each sample's own causal block
    only; SDPA computes the whole row and masks it (docs/benchmarks.md). flash-attn runs on CUDA in
    bf16/fp16 only, and is an optional package, so auto takes it only where all of that holds.
    """
    if setting != "auto":
        return setting
    return "flash_attention_2" if gpu and half_precision and flash_available else None


def attention_for(settings: TuneSettings) -> str | None:
    import torch
    from transformers.utils import is_flash_attn_2_available

    gpu = has_gpu()
    # Full fine-tuning loads float32 master weights (load_student), which flash-attn does not take.
    half = settings.method != "full" and compute_dtype(settings) in (torch.bfloat16, torch.float16)
    return choose_attention(settings.attention, gpu=gpu, half_precision=half,
                            flash_available=gpu and is_flash_attn_2_available())


VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def resolve_packing(setting: str | bool, attention: str | None, *, gpu: bool) -> bool:
    """Whether a phase packs its samples: `tuning.<phase>.packing` as set, or for auto what is fastest where
    it runs (docs/tuning.md, "Packing").

    - A varlen kernel (flash-attention) computes each packed sample's own causal block: packing costs no
      extra attention and computes no padding. Packed.
    - On a CPU, SDPA with a padding mask takes its slow path: a padded batch of two long samples took 4x the
      time of the same samples one by one, a packed row of both 1.3x. On SmolLM2-135M with knowledge-phase
      lengths, packed rows trained at 2.1x plain TRL's padded batches (bench/train.py,
      docs/benchmarks.md). Packed.
    - On a GPU without flash-attention, SDPA's kernels take a padding mask at full speed, while a packed row
      pays the whole attention triangle across its samples: batches of samples of similar length (little
      padding) instead. Not yet measured (scripts/gpu_check.sh)."""
    if isinstance(setting, bool):
        return setting
    return attention in VARLEN_ATTENTION or not gpu


def load_student(base_model: Path, settings: TuneSettings, gradient_checkpointing: bool):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(settings)
    kwargs: dict[str, Any] = {"dtype": dtype}
    attention = attention_for(settings)
    if attention:
        kwargs["attn_implementation"] = attention
    if settings.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = settings.quantization
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=dtype)
        if has_gpu():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
        model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if settings.method == "full":
        kwargs["dtype"] = torch.float32  # full-precision master weights; compute runs in `dtype` under autocast
    return AutoModelForCausalLM.from_pretrained(base_model, **kwargs)


def lora_config(settings: TuneSettings):  # type: ignore[no-untyped-def]
    from peft import LoraConfig

    lora = settings.lora
    init: Any = True if lora.init == "default" else lora.init
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                      use_rslora=lora.use_rslora, init_lora_weights=init, task_type="CAUSAL_LM", bias="none")


def sft_config(phase: str, settings: TuneSettings, out: Path, *, has_eval: bool, assistant_masks: bool,
               shape: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    """SFTConfig for a phase; `shape` (data.plan_steps) sets the micro-batch, accumulation, packing and
    logging_steps that the settings and the data call for."""
    import torch
    from trl import SFTConfig

    p = settings.phase(phase)
    gpu = has_gpu()
    gc = p.gradient_checkpointing if isinstance(p.gradient_checkpointing, bool) else gpu
    optim = p.optimizer if p.optimizer != "auto" else ("paged_adamw_8bit" if settings.method == "qlora" else "adamw_torch")
    dtype = compute_dtype(settings)
    best = p.select == "best" and has_eval
    packing = shape["packing"] if shape else resolve_packing(p.packing, attention_for(settings), gpu=gpu)
    processes = world()[0]
    sharded: dict[str, Any] = {}
    if settings.method == "full" and processes > 1 and gpu:
        # Full fine-tuning on several GPUs: FSDP shards the weights, gradients and optimizer state, one
        # decoder layer a unit (the model's _no_split_modules), and gathers a full state dict to save.
        # Adapters train with DDP (a whole copy per GPU: small, and the 4-bit base does not shard). On a
        # CPU every method uses DDP: accelerate trains with DDP on CPU processes whatever fsdp says (tried with
        # gloo), and docs/tuning.md, "More than one GPU", says so.
        # FSDP2, transformers' form (fsdp=True, all in fsdp_config): full_shard is reshard_after_forward.
        sharded = {"fsdp": True,
                   "fsdp_config": {"version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                   "state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": gc}}
        gc = False  # FSDP checkpoints activations itself: the Trainer's own would all-gather once more
    return SFTConfig(
        **sharded,
        output_dir=str(out / CHECKPOINTS),
        num_train_epochs=p.epochs,
        max_steps=p.max_steps if p.max_steps is not None else -1,
        learning_rate=p.learning_rate,
        lr_scheduler_type=p.lr_scheduler,
        warmup_steps=p.warmup_ratio,  # below 1: a share of the total steps
        per_device_train_batch_size=shape["per_device"] if shape else p.batch_size,
        per_device_eval_batch_size=shape["per_device"] if shape else p.batch_size,
        gradient_accumulation_steps=shape["accumulation"] if shape else p.gradient_accumulation,
        weight_decay=p.weight_decay,
        max_grad_norm=p.max_grad_norm,
        optim=optim,
        max_length=p.max_length,
        packing=packing,
        packing_strategy="bfd",  # best-fit decreasing, padding-free: no pad token is ever computed
        # Unpacked, each micro-batch is padded to its longest sample: batches of similar lengths pad little.
        train_sampling_strategy="group_by_length" if not packing and (shape["per_device"] if shape else p.batch_size) > 1
        else "random",
        assistant_only_loss=assistant_masks,
        gradient_checkpointing=gc,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16 and gpu,
        use_cpu=not gpu,
        seed=p.seed,
        data_seed=p.seed,
        logging_steps=shape["logging_steps"] if shape else p.logging_steps,
        logging_first_step=True,  # the first loss is the untrained model's, on the first step's samples
        # A NaN or infinite step loss reaches the log (the Trainer would log the window's average of the finite
        # ones instead), where Diverged stops the phase.
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=p.save_steps,
        save_total_limit=p.keep_checkpoints,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=p.save_steps if has_eval else None,
        load_best_model_at_end=best,
        metric_for_best_model="eval_loss" if best else None,
        greater_is_better=False if best else None,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _callbacks(phase: str, started: float):  # type: ignore[no-untyped-def]
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Steps, loss and tokens/s (TRL logs the tokens seen) to every listener, on each log."""

        def __init__(self) -> None:
            self.last: tuple[float, float] | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            logs = logs or {}
            now = time.monotonic()
            tokens = logs.get("num_tokens")
            rate = None
            if tokens is not None:
                if self.last is not None and now > self.last[0] and tokens > self.last[1]:
                    rate = (tokens - self.last[1]) / (now - self.last[0])
                self.last = (now, tokens)
            event = {"phase": phase, "step": state.global_step, "max_steps": state.max_steps,
                     "loss": logs.get("loss"), "eval_loss": logs.get("eval_loss"),
                     "learning_rate": logs.get("learning_rate"), "tokens": tokens, "tokens_per_s": rate,
                     "elapsed_s": round(now - started, 1)}
            if rate is not None:
                logs["tokens_per_s"] = round(rate, 1)
            for listener in list(LISTENERS):
                listener(event)

    class LastSteps(TrainerCallback):
        """A log at the last two steps: the final loss is then the last step's own, not an average over a
        logging window that ends before the phase does (or never, when logging_steps > the steps)."""

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step >= state.max_steps - 1:
                control.should_log = True
            return control

    class Diverged(TrainerCallback):
        """Stops the phase at the first logged loss that is NaN or infinite: the weights are lost by then, and
        the adapter must never be saved, evaluated or released. A short phase logs every step (data.plan_steps)."""

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            for key, value in (logs or {}).items():
                if key.endswith("loss") and isinstance(value, float) and not math.isfinite(value):
                    raise diverged(phase, args.learning_rate, f"its {key.replace('_', ' ')} became {value} at step "
                                                              f"{state.global_step} of {state.max_steps}")

    return [Progress(), LastSteps(), Diverged()]


def diverged(phase: str, learning_rate: float, what: str) -> LabcycleError:
    return LabcycleError(f"the {phase} phase diverged: {what}, so no adapter is saved; lower "
                         f"tuning.{phase}.learning_rate (now {learning_rate:g}) or tuning.{phase}.max_grad_norm and run "
                         "again")


def non_finite_weight(model: Any) -> str | None:
    """The name of the first trained parameter holding a NaN or an infinity, else None."""
    import torch

    for name, param in model.named_parameters():
        if param.requires_grad and not bool(torch.isfinite(param).all()):
            return name
    return None


def _notice(phase: str, text: str, max_steps: int) -> None:
    """A warning before training starts: to the listeners (the tune task writes it to the Prefect run's log,
    which the CLI shows), or to this process's log when nobody listens (it would show twice in the CLI)."""
    if not LISTENERS:
        logging.getLogger(__name__).warning("%s: %s", phase, text)
    for listener in list(LISTENERS):
        listener({"phase": phase, "step": 0, "max_steps": max_steps, "notice": text})


# --- the phase ----------------------------------------------------------------------------------------------

def train_phase(phase: str, base_model: Path, data: Path, work_dir: Path, settings: TuneSettings, *,
                init_adapter: Path | None = None, lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one phase into work_dir (resuming from its checkpoints); returns the result.json content.

    init_adapter: an adapter to keep training (phase 2 after phase 1, continue mode); else a new one.
    lineage: what the model card records about where the data came from (taxonomy commit, leaves).
    """
    from labcycle.tasks.tune import card

    work_dir = Path(work_dir)
    done = read_result(work_dir)
    if done is not None:
        return done
    started = time.monotonic()
    p = settings.phase(phase)
    if p.select == "best" and p.eval_fraction <= 0:
        raise LabcycleError(f"tuning.{phase}.select is best, which needs a held-out split: set "
                            f"tuning.{phase}.eval_fraction (e.g. 0.05) or select: last")
    rows = tune_data.load_rows(Path(data))
    if not rows:
        raise LabcycleError(f"the {phase} data has no samples; check the mix stage's dataset card, or skip this phase",
                            where=str(data))

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    check_model_dir(base_model)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    rows, lengths, too_long = tune_data.drop_too_long(rows, tokenizer, p.max_length)
    if not rows:
        raise LabcycleError(f"every {phase} sample is longer than tuning.{phase}.max_length ({p.max_length} tokens); "
                            f"raise it, or shorten the samples (e.g. fewer documents_in_context in the mixing recipe)",
                            where=str(data))
    if too_long:
        logging.getLogger(__name__).warning("%s: left out %d samples longer than max_length %d tokens (their answers "
                                            "would be cut off)", phase, too_long, p.max_length)
    masks = tune_data.uses_assistant_masks(tokenizer)
    unmasked = sum(1 for r in rows if r.get("unmask"))
    if unmasked:
        rows = tune_data.tokenize_rows(rows, tokenizer, masks)
    elif not masks:
        rows = [tune_data.to_prompt_completion(r) for r in rows]
    train_rows, eval_rows = tune_data.split_rows(rows, p.eval_fraction, p.seed)
    # split_rows picks by position and seed alone, so this is the same split: the training samples' lengths.
    train_lengths, _ = tune_data.split_rows(lengths, p.eval_fraction, p.seed)
    # Derived from the data and the settings alone, so the phase's cache key (stage.cache_key) covers it,
    # and a resumed run gets the same shape.
    attention = attention_for(settings)
    processes, rank = world()
    shape = tune_data.plan_steps(p, train_lengths, packing=resolve_packing(p.packing, attention, gpu=has_gpu()),
                                 processes=processes)
    if shape["adapted"]:
        _notice(phase, shape["adapted"], shape["steps"])
    if shape["split"]:
        _notice(phase, shape["split"], shape["steps"])
    args = sft_config(phase, settings, work_dir, has_eval=bool(eval_rows), assistant_masks=masks and not unmasked,
                      shape=shape)
    torch.manual_seed(p.seed)
    model = load_student(base_model, settings, args.gradient_checkpointing)
    peft_config = None
    if settings.method != "full":
        if init_adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        else:
            peft_config = lora_config(settings)
    with datasets_bars_off():  # tokenizing and packing: the listeners report progress
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                             eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                             processing_class=tokenizer, peft_config=peft_config, callbacks=_callbacks(phase, started))
    # The Trainer prints every log dict to stdout when tqdm is off; progress goes to the listeners instead.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    checkpoints = complete_checkpoints(work_dir / CHECKPOINTS, remove=processes == 1)
    resumed_from = checkpoints[-1] if checkpoints else None
    name = "model" if settings.method == "full" else "adapter"
    final = work_dir / name
    with resource_faults(phase, work_dir):
        output = trainer.train(resume_from_checkpoint=str(resumed_from) if resumed_from else None)
        # A last step can turn the weights non-finite after a finite loss, with no step left to log it.
        bad = non_finite_weight(trainer.model)
        if bad:
            raise diverged(phase, args.learning_rate, f"its weight {bad} is not finite after step {trainer.state.global_step}")
        if processes == 1:
            _save_atomic(final, lambda tmp: (trainer.save_model(str(tmp)), tokenizer.save_pretrained(str(tmp))))
        else:
            _save_distributed(trainer, tokenizer, final, rank == 0)
    if rank != 0:
        return {"phase": phase, "rank": rank}  # the first process writes the results; the launcher reads them
    history = trainer.state.log_history
    write_json(work_dir / "log_history.json", history)
    merged = None
    if settings.merge and settings.method != "full":
        merged = merge_adapter(base_model, final, work_dir / "merged")
    metrics = _metrics(history, output.metrics, trainer, p.select if eval_rows else "last")
    result = {
        "phase": phase,
        "method": settings.method,
        "output": str(final),
        "merged": str(merged) if merged else None,
        "base_model": str(base_model),
        "init_adapter": str(init_adapter) if init_adapter else None,
        "data": str(data),
        "data_fingerprint": fingerprint_path(Path(data)),
        "samples": {"train": len(train_rows), "held_out": len(eval_rows), "too_long": too_long, "unmask": unmasked},
        "step": shape,
        "attention": getattr(getattr(trainer.model, "config", None), "_attn_implementation", None),
        "processes": processes,
        "loss_on": ("assistant turns" if masks else "the last assistant turn (prompt/completion)")
        + (f"; every token of the {unmasked} samples marked unmask" if unmasked else ""),
        "resumed_from_step": _step(resumed_from) if resumed_from else None,
        "metrics": metrics,
        "settings": {k: v for k, v in settings.to_json().items() if k not in ("knowledge", "skills")} | {phase: settings.to_json()[phase]},
        "lineage": lineage or {},
        "work_dir": str(work_dir),
    }
    card.write_loss_plot(history, work_dir / "loss.png", title=f"{phase} phase")
    card.write_model_card(result, work_dir / "model_card.md")
    for folder in (final, merged):
        if folder is not None:
            shutil.copyfile(work_dir / "model_card.md", folder / "README.md")
    write_json(work_dir / RESULT, result)
    return result


def _disk_full(exc: BaseException) -> bool:
    # torch.save and safetensors report a full disk as RuntimeError/SafetensorError text, not as OSError ENOSPC
    text = str(exc)
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or any(
        s in text for s in ("No space left on device", "os error 28", "StorageFull", "file write failed"))


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


@contextlib.contextmanager
def resource_faults(phase: str, work_dir: Path) -> Iterator[None]:
    """A full disk or an exhausted GPU while training: one clear line on what to change. The checkpoints
    already saved stay, and the same command resumes from the last complete one."""
    try:
        yield
    except Exception as exc:
        again = "then run the same command again: it resumes from the last complete checkpoint"
        if _disk_full(exc):
            free = shutil.disk_usage(work_dir).free / 2**30
            raise LabcycleError(f"the disk filled up while the {phase} phase was writing ({free:.1f} GiB free now): "
                                f"free some space, or keep fewer checkpoints (tuning.{phase}.keep_checkpoints); {again}",
                                where=str(work_dir)) from exc
        if _out_of_memory(exc):
            raise LabcycleError(f"out of GPU memory in the {phase} phase: lower tuning.{phase}.max_length or "
                                f"tuning.{phase}.batch_size (raising gradient_accumulation keeps the effective batch), "
                                f"set tuning.{phase}.gradient_checkpointing: true, or tune with tuning.method: qlora; {again}",
                                where=str(work_dir)) from exc
        if isinstance(exc, RuntimeError) and "without overflow" in str(exc):
            # e.g. bitsandbytes' 8-bit AdamW with a learning rate beyond float32 (about 3e38 after bias correction)
            raise LabcycleError(f"the {phase} phase's optimizer overflowed its 32-bit arithmetic ({exc}): lower "
                                f"tuning.{phase}.learning_rate (and weight_decay) to values a float32 holds",
                                where=str(work_dir)) from exc
        raise


def check_model_dir(base_model: Path) -> None:
    from labcycle.models import model_folder_problem

    problem = model_folder_problem(base_model)
    if problem:
        raise LabcycleError(problem, where=str(base_model))


def _save_atomic(dest: Path, write: Callable[[Path], Any]) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _save_distributed(trainer: Any, tokenizer: Any, dest: Path, first: bool) -> None:
    """_save_atomic across data-parallel processes: every process calls save_model (FSDP gathers the shards
    in it), the first writes and moves the folder into place."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    if first:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if first:
        tokenizer.save_pretrained(str(tmp))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)


def _metrics(history: list[dict[str, Any]], train_metrics: dict[str, Any], trainer: Any, select: str) -> dict[str, Any]:
    """first_loss is the first step's (logged on its own, before any update); final_loss the last step's
    (LastSteps). Their steps say which; in a one-step phase they are the same log, and no trend."""
    losses = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    best = trainer.state.best_model_checkpoint
    return {
        "steps": trainer.state.global_step,
        "first_loss": losses[0]["loss"] if losses else None,
        "final_loss": losses[-1]["loss"] if losses else None,
        "first_loss_step": losses[0]["step"] if losses else None,
        "final_loss_step": losses[-1]["step"] if losses else None,
        "train_loss": train_metrics.get("train_loss"),
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "best_eval_loss": trainer.state.best_metric if select == "best" else None,
        "selected": f"best ({Path(best).name})" if select == "best" and best else "last",
        "tokens": next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), None),
        "runtime_s": train_metrics.get("train_runtime"),
    }


def merge_adapter(base_model: Path, adapter: Path, dest: Path) -> Path:
    """The adapter merged into a full-precision copy of the base (never the 4-bit one: requantizing the
    merged weights moves logits far more than the adapter's own error), saved with the tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").exists() else base_model)
    _save_atomic(dest, lambda tmp: (merged.save_pretrained(str(tmp), safe_serialization=True), tokenizer.save_pretrained(str(tmp))))
    return dest
