"""The released model card, README.md, as a Hugging Face Hub model repo has it.

Front matter (huggingface_hub's ModelCardData): base_model (a Hub id, when the base model's folder says
which), datasets, license (the base model's own), library_name, tags and a model-index of the results the
gate checked. Body: a title naming the model, the headline (what improved or regressed against the base, and
what the gate checked), how to load it, the evaluation rounded for reading, the gate's reasons, the safety
results, the lineage (taxonomy commit, leaves and their hashes, base model, data fingerprint) and the
training settings. Paths are relative to the release folder; the machine's paths stay out."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labcycle.headline import Headline, number, safety_markdown
from labcycle.models import looks_like_hub_id
from labcycle.shareable import scrub
from labcycle.tasks.release.candidate import EVAL_REPORT, Candidate

README = "README.md"
_HUB_CACHE = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")
METHODS = {"qlora": "QLoRA adapter", "lora": "LoRA adapter", "full": "full fine-tune"}


@dataclass(frozen=True)
class BaseModel:
    """What the card says about the base model."""

    name: str                 # the Hub id when known, else the folder's name
    hub_id: str | None        # only a known Hub id goes into base_model: the Hub refuses other values
    license: str | None       # from the base model's own card (or labcycle's import record); None: unknown


@dataclass(frozen=True)
class Training:
    """The tune result of the released phase (RUN/cycle-k/tuned/skills/result.json), the parts the card shows."""

    phase: str
    method: str
    base_model: str           # as the tune stage saw it: a folder on its machine, or a Hub id
    lineage: dict[str, Any]   # taxonomy_commit, leaves [{id, kind, hash}], base_model_fingerprint
    data_fingerprint: str | None
    settings: dict[str, Any]
    samples: dict[str, Any]

    @classmethod
    def read(cls, tuned: Path) -> Training | None:
        try:
            r = json.loads((Path(tuned) / "result.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(r, dict):
            return None
        return cls(phase=str(r.get("phase") or "skills"), method=str(r.get("method") or "lora"),
                   base_model=str(r.get("base_model") or ""), lineage=r.get("lineage") or {},
                   data_fingerprint=r.get("data_fingerprint"), settings=r.get("settings") or {},
                   samples=r.get("samples") or {})

    @property
    def lora_rank(self) -> int | None:
        lora = self.settings.get("lora")
        return lora.get("r") if isinstance(lora, dict) and isinstance(lora.get("r"), int) else None


def base_model(path: str) -> BaseModel:
    """The base model's Hub id and license, from its folder when this machine has it: labcycle's import record
    (labcycle-source.json), the Hub cache's folder names, config.json's _name_or_path, its README.md front matter."""
    if not path:
        return BaseModel("unknown", None, None)
    if looks_like_hub_id(path) and not Path(path).exists():
        return BaseModel(path, path, None)  # a Hub id the tune stage loaded as is
    folder = Path(path)
    hub_id: str | None = None
    license: str | None = None
    try:
        from labcycle.provenance import read_provenance

        prov = read_provenance(folder)
    except Exception:  # an unreadable record says nothing
        prov = None
    if prov is not None:
        license = prov.license
        if prov.source.startswith("hub:"):
            hub_id = prov.source.removeprefix("hub:").split("@", 1)[0]
    if hub_id is None and (m := _HUB_CACHE.search(folder.as_posix() + "/")):
        hub_id = f"{m.group(1)}/{m.group(2)}"
    if hub_id is None:
        try:
            named = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
        except (OSError, ValueError, AttributeError):
            named = None
        if isinstance(named, str) and looks_like_hub_id(named) and not Path(named).is_absolute():
            hub_id = named
    if (folder / README).is_file():
        try:
            from huggingface_hub import ModelCard

            own = ModelCard.load(folder / README).data.license
        except Exception:  # a README without (valid) front matter: no license known from it
            own = None
        license = own if isinstance(own, str) and own else license
    return BaseModel(hub_id or folder.name, hub_id, license)


def safety_section(report: dict[str, Any]) -> list[str]:
    """The eval report's safety results, base vs candidate, as the card's "Safety" section."""
    safety = report.get("safety")
    if not isinstance(safety, dict):
        return ["### Safety", "", "The eval report has no safety results."]
    try:
        lines = safety_markdown(safety)
    except (KeyError, TypeError, AttributeError):  # a report edited by hand: say so rather than fail the release
        return ["### Safety", "", f"The eval report's safety results are malformed; see `{EVAL_REPORT}`."]
    return ["#" + lines[0], *lines[1:]]  # one level down: a section of the evaluation


def _eval_results(head: Headline, name: str) -> list[Any]:
    """The model-index: the candidate's value of each number the gate checked (per leaf kind, overall, each
    regression suite, the safety rates), at full precision."""
    from huggingface_hub import EvalResult

    out = []
    for c in head.changes:
        if not c.gated or c.candidate is None or c.scope.startswith("leaf/"):
            continue
        area, _, what = c.scope.partition("/")
        # The Hub groups results by task and dataset type, config and split: each leaf kind is its own config.
        if area == "branch":
            dataset = ("labcycle-taxonomy", "changed taxonomy leaves", what)
        elif area == "regression":
            dataset = (what, what, None)
        else:
            dataset = ("labcycle-safety", "safety suite", None)
        out.append(EvalResult(task_type="text-generation", dataset_type=dataset[0], dataset_name=dataset[1],
                              dataset_config=dataset[2], metric_type=c.metric, metric_value=c.candidate,
                              metric_name=f"{c.metric} ({c.label})"))
    return out


def _evaluation_table(head: Headline) -> list[str]:
    lines = ["| what | metric | base | candidate | change | gated |", "|---|---|---:|---:|---:|---|"]
    for c in head.changes:
        if c.scope.startswith("leaf/") and c.direction != "regressed" and not c.gated:
            continue
        delta = "–" if c.delta is None else f"{'+' if c.delta >= 0 else '−'}{number(abs(c.delta))}"
        lower = " (lower is better)" if not c.higher_is_better else ""
        lines.append(f"| {c.label} | {c.metric}{lower} | {number(c.base)} | {number(c.candidate)} | {delta} | "
                     f"{'yes' if c.gated else 'no'} |")
    return lines


def release_card(candidate: Candidate, name: str, version: str, created: str, fingerprint: str,
                 files: list[str]) -> str:
    """README.md of a released version; `files` are the paths in the release (for its file list)."""
    from huggingface_hub import ModelCard, ModelCardData

    training = Training.read(Path(candidate.tuned))
    report = candidate.report
    decision = candidate.decision or {}
    head = candidate.headline
    base = base_model(training.base_model if training else "")
    method = training.method if training else "lora"
    lineage = training.lineage if training else {}
    leaves = [leaf for leaf in lineage.get("leaves") or [] if isinstance(leaf, dict)]
    commit = candidate.taxonomy_commit or lineage.get("taxonomy_commit")
    adapter = method != "full"
    roots = candidate.share_roots

    data = ModelCardData(
        base_model=base.hub_id, license=base.license, library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation", model_name=name,
        datasets=[f"{name}-{Path(card).parent.name or Path(card).stem}" for card in candidate.dataset_cards] or None,
        tags=["labcycle", "lab-method", "instructlab", method, *(["lora"] if method == "qlora" else [])],
        eval_results=_eval_results(head, name) or None)
    kind = METHODS.get(method, method)
    lines = [f"# {name} {version}: `{base.name}` tuned with the LAB method", "",
             f"A {kind} of `{base.name}`, trained by labcycle on {_leaves(len(leaves))}"
             f"{f' at commit `{commit}`' if commit else ''} (knowledge, then skills) and released after the gate "
             f"decided **{decision.get('decision', 'n/a')}**.", ""]
    lines += head.markdown(level=2)
    lines += ["## Use it", ""]
    if adapter:
        rank = training.lora_rank if training else None
        lines += ["The adapter files are at the root of this folder (or repo): load them on the base model as is.", "",
                  "```python", "from peft import AutoPeftModelForCausalLM", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("PATH_OR_REPO")  # this folder, or its Hub repo',
                  "```", "", "```sh",
                  f"vllm serve {base.hub_id or 'BASE_MODEL'} --enable-lora --lora-modules {name}=PATH_OR_REPO"
                  + (f" --max-lora-rank {_vllm_rank(rank)}" if rank else ""), "```", ""]
        if "merged/config.json" in files:
            lines += ["`merged/` holds the adapter merged into the base: a whole model, for servers without LoRA.", ""]
    else:
        lines += ["A whole model:", "", "```python", "from transformers import AutoModelForCausalLM", "",
                  'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")', "```", ""]
    lines += ["## Evaluation", "", "Base vs candidate, rounded to 4 significant digits (full precision in "
              f"`{EVAL_REPORT}`); \"gated\" says whether the gate checked the number.", "", *_evaluation_table(head), ""]
    lines += ["### Gate", "", f"Decision: **{decision.get('decision', 'n/a')}**", ""]
    lines += [f"- {reason}" for reason in scrub(list(decision.get("reasons") or []), roots)]
    if decision.get("approval"):
        lines += [f"- Approval: {scrub(decision['approval'], roots)}"]
    lines += ["", *safety_section(report), ""]
    lines += ["## Lineage", "",
              f"- Taxonomy commit: `{commit or 'n/a'}`",
              f"- Base model: `{base.name}` (fingerprint `{lineage.get('base_model_fingerprint', 'n/a')}`)"
              + (f", license {base.license}" if base.license else ", license not stated in its card"),
              f"- Training data fingerprint: `{(training.data_fingerprint or 'n/a')[:16] if training else 'n/a'}`; "
              "the sets are described in `dataset_cards/`"]
    if leaves:
        lines += ["", "| leaf | kind | content hash |", "|---|---|---|"]
        lines += [f"| `{leaf.get('id')}` | {leaf.get('kind', '')} | `{str(leaf.get('hash', ''))[:16]}` |" for leaf in leaves]
    if training:
        lines += ["", "## Training", "", f"{kind[0].upper()}{kind[1:]}, {training.phase} phase last (LAB: knowledge, then skills)."]
        if training.samples:
            lines.append(f"{training.samples.get('train', '?')} samples trained on, {training.samples.get('held_out', '?')} held out.")
        lines += ["", "```json", json.dumps(scrub(training.settings, roots), indent=2), "```"]
    if "loss.png" in files:
        lines += ["", "![training loss](loss.png)"]
    lines += ["", "## Release", "",
              f"- Version: `{name}` {version}, released {created}",
              f"- Fingerprint: `{fingerprint[:16]}` (model files and eval report)",
              f"- Files: {', '.join(f'`{f}`' for f in _listed(files))}",
              f"- Machine-readable: `release.json` (lineage, metrics, every file's sha256), `{EVAL_REPORT}` (every score)", ""]
    # Not from_template: the body holds user text (reasons, settings) that Jinja would read as its own.
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _leaves(n: int) -> str:
    return "the changed taxonomy leaves" if not n else f"{n} taxonomy leaf" if n == 1 else f"{n} taxonomy leaves"


def _listed(files: list[str]) -> list[str]:
    """The file list, folders collapsed: merged/, dataset_cards/."""
    shown: list[str] = []
    for f in sorted(files):
        top = f.split("/", 1)[0] + "/" if "/" in f else f
        if top not in shown:
            shown.append(top)
    return shown


def _vllm_rank(r: int) -> int:
    from labcycle.teacher.server import vllm_lora_rank

    return vllm_lora_rank(r)
