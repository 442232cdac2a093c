"""What a tuning phase leaves for people: a loss plot (PNG) and a model card with the model's lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labcycle.io import write_text_atomic
from labcycle.teacher.server import vllm_lora_rank


def loss_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per logged step: step, training loss, held-out loss, learning rate, tokens/s."""
    rows: dict[int, dict[str, Any]] = {}
    for h in history:
        if "step" not in h or not ({"loss", "eval_loss"} & h.keys()):
            continue
        row = rows.setdefault(h["step"], {"step": h["step"], "loss": None, "eval_loss": None, "learning_rate": None, "tokens_per_s": None})
        for key in ("loss", "eval_loss", "learning_rate", "tokens_per_s"):
            if key in h:
                row[key] = round(h[key], 6) if isinstance(h[key], float) else h[key]
    return [rows[k] for k in sorted(rows)]


def write_loss_plot(history: list[dict[str, Any]], dest: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    rows = loss_rows(history)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(r["step"], r["loss"]) for r in rows if r["loss"] is not None]
    held = [(r["step"], r["eval_loss"]) for r in rows if r["eval_loss"] is not None]
    if train:
        ax.plot(*zip(*train), label="training loss", marker="." if len(train) < 50 else None)
    if held:
        ax.plot(*zip(*held), label="held-out loss", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or held:
        ax.legend()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(dest)
    return dest


def loss_trend(metrics: dict[str, Any]) -> str:
    """The loss at the first logged step and at the last, with their steps; one value when both come from
    the same logged step (a one-step phase), which is no trend."""
    first, final = metrics.get("first_loss"), metrics.get("final_loss")
    if first is None:
        return "none logged"
    at = metrics.get("first_loss_step"), metrics.get("final_loss_step")
    if at[0] is not None and at[0] == at[1]:
        return f"{first:.4f} at step {at[0]} (one step: no trend)"
    if at[0] is None:  # a result from before the steps were recorded
        return f"{first:.4f} → {final:.4f}"
    return f"{first:.4f} at step {at[0]} → {final:.4f} at step {at[1]}"


def write_model_card(result: dict[str, Any], dest: Path) -> Path:
    m = result["metrics"]
    lineage = result.get("lineage") or {}
    settings = result["settings"]
    phase = result["phase"]
    lines = [
        "---",
        "library_name: peft" if result["method"] != "full" else "library_name: transformers",
        "tags: [labcycle, lab-method, " + ("qlora" if result["method"] == "qlora" else result["method"]) + "]",
        "---",
        "",
        f"# labcycle {phase} phase ({result['method']})",
        "",
        f"Tuned by labcycle's {phase} phase of the LAB method"
        + (" (phase 2, after the knowledge phase)." if phase == "skills" else " (phase 1)."),
        "",
        "## Lineage",
        "",
        f"- Base model: `{Path(result['base_model']).name}` (fingerprint `{lineage.get('base_model_fingerprint', 'n/a')}`)",
        f"- Started from adapter: `{result['init_adapter']}`" if result.get("init_adapter") else "- Started from: a new adapter" if result["method"] != "full" else "- Started from: the base weights",
        f"- Training data: `{result['data']}` (fingerprint `{result['data_fingerprint'][:16]}`), "
        f"{result['samples']['train']} samples for training, {result['samples']['held_out']} held out"
        + (f", {result['samples']['too_long']} left out as longer than max_length" if result['samples'].get('too_long') else ""),
        f"- Taxonomy commit: `{lineage.get('taxonomy_commit') or 'n/a'}`",
    ]
    leaves = lineage.get("leaves") or []
    if leaves:
        lines += ["", "| leaf | kind | content hash |", "|---|---|---|"]
        lines += [f"| {leaf['id']} | {leaf.get('kind', '')} | `{str(leaf.get('hash', ''))[:16]}` |" for leaf in leaves]
    lines += ["", "## Hyperparameters", "", "```json"]
    import json

    lines += [json.dumps(settings, indent=2), "```", ""]
    step = result.get("step") or {}
    if step.get("samples_per_step"):
        micro = "one packed row" if step.get("packing") else f"{step['per_device']} sample{'s' if step['per_device'] != 1 else ''}"
        lines += [f"- effective batch: {'about ' if step.get('packing') else ''}{step['samples_per_step']} samples a step "
                  f"({micro} per micro-batch x {step['accumulation']} accumulated"
                  + (f" x {step['processes']} data-parallel processes" if (step.get("processes") or 1) > 1 else "")
                  + f"), {step.get('steps')} steps planned"]
    if step.get("split"):
        lines += [f"- **step split over processes:** {step['split']}"]
    if step.get("adapted"):
        lines += [f"- **batch adapted to the data:** {step['adapted']}"]
    lines += ["", "## Results", ""]
    lines += [f"- loss: {loss_trend(m)}"]
    shown = ("first_loss", "final_loss", "first_loss_step", "final_loss_step")
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in m.items() if v is not None and k not in shown]
    lines += [f"- loss on: {result['loss_on']}"]
    if result.get("attention"):
        lines += [f"- attention: {result['attention']}"]
    if result.get("resumed_from_step"):
        lines += [f"- resumed from the checkpoint at step {result['resumed_from_step']}"]
    lines += ["", "![loss](loss.png)", ""]
    if result["method"] != "full":
        lines += ["## Serving", "", "The adapter loads on the base model as is, e.g. with vLLM:", "", "```sh",
                  "vllm serve BASE_MODEL --enable-lora --lora-modules labcycle=PATH/TO/adapter "
                  f"--max-lora-rank {vllm_lora_rank(settings['lora']['r'])}", "```", ""]
    return write_text_atomic(dest, "\n".join(lines))
