"""labcycle's run configuration: a YAML file checked against schemas/config.schema.json, then typed.

Unset keys take the defaults below; a bad key or value is reported with the file, line and the fix,
before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from labcycle.errors import LabcycleError
from labcycle.tasks.tune import settings as tune_settings
from labcycle.tasks.tune.settings import TuneSettings
from labcycle.tasks.taxonomy.discover import DEFAULT_FOLDERS


@dataclass(frozen=True)
class TaxonomyConfig:
    folders: tuple[str, ...] = DEFAULT_FOLDERS
    strict: bool = False


@dataclass(frozen=True)
class DocumentsConfig:
    cache_dir: str | None = None
    max_bytes: int = 20 * 1024 * 1024  # a knowledge document larger than this is refused (tasks/taxonomy/documents.py)


@dataclass(frozen=True)
class ChunkingConfig:
    tokenizer: str | None = None
    max_words: int = 1000
    overlap_words: int = 100
    max_tokens: int = 500
    overlap_tokens: int = 50

    @property
    def bound(self) -> tuple[int, int]:
        """(max size, overlap) in the unit the chunker counts: tokens with a tokenizer, else words."""
        return (self.max_tokens, self.overlap_tokens) if self.tokenizer else (self.max_words, self.overlap_words)


@dataclass(frozen=True)
class TeacherConfig:
    endpoint: str | None = None
    model: str | None = None
    max_concurrency: int = 32
    structured_mode: str = "vllm"
    max_model_len: int = 4096
    api_key_secret: str | None = None  # a Prefect Secret block's name


@dataclass(frozen=True)
class GenerationConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    samples_per_seed: int = 30
    max_rounds: int = 3
    max_units_per_round: int = 64
    max_tokens_cap: int | None = None
    pipelines: dict[str, str] = field(default_factory=dict)
    leaves: dict[str, dict[str, int]] = field(default_factory=dict)

    def settings_for(self, leaf_id: str, plan: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
        """A leaf's settings; `plan` is a later cycle's Plan (tasks/gate.py) as JSON."""
        import math

        from labcycle.tasks.generate.runner import GenerationSettings

        plan = plan or {}
        per_leaf = self.leaves.get(leaf_id, {})
        samples = per_leaf.get("samples_per_seed", self.samples_per_seed)
        factor = plan.get("samples_per_seed_factor", 1.0)
        return GenerationSettings(samples_per_seed=samples if factor == 1 else math.ceil(samples * factor),
                                  max_rounds=self.max_rounds, max_units_per_round=self.max_units_per_round,
                                  max_tokens_cap=self.max_tokens_cap, seed_offset=plan.get("sampling_seed_offset", 0),
                                  judge_strictness=plan.get("judge_strictness", 0))


@dataclass(frozen=True)
class StudentConfig:
    model: str | None = None  # the base model to tune: a local Hugging Face model folder


@dataclass(frozen=True)
class MixingConfig:
    recipe: str | None = None  # a mixing recipe; None: the built-in defaults


@dataclass(frozen=True)
class SafetyConfig:
    enabled: bool = True  # base and candidate answer a safety suite; the gate's safety rules read it
    suite: str | None = None  # a safety suite JSONL (schemas/safety-suite.schema.json); None: the shipped one
    judge: bool = True  # the evaluation's judge labels the answers; False (or no judge): refusal phrases only


@dataclass(frozen=True)
class RegressionConfig:
    backend: Literal["labcycle", "lm-eval"] = "labcycle"  # lm-eval: lm-evaluation-harness (labcycle[lmeval])


@dataclass(frozen=True)
class EvaluationConfig:
    endpoint: str | None = None  # a vLLM server on the student's base with runtime LoRA loading; None: start one
    served_base: str | None = None
    judge: bool = True
    suites: tuple[str, ...] | None = None  # None: the shipped general suites
    max_tokens: int = 256
    judge_max_tokens: int = 256
    concurrency: int = 8
    held_out_per_leaf: int | None = 10
    max_items: int | None = None
    max_model_len: int = 4096
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    knowledge_mc: bool = False  # the knowledge leaves' seed questions as multiple choice, scored by log-likelihood
    safety: SafetyConfig = field(default_factory=SafetyConfig)


@dataclass(frozen=True)
class GateConfig:
    policy: str | None = None  # a gate policy; None: the built-in defaults


@dataclass(frozen=True)
class RemoteConfig:
    """Stages run through Prefect deployments (flows/remote.py), exchanging data through shared storage."""

    storage: str | None = None  # an fsspec URL or a local path, reached by this machine and the GPU workers
    deployments: dict[str, str] = field(default_factory=dict)  # stage -> "flow/deployment"; unlisted: in-process
    timeout_s: float | None = None  # how long lab_cycle waits for a remote stage; None: no limit


@dataclass(frozen=True)
class Config:
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    documents: DocumentsConfig = field(default_factory=DocumentsConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    tuning: TuneSettings = field(default_factory=TuneSettings)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        # Where stages run changes no result: remote settings stay out of the digest.
        data = {k: v for k, v in self.to_json().items() if k != "remote"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def from_mapping(data: Any, source: str = "config", locate: Callable[[tuple], tuple[int, int]] | None = None) -> Config:
    """A typed Config from parsed YAML; `locate` maps a key path to (line, column) for messages."""
    from labcycle.schemas import check

    check(data, "config.schema.json", source, locate)
    tax = data.get("taxonomy", {})
    chunk = data.get("chunking", {})
    cfg = Config(
        taxonomy=TaxonomyConfig(folders=tuple(tax.get("folders", DEFAULT_FOLDERS)), strict=tax.get("strict", False)),
        documents=DocumentsConfig(**data.get("documents", {})),
        chunking=ChunkingConfig(**chunk),
        generation=_generation(data.get("generation", {})),
        student=StudentConfig(**data.get("student", {})),
        mixing=MixingConfig(**data.get("mixing", {})),
        tuning=tune_settings.from_mapping(data.get("tuning", {})),
        evaluation=_evaluation(data.get("evaluation", {})),
        gate=GateConfig(**data.get("gate", {})),
        remote=_remote(data.get("remote", {}), source, locate),
    )
    for phase in tune_settings.PHASES:
        p = cfg.tuning.phase(phase)
        if p.select == "best" and p.eval_fraction <= 0:
            raise LabcycleError(f"tuning.{phase}.select: best needs a held-out split: set tuning.{phase}.eval_fraction "
                                "(e.g. 0.05), or select: last", where=source)
    for max_key, overlap_key in (("max_words", "overlap_words"), ("max_tokens", "overlap_tokens")):
        if getattr(cfg.chunking, overlap_key) >= getattr(cfg.chunking, max_key):
            raise LabcycleError(f"chunking.{overlap_key} must be smaller than chunking.{max_key}", where=source)
    return cfg


def _remote(data: dict[str, Any], source: str, locate: Callable[[tuple], tuple[int, int]] | None) -> RemoteConfig:
    deployments = {stage: name for stage, name in (data.get("deployments") or {}).items() if name}
    if deployments and not data.get("storage"):
        stage = next(iter(deployments))
        where = f"{source}:{':'.join(map(str, locate(('remote', 'deployments', stage))))}" if locate else source
        raise LabcycleError(f"remote.deployments.{stage}: a remote stage exchanges its data through shared storage: set "
                            "remote.storage (an fsspec URL such as s3://bucket/labcycle, or a folder the GPU workers "
                            "share), or remove the deployment to run the stage in-process", where=where)
    return RemoteConfig(storage=data.get("storage"), deployments=deployments, timeout_s=data.get("timeout_s"))


def _evaluation(data: dict[str, Any]) -> EvaluationConfig:
    suites = data.get("suites")
    regression = RegressionConfig(**(data.get("regression") or {}))
    if regression.backend == "lm-eval":
        from labcycle.tasks.evaluate.lmeval import require

        require()  # not installed: said now, not after the servers started
    return EvaluationConfig(**{**data, "suites": tuple(suites) if suites is not None else None,
                               "regression": regression, "safety": SafetyConfig(**(data.get("safety") or {}))})


def _generation(data: dict[str, Any]) -> GenerationConfig:
    rest = {k: v for k, v in data.items() if k != "teacher"}
    return GenerationConfig(teacher=TeacherConfig(**data.get("teacher", {})), **rest)


def load(path: str | Path | None) -> Config:
    """The config in `path`, or the defaults when no path is given."""
    if path is None:
        return Config()
    from labcycle.yaml_reader import read_settings_file

    parsed = read_settings_file(Path(path), missing="config file not found; pass an existing YAML file to --config",
                                what="config", keys="taxonomy:, generation:, tuning: ...")
    return from_mapping(parsed.data or {}, source=str(path), locate=parsed.where)
