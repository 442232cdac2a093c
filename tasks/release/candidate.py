"""What a release carries, and its fingerprint: the content hash that makes re-releasing a no-op."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError

CHUNK = 1 << 20
MODEL_FOLDERS = ("adapter", "model", "merged")
EVAL_REPORT = "eval_report.json"


@dataclass(frozen=True)
class Candidate:
    """What the gate passed: the skills phase folder and the evidence that goes out with it."""

    tuned: Path                      # OUTPUT/skills: adapter/ (or model/), optional merged/, model_card.md, result.json
    eval_report: Path                # the cycle's eval report.json
    dataset_cards: tuple[Path, ...]  # the mix stage's dataset_card.md files (knowledge, skills)
    decision: dict[str, Any]         # the gate's decision: {"decision", "reasons", ...}
    taxonomy_commit: str | None
    metrics: dict[str, Any] = field(default_factory=dict)  # headline metrics for the card and the event


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _model_files(candidate: Candidate) -> list[tuple[str, Path]]:
    """(path in the release, source file) of the model folders, sorted."""
    tuned = Path(candidate.tuned)
    folders = [d for d in ("adapter", "model") if (tuned / d).is_dir()]
    if not folders:
        raise LabcycleError("no adapter/ (or model/) folder here: release the skills phase output of the tune "
                            "stage (OUTPUT/skills), or run the tune stage first", where=str(tuned))
    if (tuned / "merged").is_dir():
        folders.append("merged")
    files = [(p.relative_to(tuned).as_posix(), p) for d in folders for p in (tuned / d).rglob("*") if p.is_file()]
    if not any(rel.split("/")[0] == folders[0] for rel, _ in files):
        raise LabcycleError(f"{folders[0]}/ is empty: the tune stage did not finish; run it again", where=str(tuned))
    return sorted(files)


def _eval_report(candidate: Candidate) -> Path:
    report = Path(candidate.eval_report)
    if not report.is_file():
        raise LabcycleError("no eval report here: run the evaluation stage before releasing", where=str(report))
    return report


def sources(candidate: Candidate) -> list[tuple[str, Path]]:
    """Every file the release copies, as (path in the release, source file)."""
    files = _model_files(candidate) + [(EVAL_REPORT, _eval_report(candidate))]
    if (Path(candidate.tuned) / "loss.png").is_file():  # the phase's model card shows it
        files.append(("loss.png", Path(candidate.tuned) / "loss.png"))
    taken: set[str] = set()
    for card in map(Path, candidate.dataset_cards):
        if not card.is_file():
            raise LabcycleError("no dataset card here: run the mix stage, or leave this card out of the candidate",
                                where=str(card))
        # Both phases' cards are called dataset_card.md: each is named after its phase folder.
        stem, n = card.parent.name or card.stem, 1
        rel = f"dataset_cards/{stem}.md"
        while rel in taken:
            n += 1
            rel = f"dataset_cards/{stem}-{n}.md"
        taken.add(rel)
        files.append((rel, card))
    return files


def check_finite(candidate: Candidate) -> None:
    """Refuse a diverged candidate: a tune result that records a NaN or infinite loss, or a weight file of the
    model folders holding one. The tune stage stops such a phase itself; this holds for any folder handed here."""
    tuned = Path(candidate.tuned)
    result_path = tuned / "result.json"
    try:
        metrics = json.loads(result_path.read_text(encoding="utf-8")).get("metrics") or {}
    except (OSError, ValueError, AttributeError):
        metrics = {}
    for key, value in metrics.items():
        if "loss" in key and isinstance(value, float) and not math.isfinite(value):
            raise LabcycleError(f"the tune result records a {key} of {value}: the training diverged, and a diverged "
                                f"adapter is never released; tune again with a lower learning rate", where=str(result_path))
    for rel, path in _model_files(candidate):
        try:
            bad = _non_finite_tensor(path)
        except Exception as exc:  # a truncated or foreign file: never released either
            raise LabcycleError(f"{rel}: cannot read its weights ({exc}); tune again, or release a complete tune "
                                "stage output", where=str(tuned)) from None
        if bad:
            raise LabcycleError(f"{rel} holds NaN or infinite weights ({bad}): the training diverged, and a diverged "
                                "adapter is never released; tune again with a lower learning rate", where=str(tuned))


def _non_finite_tensor(path: Path) -> str | None:
    """The name of the first tensor in a weight file (safetensors, or a PyTorch .bin) that holds a NaN or an
    infinity, else None; other files: None. Reads one tensor at a time."""
    if path.suffix == ".bin" and not path.name.startswith(("pytorch_model", "adapter_model")):
        return None  # training_args.bin and the like: pickled settings, not weights
    if path.suffix not in (".safetensors", ".bin"):
        return None
    import torch

    if path.suffix == ".bin":
        tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        names, read = list(tensors), tensors.__getitem__
    else:
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt")
        names, read = list(handle.keys()), handle.get_tensor
    for name in names:
        tensor = read(name)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def fingerprint_of(hashes: dict[str, str]) -> str:
    """The fingerprint from {path in the release: sha256}; only model files and the eval report count."""
    covered = sorted((rel, h) for rel, h in hashes.items() if rel == EVAL_REPORT or rel.split("/")[0] in MODEL_FOLDERS)
    return hashlib.sha256("".join(f"{rel}\0{h}\n" for rel, h in covered).encode()).hexdigest()


def fingerprint(candidate: Candidate) -> str:
    """Content hash of what is released (adapter or model files, merged model if any, eval report)."""
    files = _model_files(candidate) + [(EVAL_REPORT, _eval_report(candidate))]
    return fingerprint_of({rel: sha256_file(src) for rel, src in files})
