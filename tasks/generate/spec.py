"""Pipeline specs: YAML checked against schemas/pipeline.schema.json, loaded into typed blocks, with
their Jinja prompt templates. A spec's hash covers the YAML and every template it uses, so a change to
either invalidates cached generation for the leaves it serves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError

PIPELINES_DIR = Path(__file__).parent / "pipelines"
PROMPTS_DIR = Path(__file__).parent / "prompts"
SHIPPED = {"knowledge": "knowledge.yaml", "freeform_skill": "freeform_skills.yaml", "grounded_skill": "grounded_skills.yaml"}


@dataclass(frozen=True)
class BlockSpec:
    name: str
    type: str
    params: dict[str, Any]


@dataclass
class PipelineSpec:
    name: str
    kind: str
    unit: str
    examples_per_prompt: int
    blocks: list[BlockSpec]
    prompts_dir: Path
    source: Path
    templates: dict[str, str] = field(default_factory=dict)  # file name -> text
    digest: str = ""

    def template_hashes(self) -> dict[str, str]:
        return {name: hashlib.sha256(text.encode()).hexdigest()[:16] for name, text in sorted(self.templates.items())}


def shipped_spec_path(kind: str) -> Path:
    return PIPELINES_DIR / SHIPPED[kind]


def load_spec(path: Path) -> PipelineSpec:
    """Read, check and load a pipeline spec; every problem is a LabcycleError naming file:line."""
    from labcycle.schemas import refuse_non_finite, validator
    from labcycle.yaml_reader import read_yaml

    parsed = read_yaml(path)
    if parsed.problems:
        p = parsed.problems[0]
        raise LabcycleError(p.message, where=f"{path}:{p.line}:{p.column}")
    refuse_non_finite(parsed.data, "pipeline.schema.json", str(path), parsed.where)
    errors = sorted(validator("pipeline.schema.json").iter_errors(parsed.data), key=lambda e: [str(x) for x in e.absolute_path])
    if errors:
        err = min(errors, key=lambda e: len(list(e.absolute_path)) * -1)  # the most specific error
        loc = ":".join(map(str, parsed.where(tuple(err.absolute_path))))
        key = ".".join(str(x) for x in err.absolute_path) or "the top level"
        raise LabcycleError(f"{key}: {err.message}; see schemas/pipeline.schema.json", where=f"{path}:{loc}")
    data = parsed.data

    def at(*key: Any) -> str:  # file:line:col of a key in the spec
        return f"{path}:{':'.join(map(str, parsed.where(tuple(key))))}"

    prompts = Path(data["prompts"])
    # A folder beside the spec wins over a shipped set of the same name: users' own prompts are never shadowed.
    prompts_dir = path.parent / prompts if (path.parent / prompts).is_dir() else PROMPTS_DIR / prompts
    if not prompts_dir.is_dir():
        raise LabcycleError(f"prompts folder {data['prompts']!r} not found (looked in {prompts_dir})", where=at("prompts"))
    blocks = [BlockSpec(b["name"], b["type"], {k: v for k, v in b.items() if k not in ("name", "type")}) for b in data["blocks"]]
    names = [b.name for b in blocks]
    if len(set(names)) != len(names):
        again = next(i for i, n in enumerate(names) if n in names[:i])  # the first repeat
        raise LabcycleError(f"block names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}",
                            where=at("blocks", again, "name"))
    if data["kind"] == "freeform_skill":
        from labcycle.tasks.generate.blocks import SOURCE_TYPES

        for i, b in enumerate(blocks):
            if b.type in SOURCE_TYPES:
                raise LabcycleError(f"block {b.name!r} ({b.type}) checks answers against a chunk or context, and a freeform "
                                    "skill has neither; remove it, or use it in a knowledge or grounded_skill pipeline",
                                    where=at("blocks", i, "type"))
    spec = PipelineSpec(
        name=data["name"], kind=data["kind"], unit=data["unit"], examples_per_prompt=data.get("examples_per_prompt", 3),
        blocks=blocks, prompts_dir=prompts_dir, source=path,
    )
    # Template name -> the first block that uses it (for the error's line); system.j2 is optional.
    wanted: dict[str, int | None] = {"system.j2": None}
    for i, b in enumerate(blocks):
        if "template" in b.params:
            wanted.setdefault(b.params["template"], i)
    for name, block in sorted(wanted.items()):
        file = prompts_dir / name
        if not file.is_file():
            if block is None:
                continue
            raise LabcycleError(f"template {name!r} not found in {prompts_dir}", where=at("blocks", block, "template"))
        spec.templates[name] = file.read_text(encoding="utf-8")
    h = hashlib.sha256(path.read_bytes())
    for name, text in sorted(spec.templates.items()):
        h.update(b"\0" + name.encode() + b"\0" + text.encode())
    spec.digest = h.hexdigest()
    return spec
