"""What a release carries, and its fingerprint: the content hash that makes re-releasing a no-op.

A release is laid out as a Hugging Face Hub model repo: the adapter's files (or the whole model's) at its
root, so `PeftModel.from_pretrained(folder)` and vLLM's `--lora-modules name=folder` need no subfolder;
merged/ (optional), eval_report.json, loss.png and dataset_cards/ beside them, README.md (the card) and
release.json written by the registry. The fingerprint still names files as the candidate holds them
(adapter/..., merged/...), so a candidate released before this layout is found again, not released twice."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from labcycle.errors import LabcycleError
from labcycle.headline import Headline, headline

CHUNK = 1 << 20
MODEL_FOLDERS = ("adapter", "model", "merged")
EVAL_REPORT = "eval_report.json"
# Written by the registry itself: a model folder's file of the same name is left out (the PEFT README) or refused.
OWN_FILES = ("README.md", "release.json", EVAL_REPORT, "loss.png")


@dataclass(frozen=True)
class Candidate:
    """What the gate passed: the skills phase folder and the evidence that goes out with it."""

    tuned: Path                      # OUTPUT/skills: adapter/ (or model/), optional merged/, model_card.md, result.json
    eval_report: Path                # the cycle's eval report.json
    dataset_cards: tuple[Path, ...]  # the mix stage's dataset_card.md files (knowledge, skills)
    decision: dict[str, Any]         # the gate's decision: {"decision", "reasons", ...}
    taxonomy_commit: str | None
    metrics: dict[str, Any] = field(default_factory=dict)  # headline metrics for the card and the event
    run_dir: Path | None = None      # the run folder: paths under it are written relative to it, others by name

    @cached_property
    def report(self) -> dict[str, Any]:
        """The eval report, read once for the card and release.json ({} when it cannot be read)."""
        try:
            report = json.loads(Path(self.eval_report).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return report if isinstance(report, dict) else {}

    @cached_property
    def headline(self) -> Headline:
        """What improved and regressed against the base, as the card and release.json say it."""
        return headline(self.report, self.decision or {})

    @property
    def share_roots(self) -> list[Path]:
        """The folders whose paths the release's shared files name relative to them: the run, the tune output."""
        return [p for p in (self.run_dir, Path(self.tuned).parent) if p is not None]


@dataclass(frozen=True)
class Source:
    """One file of a release."""

    dest: str                        # its path in the release
    path: Path                       # the file it comes from
    key: str | None = None           # its name in the fingerprint (the candidate's layout); None: not covered
    # "json"/"text": written with the machine's paths made relative (labcycle/shareable.py), not copied byte for
    # byte; "adapter_config": its base_model_name_or_path (a folder of the training machine) becomes the base
    # model's Hub id or name; "skip": not written (the README.md PEFT leaves in the adapter), but still part of
    # the fingerprint
    rewrite: Literal["copy", "json", "text", "adapter_config", "skip"] = "copy"


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


def sources(candidate: Candidate) -> list[Source]:
    """Every file the release writes from the candidate, in the release's layout."""
    model = _model_files(candidate)
    primary = model[0][0].split("/", 1)[0]  # adapter/ (or model/ after full tuning): its files go to the root
    files: list[Source] = []
    for rel, path in model:
        top, _, rest = rel.partition("/")
        if top != primary:
            files.append(Source(rel, path, key=rel))  # merged/ stays a folder of its own
        elif rest == "README.md":  # the card PEFT (or the tune stage) left: the release's README.md replaces it
            files.append(Source(rest, path, key=rel, rewrite="skip"))
        elif rest in OWN_FILES or rest.split("/", 1)[0] in ("merged", "dataset_cards"):
            raise LabcycleError(f"{rel}: the release writes a file of this name at its root; rename or remove it "
                                "from the tune stage output", where=str(candidate.tuned))
        else:
            files.append(Source(rest, path, key=rel, rewrite="adapter_config" if rest == "adapter_config.json" else "copy"))
    files.append(Source(EVAL_REPORT, _eval_report(candidate), key=EVAL_REPORT, rewrite="json"))
    if (Path(candidate.tuned) / "loss.png").is_file():  # the card shows it
        files.append(Source("loss.png", Path(candidate.tuned) / "loss.png"))
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
        files.append(Source(rel, card, rewrite="text"))
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
