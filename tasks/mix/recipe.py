"""The mixing recipe: a YAML file checked against schemas/recipe.schema.json, then typed.

Unset keys take the defaults below; a bad key or value is reported with the file, line and the fix,
before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from labcycle.errors import LabcycleError

PHASES = ("knowledge", "skills")
# The system prompt instructlab-sdg (0.8) puts first in every mixed sample unless told otherwise: it names a
# Red Hat/Granite model, so labcycle does not default to it (see Recipe.system_prompt).
INSTRUCTLAB_SYSTEM_PROMPT = ("I am a Red Hat\u00ae Instruct Model, an AI language model developed by Red Hat and IBM "
                             "Research based on the granite-3.0-8b-base model. My primary role is to serve as a chat "
                             "assistant.")
BUILTIN_SOURCES = {"knowledge": ("knowledge_qa", "knowledge_grounded"), "skills": ("skills", "replay")}


@dataclass(frozen=True)
class Grounded:
    enabled: bool = True
    documents_in_context: int = 4
    source_probability: float = 0.4


@dataclass(frozen=True)
class KnowledgeMix:
    qa: bool = True
    # The Q&A samples (not their grounded copies) carry loss on every token, the question as well as the
    # answer, as InstructLab marks its phase-1 knowledge samples (`unmask: true`).
    unmask: bool = True
    grounded: Grounded = field(default_factory=Grounded)


@dataclass(frozen=True)
class SkillsMix:
    samples_per_leaf: int | None = None
    leaves: dict[str, int | None] = field(default_factory=dict)
    replay_fraction: float = 0.1

    def size_for(self, leaf_id: str) -> int | None:
        return self.leaves[leaf_id] if leaf_id in self.leaves else self.samples_per_leaf


@dataclass(frozen=True)
class UserDataset:
    path: str
    phase: str
    weight: float = 1.0
    name: str | None = None

    @property
    def source(self) -> str:
        return self.name or Path(self.path).stem


@dataclass(frozen=True)
class HeldOut:
    per_leaf: int = 2
    max_share: float = 0.2

    def count(self, n: int) -> int:
        """How many of a leaf's n samples are held out."""
        import math

        return min(self.per_leaf, math.floor(self.max_share * n + 1e-9))


@dataclass(frozen=True)
class Recipe:
    seed: int = 42
    knowledge: KnowledgeMix = field(default_factory=KnowledgeMix)
    skills: SkillsMix = field(default_factory=SkillsMix)
    datasets: tuple[UserDataset, ...] = ()
    min_share: float = 0.03
    held_out: HeldOut = field(default_factory=HeldOut)
    tokenizer: str | None = None
    max_length: int = 4096
    # Put first in every training sample as its system turn (replacing one it has), as InstructLab's mixer does.
    # None: samples keep the turns they have. InstructLab's own text names a Red Hat/Granite model, and the
    # evaluation stage asks the candidate without a system turn, so no prompt is the default here.
    system_prompt: str | None = None
    # Also write OUTPUT/knowledge_train_msgs_<id>.jsonl and skills_train_msgs_<id>.jsonl, the files (and the
    # row shape: id, messages, metadata as JSON text, unmask) InstructLab's mixer writes and its training reads.
    instructlab_files: bool = False
    # Where relative paths resolve (the recipe file's folder): not part of the recipe's meaning or digest,
    # so the same recipe checked out elsewhere is the same recipe.
    base_dir: Path | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("base_dir")
        data["datasets"] = [asdict(d) for d in self.datasets]
        return data

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() or self.base_dir is None else self.base_dir / p


def recipe_from_mapping(data: Any, source: str = "recipe", locate: Callable[[tuple], tuple[int, int]] | None = None,
                        base_dir: Path | None = None) -> Recipe:
    """A typed Recipe from parsed YAML; `locate` maps a key path to (line, column) for messages."""
    from labcycle.schemas import check

    def where(path: tuple) -> str:
        return f"{source}:{':'.join(map(str, locate(path)))}" if locate else source

    data = {} if data is None else data
    check(data, "recipe.schema.json", source, locate)
    know, skills = data.get("knowledge", {}), data.get("skills", {})
    recipe = Recipe(
        seed=data.get("seed", 42),
        knowledge=KnowledgeMix(qa=know.get("qa", True), unmask=know.get("unmask", True),
                               grounded=Grounded(**know.get("grounded", {}))),
        skills=SkillsMix(**skills),
        datasets=tuple(UserDataset(**d) for d in data.get("datasets", [])),
        min_share=data.get("min_share", 0.03),
        held_out=HeldOut(**data.get("held_out", {})),
        tokenizer=data.get("tokenizer"),
        max_length=data.get("max_length", 4096),
        system_prompt=data.get("system_prompt"),
        instructlab_files=data.get("instructlab_files", False),
        base_dir=Path(base_dir) if base_dir is not None else None,
    )
    taken: dict[str, set[str]] = {p: set(BUILTIN_SOURCES[p]) for p in PHASES}
    for i, d in enumerate(recipe.datasets):
        if d.source in taken[d.phase]:
            raise LabcycleError(f"datasets.{i}: the {d.phase} set already has a source named {d.source!r}; give this "
                                "dataset its own `name`", where=where(("datasets", i)))
        taken[d.phase].add(d.source)
    return recipe


def load_recipe(path: str | Path | None) -> Recipe:
    """The recipe in `path`, or the defaults when no path is given."""
    if path is None:
        return Recipe()
    from labcycle.yaml_reader import read_settings_file

    path = Path(path)
    parsed = read_settings_file(path, missing="recipe file not found; pass an existing YAML file to --recipe",
                                what="recipe", keys="seed:, knowledge:, skills:, datasets: ...")
    return recipe_from_mapping(parsed.data, source=str(path), locate=parsed.where, base_dir=path.resolve().parent)


