"""The data one tuning phase trains on: chat samples from JSONL or a saved HF dataset, in the form TRL reads.

Loss falls on assistant tokens only. When the student's chat template marks assistant turns with
{% generation %} (or TRL knows how to patch it to), samples stay in `messages` form and TRL masks every
assistant turn. Otherwise each sample becomes prompt/completion (everything before the last assistant
turn, then that turn), which works with any chat template and trains on the final answer only.

A sample marked `unmask: true` (InstructLab's phase-1 knowledge data) is trained on every token. TRL's
datasets take one loss rule for all rows, so data with such samples is tokenized here, each row with
its own labels (-100 where no loss falls), by the same rules TRL applies to the others.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from labcycle.chat_data import load_chat_dataset
from labcycle.errors import LabcycleError


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Chat samples (rows with a valid `messages` list) from JSONL, Parquet or a save_to_disk folder."""
    path = Path(path)
    if not path.exists():
        raise LabcycleError("training data not found; pass a JSONL file in chat `messages` format or a folder "
                            "saved with datasets' save_to_disk (e.g. the mix stage's OUTPUT/<phase>/dataset)", where=str(path))
    if path.is_dir() and (path / "dataset").is_dir() and not (path / "state.json").exists():
        path = path / "dataset"  # the mix stage's phase folder
    return [{"messages": r["messages"], **({"unmask": True} if r["unmask"] else {})} for r in load_chat_dataset(path)]


def uses_assistant_masks(tokenizer: Any) -> bool:
    """True when TRL can mask assistant turns with this chat template (as is, or patched by TRL)."""
    if not tokenizer.chat_template:
        raise LabcycleError("the student's tokenizer has no chat template; give the base model one "
                            "(tokenizer_config.json `chat_template` or chat_template.jinja)")
    try:
        training_template(tokenizer)
    except Exception:  # TRL knows no training version of this template
        return False
    return True


def training_template(tokenizer: Any) -> str | None:
    """The chat template TRL masks assistant turns with: None for the tokenizer's own (it has the markers)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default", "")
    return None if has_generation_markers(template) else get_training_chat_template(tokenizer)


def _ids(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> dict[str, list[int]]:
    return dict(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs))


def tokenize_rows(rows: list[dict[str, Any]], tokenizer: Any, assistant_masks: bool) -> list[dict[str, list[int]]]:
    """Rows as {input_ids, labels}: every token of an `unmask` row carries loss; another row's loss falls on its
    assistant turns (assistant_masks) or on its last assistant turn, as TRL would put it."""
    from trl.data_utils import common_prefix_length

    template = training_template(tokenizer) if assistant_masks else None
    out = []
    for row in rows:
        messages = row["messages"]
        if row.get("unmask"):
            ids = _ids(tokenizer, messages)["input_ids"]
            labels = list(ids)
        elif assistant_masks:
            encoded = _ids(tokenizer, messages, chat_template=template, return_assistant_tokens_mask=True)
            ids = encoded["input_ids"]
            labels = [t if m else -100 for t, m in zip(ids, encoded["assistant_masks"])]
        else:
            pc = to_prompt_completion(row)
            prompt = _ids(tokenizer, pc["prompt"], add_generation_prompt=True)["input_ids"]
            ids = _ids(tokenizer, pc["prompt"] + pc["completion"])["input_ids"]
            start = common_prefix_length(prompt, ids)
            labels = [-100] * start + ids[start:]
        out.append({"input_ids": list(ids), "labels": labels})
    return out


def to_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {"prompt": messages[:last], "completion": [messages[last]]}


def split_rows(rows: list[dict[str, Any]], eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a deterministic held-out slice of at least one sample when eval_fraction > 0."""
    if eval_fraction <= 0:
        return rows, []
    if len(rows) < 2:
        raise LabcycleError(f"eval_fraction {eval_fraction} needs at least 2 samples; this phase has {len(rows)}: "
                            "set eval_fraction: 0 for this phase")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * eval_fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def drop_too_long(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> tuple[list[dict[str, Any]], list[int], int]:
    """(rows that fit in max_length tokens with the chat template, their lengths, how many did not fit).

    Packing truncates a longer sample, and what it cuts is the end: the answer, the only part that
    carries loss. Such a sample would train on nothing (or on half an answer), so it is left out and
    counted; the mix stage's dataset card lists these samples in advance.
    """
    kept, lengths = [], []
    for row in rows:
        ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)
        if hasattr(ids, "keys"):  # transformers returns a BatchEncoding when asked for a dict
            ids = ids["input_ids"]
        if len(ids) <= max_length:
            kept.append(row)
            lengths.append(len(ids))
    return kept, lengths, len(rows) - len(kept)


# The fewest optimizer steps a phase takes when its data allows (docs/tuning.md, "Small phases").
# Adam moves each weight by about one learning rate per step, however many samples the step averages, so
# how far a phase can move the adapter is set by its number of steps. At the default 128 samples a step, a
# phase of a few hundred samples gets 1-3 steps an epoch (7-30 in all, the first at learning rate 0 in the
# warmup); 50 gives 5-7 steps an epoch at the default 7-10 epochs. It decides what a phase trains: bump
# stage.TUNE_FORMAT when changing it.
MIN_STEPS = 50
# A phase logs its loss at least this many times when it has the steps: logging_steps is lowered for a
# short phase (every step below 2 x MIN_LOGS steps), so its curve and its first and final losses are
# read from real steps, not from one window averaged over the whole phase.
MIN_LOGS = 10


def trainer_steps(epochs: float, micro_batches: int, accumulation: int) -> int:
    """Optimizer steps of an epoch-based phase, counted as transformers' Trainer counts them: each epoch
    ends with a partial step when its micro-batches do not fill the last one."""
    return math.ceil(epochs * max(1, -(-micro_batches // accumulation)))


def step_shape(batch_size: int, gradient_accumulation: int, packing: bool, max_length: int,
               lengths: list[int]) -> dict[str, Any]:
    """How an optimizer step is made: {per_device, accumulation, packing, micro_batches, samples_per_step,
    samples_per_row}; micro_batches counts an epoch's.

    batch_size x gradient_accumulation counts samples, as the reference recipe's effective batch does.
    Packed, a micro-batch is ONE row of up to max_length tokens: TRL's padding-free collator joins a
    micro-batch's rows into one sequence, and attention without a varlen kernel (SDPA, and every CPU)
    then computes the whole joined row, twice the work at two rows and more beyond (bench/train.py).
    The step then accumulates as many rows as hold the asked-for samples, estimated from the lengths
    (best-fit-decreasing packing fills rows nearly full). samples_per_step is what a step really takes,
    estimated the same way: more than asked when one row holds more, never more than the data holds.
    """
    samples = batch_size * gradient_accumulation
    n = len(lengths)
    if not packing or not lengths:
        return {"per_device": batch_size, "accumulation": gradient_accumulation, "packing": False,
                "micro_batches": -(-n // batch_size), "samples_per_step": min(samples, n) if n else samples,
                "samples_per_row": 1.0}
    rows = max(1, -(-sum(lengths) // max_length))
    per_row = n / rows
    accumulation = max(1, round(samples / per_row))
    return {"per_device": 1, "accumulation": accumulation, "packing": True, "micro_batches": rows,
            "samples_per_step": min(n, round(accumulation * per_row)), "samples_per_row": round(per_row, 2)}


def plan_steps(p: Any, lengths: list[int], packing: bool | None = None, processes: int = 1) -> dict[str, Any]:
    """The step shape a phase trains with: step_shape of its settings (a PhaseSettings), with a smaller
    effective batch when the data would give fewer than MIN_STEPS steps.

    lengths: the token lengths of the phase's training samples. packing: whether the phase packs
    (trainer.resolve_packing of the setting and the attention kernel); None: the setting, auto read as off.
    Adds `steps` (the Trainer's count,
    estimated from the lengths when packed), `logging_steps` (every step in a short phase),
    `asked_samples_per_step` and `adapted`: None, or one line saying what was lowered and why (the log,
    result.json and the model card show it). Explicit batch settings are adapted as well; a phase with
    max_steps set never is: its number of steps is the user's choice.
    processes: data-parallel processes (split_over_processes): per_device and accumulation are then each
    process's, and `split` says when the step could not keep its samples.
    """
    asked = p.batch_size * p.gradient_accumulation
    packing = p.packing is True if packing is None else packing
    shape = step_shape(p.batch_size, p.gradient_accumulation, packing, p.max_length, lengths)
    steps = p.max_steps if p.max_steps is not None else trainer_steps(p.epochs, shape["micro_batches"], shape["accumulation"])
    adapted = None
    if p.max_steps is None and lengths and steps < MIN_STEPS:
        before, before_steps = shape, steps
        shape = _smaller_step(p, shape, len(lengths))
        steps = trainer_steps(p.epochs, shape["micro_batches"], shape["accumulation"])
        adapted = _adapted_line(p, before, before_steps, shape, steps, len(lengths))
    split = None
    if processes > 1:
        shape, split = split_over_processes(shape, processes)
        if p.max_steps is None:
            steps = trainer_steps(p.epochs, -(-shape["micro_batches"] // processes), shape["accumulation"])
    logging = max(1, min(p.logging_steps, steps // MIN_LOGS))
    return {**shape, "steps": steps, "logging_steps": logging, "asked_samples_per_step": asked, "adapted": adapted,
            "processes": processes, "split": split}


def split_over_processes(shape: dict[str, Any], processes: int) -> tuple[dict[str, Any], str | None]:
    """(the step shape of each of `processes` data-parallel processes, None or a line saying how the step changed).

    An optimizer step takes per_device x accumulation micro-batch samples (rows when packed) on every process:
    the accumulation is divided by the processes, so a step takes the same samples as on one process; each
    process takes every processes-th micro-batch of the single-process order (accelerate's sharded sampler),
    and the step's gradient is averaged over all of them. Unpacked, when the accumulation does not divide, the
    micro-batch is divided instead (per_device x accumulation as a whole). When neither does, the accumulation
    is rounded to the nearest whole number (at least 1), and the effective batch changes by that much.
    micro_batches stays the whole epoch's, as on one process.
    """
    per, acc = shape["per_device"], shape["accumulation"]
    if acc % processes == 0:
        return {**shape, "accumulation": acc // processes}, None
    total = per * acc
    if not shape["packing"] and total % processes == 0:
        each = total // processes
        per_device = max(d for d in range(1, per + 1) if each % d == 0)
        return {**shape, "per_device": per_device, "accumulation": each // per_device}, None
    accumulation = max(1, round(acc / processes))
    unit = "row" if shape["packing"] else "micro-batch"
    before = shape["samples_per_step"]
    samples = round(before * accumulation * processes / acc)
    line = (f"a step's {acc} {unit}{'s' if acc > 1 else ''} of {per} do not split evenly over {processes} processes: each takes "
            f"{accumulation}, so a step takes about {samples} samples instead of {before}; set tuning.<phase>.batch_size "
            f"and gradient_accumulation so that their product divides by {processes} to keep it")
    return {**shape, "accumulation": accumulation, "samples_per_step": samples}, line


def _adapted_line(p: Any, before: dict[str, Any], before_steps: int, after: dict[str, Any], steps: int, n: int) -> str:
    asked = p.batch_size * p.gradient_accumulation
    per_epoch = -(-before["micro_batches"] // before["accumulation"])
    what = (f"effective batch lowered from {asked} to {_samples(after['samples_per_step'])} a step"
            if after["samples_per_step"] < asked else f"effective batch kept at {_samples(asked)} a step")
    if before["packing"] and not after["packing"]:
        what += f", packing off (a packed row held {before['samples_per_row']:g} samples, more than a step takes)"
    line = (f"{what}: the {_samples(n, 'training sample')} made {per_epoch} step{'s' if per_epoch > 1 else ''} an epoch "
            f"({before_steps} in all), and a phase takes at least {MIN_STEPS}; now {steps} steps")
    if steps < MIN_STEPS:
        line += f", the most {_samples(n)} in {p.epochs:g} epochs give: add samples or epochs for more"
    return line


def _samples(n: int, word: str = "sample") -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _smaller_step(p: Any, shape: dict[str, Any], n: int) -> dict[str, Any]:
    """The biggest step, in samples, no bigger than asked, that gives the phase MIN_STEPS steps; the most
    steps the data allows when none does. A packed step stays packed while a whole number of rows gives
    the steps; a step smaller than one row is not packed (the row would hold more samples than the step
    takes). batch_size stays the most samples per micro-batch: the memory it was sized for."""
    packed = None
    if shape["packing"]:
        for accumulation in range(shape["accumulation"] - 1, 0, -1):
            packed = {**shape, "accumulation": accumulation,
                      "samples_per_step": min(n, round(accumulation * shape["samples_per_row"]))}
            if trainer_steps(p.epochs, shape["micro_batches"], accumulation) >= MIN_STEPS:
                return packed
    asked = p.batch_size * p.gradient_accumulation
    best = (1, 1)  # (samples a step, per device): one sample a step gives the most steps
    for per_device in range(1, min(p.batch_size, n) + 1):
        micro = -(-n // per_device)
        for accumulation in range(1, min(asked // per_device, micro) + 1):
            if trainer_steps(p.epochs, micro, accumulation) < MIN_STEPS:
                break  # more accumulation only means fewer steps
            best = max(best, (per_device * accumulation, per_device))
    samples, per_device = best
    plain = {"per_device": per_device, "accumulation": samples // per_device, "packing": False,
             "micro_batches": -(-n // per_device), "samples_per_step": samples, "samples_per_row": 1.0}
    if packed is not None and trainer_steps(p.epochs, packed["micro_batches"], 1) >= \
            trainer_steps(p.epochs, plain["micro_batches"], plain["accumulation"]):
        return packed  # a row a step already gives as many steps (a row holds one sample)
    return plain
