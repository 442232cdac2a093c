"""Typed tuning settings (the `tuning:` section of labcycle.yaml, checked against schemas/config.schema.json).

Defaults are the reference LAB recipe adapted for adapters on one GPU (see ../docs/tuning.md):
- epochs as the reference (7 for knowledge, 10 for skills);
- learning rates ten times the reference's full fine-tuning rates (2e-5 and 6e-6), the usual scaling
  for LoRA, keeping the reference's ratio between the phases;
- an effective batch of 128 samples in both phases: the reference's 3,840 for skills assumes hundreds of
  thousands of samples on many GPUs, and would leave a taxonomy-sized set a handful of steps;
- the reference's LoRA shape (rank 4, alpha 32, dropout 0.1) on every linear layer.
No torch import here: the config module loads these without the heavy stack.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from labcycle.io import digest_json

PHASES = ("knowledge", "skills")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 4
    alpha: int = 32
    dropout: float = 0.1
    target_modules: str | tuple[str, ...] = "all-linear"
    use_rslora: bool = False
    init: str = "default"  # PEFT's init_lora_weights: default (= True), gaussian, pissa, olora, ...


@dataclass(frozen=True)
class QuantizationSettings:
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto: bfloat16 where the hardware has it, else float16 (GPU) / float32 (CPU)


@dataclass(frozen=True)
class PhaseSettings:
    epochs: float = 7
    max_steps: int | None = None  # overrides epochs when set
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    # batch_size x gradient_accumulation = samples per optimizer step (the effective batch, counted in
    # samples as the reference does). Packed, each micro-batch is one row and the step accumulates as many
    # rows as hold that many samples (data.step_shape).
    batch_size: int = 8
    gradient_accumulation: int = 16
    max_length: int = 4096
    # auto: padding-free best-fit-decreasing packing with a varlen attention kernel (flash-attention) and on
    # a CPU; batches of samples of similar length on a GPU without one, where a packed row would pay the
    # whole attention triangle across its samples. true / false force either (trainer.resolve_packing).
    packing: str | bool = "auto"
    save_steps: int = 50
    keep_checkpoints: int = 2
    eval_fraction: float = 0.0  # a held-out split of the data, scored every save_steps
    select: str = "last"  # last | best (lowest held-out loss; needs eval_fraction > 0)
    logging_steps: int = 5
    seed: int = 42
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: str = "auto"  # auto: paged_adamw_8bit for qlora, adamw_torch otherwise
    gradient_checkpointing: str | bool = "auto"  # auto: on with a GPU, off on CPU


KNOWLEDGE_DEFAULTS = PhaseSettings()
SKILLS_DEFAULTS = PhaseSettings(epochs=10, learning_rate=6e-5)


@dataclass(frozen=True)
class TuneSettings:
    method: str = "qlora"  # qlora | lora | full
    phase2_start: str = "continue"  # continue (the phase-1 adapter keeps training) | merge (new adapter on a merged base)
    merge: bool = False  # also write a merged full-precision model per phase
    attention: str = "auto"  # auto (flash_attention_2 on a GPU that has it, else sdpa) | sdpa | eager | flash_attention_2|3
    # Data-parallel processes a phase trains on (distributed.py): auto = every GPU of the worker when it has more
    # than one, else 1; an int > 1 on a CPU runs that many processes with the gloo backend.
    processes: int | str = "auto"
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)
    knowledge: PhaseSettings = KNOWLEDGE_DEFAULTS
    skills: PhaseSettings = SKILLS_DEFAULTS

    def phase(self, name: str) -> PhaseSettings:
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def digest_for(self, phase: str) -> str:
        """What decides one phase's result: the method, adapter shape, quantization and that phase's settings.
        The attention implementation is how, not what: the same weights come out, to rounding. So is the number of
        processes: data parallelism keeps the samples of each optimizer step (the accumulation is split over the
        processes, data.split_over_processes), and the losses agree to rounding (docs/tuning.md, "More than one
        GPU"); only a split that does not divide changes the effective batch, and the phase says so."""
        data = {k: v for k, v in self.to_json().items() if k not in (*PHASES, "attention", "processes")}
        data["phase"] = asdict(self.phase(phase))
        return hashlib.sha256(digest_json(data).encode()).hexdigest()[:16]


def from_mapping(data: dict[str, Any]) -> TuneSettings:
    """TuneSettings from an already schema-checked `tuning:` mapping."""
    lora = dict(data.get("lora", {}))
    if isinstance(lora.get("target_modules"), list):
        lora["target_modules"] = tuple(lora["target_modules"])
    rest = {k: v for k, v in data.items() if k not in ("lora", "quantization", *PHASES)}
    return TuneSettings(
        lora=LoraSettings(**lora),
        quantization=QuantizationSettings(**data.get("quantization", {})),
        knowledge=replace(KNOWLEDGE_DEFAULTS, **data.get("knowledge", {})),
        skills=replace(SKILLS_DEFAULTS, **data.get("skills", {})),
        **rest,
    )


def with_plan(settings: TuneSettings, plan: dict[str, Any] | None) -> TuneSettings:
    """The settings a later cycle trains with: its plan's epochs_add on both phases (tasks/gate/plan.py)."""
    extra = (plan or {}).get("epochs_add", 0)
    if not extra:
        return settings
    return replace(settings, **{p: replace(settings.phase(p), epochs=settings.phase(p).epochs + extra) for p in PHASES})
