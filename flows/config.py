"""labcycle's run configuration: a YAML file checked against schemas/config.schema.json, then typed.

Each stage owns the type of its own section (tasks/<stage>/settings.py; the teacher's, which generation
and the evaluation's judge share: labcycle/teacher/settings.py); this module puts them together, with the
sections only the flows read (the student, the recipe and policy files, remote execution). The flows
parse it once per run and hand each stage its part. Unset keys take the defaults; a bad key or value is
reported with the file, line and the fix, before any work starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from labcycle.errors import LabcycleError
from labcycle.io import digest_json
from labcycle.tasks.evaluate import settings as evaluate_settings
from labcycle.tasks.evaluate.settings import EvaluationConfig
from labcycle.tasks.generate import settings as generate_settings
from labcycle.tasks.generate.settings import GenerationConfig
from labcycle.tasks.taxonomy.discover import DEFAULT_FOLDERS
from labcycle.tasks.taxonomy.settings import ChunkingConfig, DocumentsConfig, TaxonomyConfig
from labcycle.tasks.tune import settings as tune_settings
from labcycle.tasks.tune.settings import TuneSettings


@dataclass(frozen=True)
class StudentConfig:
    model: str | None = None  # the base model to tune: a local Hugging Face model folder


@dataclass(frozen=True)
class MixingConfig:
    recipe: str | None = None  # a mixing recipe; None: the built-in defaults


@dataclass(frozen=True)
class GateConfig:
    policy: str | None = None  # a gate policy; None: the built-in defaults


@dataclass(frozen=True)
class RemoteConfig:
    """Stages run through Prefect deployments (flows/remote.py), exchanging data through shared storage."""

    storage: str | None = None  # an fsspec URL or a local path, reached by this machine and the GPU workers
    deployments: dict[str, str] = field(default_factory=dict)  # stage -> "flow/deployment"; unlisted: in-process
    timeout_s: float | None = None  # how long lab_cycle waits for a remote stage; None: no limit
    leaf_groups: int = 1  # generate's leaves split over this many runs of its deployment (flows/remote.py)


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

    def with_teacher(self, endpoint: str | None, model: str | None, max_concurrency: int | None) -> Config:
        """The command line's (or a run's) teacher settings over generation.teacher, which the evaluation's
        judge shares; None keeps the config's."""
        given = {"endpoint": endpoint, "model": model, "max_concurrency": max_concurrency}
        if endpoint:
            given["endpoints"] = None  # the run's endpoint(s) replace the config's list
        teacher = replace(self.generation.teacher, **{k: v for k, v in given.items() if v is not None or k == "endpoints"})
        return replace(self, generation=replace(self.generation, teacher=teacher))

    def digest(self) -> str:
        # Where stages run changes no result: remote settings stay out of the digest.
        data = {k: v for k, v in self.to_json().items() if k != "remote"}
        return hashlib.sha256(digest_json(data).encode()).hexdigest()[:16]


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
        generation=generate_settings.from_mapping(data.get("generation", {})),
        student=StudentConfig(**data.get("student", {})),
        mixing=MixingConfig(**data.get("mixing", {})),
        tuning=tune_settings.from_mapping(data.get("tuning", {})),
        evaluation=evaluate_settings.from_mapping(data.get("evaluation", {})),
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
    groups = data.get("leaf_groups", 1)
    if groups > 1 and "generate" not in deployments:
        where = f"{source}:{':'.join(map(str, locate(('remote', 'leaf_groups'))))}" if locate else source
        raise LabcycleError("remote.leaf_groups splits generation over runs of the generate deployment: set "
                            "remote.deployments.generate too, or remove leaf_groups", where=where)
    return RemoteConfig(storage=data.get("storage"), deployments=deployments, timeout_s=data.get("timeout_s"),
                        leaf_groups=groups)


def load(path: str | Path | None) -> Config:
    """The config in `path`, or the defaults when no path is given."""
    if path is None:
        return Config()
    from labcycle.yaml_reader import read_settings_file

    parsed = read_settings_file(Path(path), missing="config file not found; pass an existing YAML file to --config",
                                what="config", keys="taxonomy:, generation:, tuning: ...")
    return from_mapping(parsed.data or {}, source=str(path), locate=parsed.where)


def settings(config: Config | str | Path | None) -> Config:
    """A stage flow's `config` parameter, typed: the Config lab_cycle parsed once and handed down, or a
    labcycle.yaml when the stage runs on its own (the CLI, its deployment started from the UI)."""
    return config if isinstance(config, Config) else load(config)
