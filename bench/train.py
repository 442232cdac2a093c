"""Benchmark: tuning throughput and padding, labcycle's tuning phase against a plain TRL baseline.

Run from the repository root (CPU defaults: a small random model, 12 optimizer steps, 20-80 s a run
on 2 cores; labcycle-bs1 is optional, see below):

    .venv/bin/python bench/train.py --paths labcycle,baseline,labcycle-bs1 --repeat 3 --json /tmp/labcycle-bench-train.json

On a GPU, with a random Llama of about 1B parameters at sequence length 2048 (what
scripts/gpu_check.sh runs, one method per call):

    python bench/train.py --hidden 2048 --layers 16 --heads 32 --intermediate 5632 --vocab 32000 \\
        --seq-len 2048 --batch-size 8 --grad-accum 2 --steps 6 --method qlora --device-check --json OUT

Without --model it builds a random-init Llama with a byte-level BPE tokenizer in a temporary folder
(labcycle.models.build_tiny: by default hidden 512, 4 layers, 8 heads, MLP 1024, vocabulary 1024, 11.5M
parameters; with --intermediate, the same tokenizer and config with that MLP width and the vocabulary
padded to --vocab), and a synthetic LAB-like chat set of `--samples` samples (default
512, deterministic for --seed): a fixed system prompt, one user turn of 20-300 words and one assistant
answer of 20-600 words (uniform), made of Zipf-distributed pseudo-words in sentences. Samples longer
than --seq-len are left out for both paths (train_phase leaves them out; TRL would truncate). Both then
train the same model on the same samples with the same adapter, the same max length, per-device batch
size, gradient accumulation, learning rate, seed and number of optimizer steps (defaults: --seq-len 2048,
--batch-size 2, --grad-accum 2, --steps 12, --learning-rate 2e-4):

  labcycle   labcycle.tasks.tune.trainer.train_phase("knowledge", ...) itself, with TuneSettings
             (--method qlora|lora; everything else its defaults except the sizes above and save_steps
             beyond --steps): its sft_config (best-fit-decreasing packing, padding-free batches),
             load_student, lora_config and callbacks, on the samples written as JSONL.
  baseline   trl.SFTTrainer with SFTConfig's defaults (packing=False, padding_free=False, so each
             micro-batch is padded to its longest sample by TRL's default collator), the same
             load_student model (with transformers' default attention, sdpa, where labcycle's
             tuning.attention auto takes flash_attention_2 on a GPU that has flash-attn) and
             lora_config adapter, and only what must match set: max_length,
             per-device batch, gradient accumulation, learning rate, max_steps, seed, bf16/fp16 and
             use_cpu as the machine needs, gradient checkpointing (labcycle's choice: off on CPU, on
             with a GPU, the TRL default), assistant_only_loss (labcycle's choice for this chat
             template; TRL's fused LM head computes only loss-bearing positions, so the loss mask
             changes the work), no checkpoint saving, report_to none.
  labcycle-bs1 (optional, --paths) labcycle's train_phase with TuneSettings batch_size 1 and
             gradient_accumulation batch x accumulation (the same effective batch). Where train_phase
             uses the settings as they are (commit 83e5476), that is one packed row per forward and the
             same packed rows per optimizer step. The table shows the micro-batch and accumulation the
             trainer really used.
  labcycle-packed (optional, --paths) labcycle's train_phase with packing: true, whatever the attention
             kernel.
  labcycle-unpacked-bs1 (optional, --paths) labcycle's train_phase with packing: false, batch_size 1 and
             gradient_accumulation batch x accumulation: one sample per forward, no padding, no mask.

With --data knowledge --model DIR the samples are a knowledge phase as labcycle's mixer makes it, on
real text with the model's tokenizer (make_knowledge_samples): Q&A pairs and their RAFT copies.

Each run is its own process (`--worker`, clean memory and peak figures). Both trainers are a subclass
of SFTTrainer that only records, for every micro-batch the model is given (compute_loss), the positions
(input_ids elements), the real tokens (attention_mask, or non-pad ids in padding-free batches), the
loss-bearing tokens, the sequences and the attention work, and a callback that takes the time at every
optimizer step's end (after a CUDA synchronize). Figures:

  tokens/s       real tokens of the steps after the first `--warmup` ones / their wall time
  padding waste  pad positions / all positions, over every micro-batch the model saw
  attention x    attention score cells computed / needed (causal, per sequence). Padded batches with
                 SDPA compute every row to the batch's longest; padding-free batches with SDPA are one
                 row of all packed sequences, masked block-diagonally but computed in full; a varlen
                 flash-attention kernel computes only what is needed.
  peak memory    torch.cuda.max_memory_allocated with a GPU, else the worker's peak RSS

`--repeat N` runs each path N times (order alternating) and reports medians, every run in the JSON.
Other work on the same cores skews every figure: the load average is printed, and each run records the
CPU seconds other programs used while it ran (from /proc/stat, less the worker's own); with
`--max-other-cpu S` a run during which they used more than S seconds is discarded and run again (up
to `--attempts` tries, each logged), and `--wait-quiet S` waits before each run until the machine has
been nearly idle for S seconds. Results go into docs/benchmarks.md by hand; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# For bench/common.py. Appended, not prepended: the repository's labcycle/ folder alone is not the
# labcycle package (tasks/ is mapped into it at install time), and must not shadow an installed one.
sys.path.append(str(REPO))

from bench.common import load_average, machine, print_machine, source_state, write_results  # noqa: E402

PATHS = ("labcycle", "baseline", "labcycle-bs1", "labcycle-packed", "labcycle-unpacked-bs1")
PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets")
SYSTEM_PROMPT = ("I am an assistant trained with the LAB method. I answer questions about the documents I was "
                 "taught, carefully and in full sentences.")


class BenchError(RuntimeError):
    pass


# --- the synthetic data set ----------------------------------------------------------------------------

_ONSETS = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "br", "ch", "cl",
           "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck"]


def lexicon(rng: random.Random, size: int = 2500) -> list[str]:
    """Distinct pseudo-words of 1-4 syllables; index order is frequency rank (short words come first)."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        n = rng.choices((1, 2, 3, 4), weights=(4, 5, 3, 1))[0]
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))
        if w not in seen:
            seen.add(w)
            words.append(w)
    words.sort(key=len)  # frequent words are short, as in natural language
    return words


class TextMaker:
    """Sentences of Zipf-distributed pseudo-words, with commas, numbers and the odd capitalised name."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = lexicon(rng)
        self.cum = list(_cumulative([1.0 / (r + 2.7) for r in range(len(self.words))]))

    def words_(self, n: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum, k=n)

    def text(self, n_words: int, question: bool = False) -> str:
        out: list[str] = []
        left = n_words
        while left > 0:
            k = min(left, self.rng.randint(6, 24))
            ws = self.words_(k)
            for i in range(len(ws)):
                r = self.rng.random()
                if r < 0.04:
                    ws[i] = str(self.rng.randint(2, 2030))
                elif r < 0.08:
                    ws[i] = ws[i].capitalize()
            if k > 10 and self.rng.random() < 0.5:
                ws[k // 2] += ","
            ws[0] = ws[0].capitalize()
            end = "?" if question and left == k else "."
            out.append(" ".join(ws) + end)
            left -= k
        return " ".join(out)


def _cumulative(weights: list[float]):  # type: ignore[no-untyped-def]
    total = 0.0
    for w in weights:
        total += w
        yield total


def make_samples(n: int, seed: int, user_words: tuple[int, int], answer_words: tuple[int, int]) -> list[dict[str, Any]]:
    """n single-turn chat samples (system, user, assistant) with uniformly varied turn lengths."""
    rng = random.Random(seed)
    maker = TextMaker(rng)
    samples = []
    for _ in range(n):
        q = maker.text(rng.randint(*user_words), question=True)
        a = maker.text(rng.randint(*answer_words))
        samples.append({"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q},
                                     {"role": "assistant", "content": a}]})
    return samples


def make_knowledge_samples(n: int, seed: int, tokenizer_dir: Path, chunking: tuple[str, int],
                           max_length: int = 4096) -> list[dict[str, Any]]:
    """A knowledge phase as labcycle's mixer makes it, on real English text: `n` Q&A records over document
    chunks, then the mix's knowledge set of them (each Q&A as is, and a RAFT-style copy with 4 documents
    in context, p = 0.4 that its own chunk is among them, fewer where a copy would pass max_length:
    labcycle.tasks.mix.phases.phase_sets, default recipe), in the mix's shuffled order.

    The documents are CPython's own reference text (pydoc_data.topics: about 66,000 words of prose and
    code, on every Python install), cut by labcycle's chunker: `("tokens", N)` counts the student's
    tokens (chunking.tokenizer), `("words", N)` words (labcycle's default, 1,000 words). A question is
    8-20 words naming a passage of its chunk, the answer 2-6 of the chunk's sentences (20-150 words):
    the lengths of a LAB knowledge sample, not its quality."""
    import re

    from pydoc_data.topics import topics

    from labcycle.tasks.taxonomy.chunk import chunk_markdown, tokenizer_counter
    from labcycle.tasks.mix.card import length_counter
    from labcycle.tasks.mix.phases import Fit, phase_sets
    from labcycle.tasks.mix.recipe import Recipe

    text = "\n\n".join(f"# {name}\n\n{body}" for name, body in sorted(topics.items()))
    unit, size = chunking
    count = tokenizer_counter(tokenizer_dir) if unit == "tokens" else None
    chunks = [c.text for c in chunk_markdown(text, "python-reference.md", max_size=size, overlap=size // 10, count=count)]
    rng = random.Random(seed)
    records = []
    for i in range(n):
        chunk = rng.choice(chunks)
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(chunk.split())) if len(s.split()) >= 4] or [chunk]
        start = rng.randrange(len(sentences))
        answer = " ".join(sentences[start:start + rng.randint(2, 6)])
        answer = " ".join(answer.split()[:rng.randint(20, 150)])
        about = " ".join(sentences[start].split()[:rng.randint(5, 14)])
        question = f"What does the reference say about {about.rstrip('.,:;')}?"
        records.append({"id": f"k{i}", "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                                    {"role": "user", "content": question},
                                                    {"role": "assistant", "content": answer}],
                        "metadata": {"kind": "knowledge", "leaf_id": "knowledge/python/reference", "context": chunk}})
    recipe = Recipe(seed=seed, tokenizer=str(tokenizer_dir), max_length=max_length)
    _, count = length_counter(recipe)
    phase = phase_sets(records, [], recipe, {"knowledge": [], "skills": []},
                       Fit(lambda messages: count([messages])[0], max_length))["knowledge"]
    return [{"messages": r["messages"]} for r in phase["shuffled"]]


# --- the model --------------------------------------------------------------------------------------------

def build_model(out: Path, args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    """A random-init Llama and its tokenizer in `out`; returns what was built."""
    from labcycle.models import build_tiny

    max_positions = max(8192, args.seq_len)
    if args.intermediate is None:
        build_tiny(out, seed=args.seed, texts=texts, hidden_size=args.hidden, layers=args.layers, heads=args.heads,
                   vocab_size=args.vocab, max_positions=max_positions)
    else:
        # build_tiny fixes the MLP at 2 x hidden and sizes the embedding to the trained vocabulary; a
        # Llama-1B-like model needs its own MLP width, and the LM head's cost needs the full vocabulary
        # even where the synthetic corpus yields fewer BPE merges (the extra rows are never looked up).
        import torch
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

        from labcycle.models import build_tokenizer

        out.mkdir(parents=True, exist_ok=True)
        tokenizer = build_tokenizer(texts, args.vocab)
        torch.manual_seed(args.seed)
        config = LlamaConfig(
            vocab_size=max(len(tokenizer), args.vocab), hidden_size=args.hidden, intermediate_size=args.intermediate,
            num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads or args.heads,
            head_dim=args.hidden // args.heads, max_position_embeddings=max_positions,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False, torch_dtype="bfloat16")
        device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 1B parameters: seconds on a GPU
        with torch.device(device):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                   pad_token_id=tokenizer.pad_token_id)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        del model
    return describe_model(out)


def describe_model(model_dir: Path) -> dict[str, Any]:
    from transformers import AutoConfig, AutoTokenizer

    c = AutoConfig.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    kv = c.num_key_value_heads or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_layer = (c.hidden_size * head_dim * (c.num_attention_heads + 2 * kv) + c.num_attention_heads * head_dim * c.hidden_size
                 + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size)
    params = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2) + c.hidden_size
    return {"dir": str(model_dir), "hidden": c.hidden_size, "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
            "kv_heads": kv, "head_dim": head_dim, "intermediate": c.intermediate_size, "vocab": c.vocab_size,
            "tokenizer_vocab": len(tok), "parameters": params}


def token_lengths(model_dir: Path, samples: list[dict[str, Any]]) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [len(tok.apply_chat_template(s["messages"], tokenize=True, return_dict=True)["input_ids"]) for s in samples]


# --- one measured run (its own process) ------------------------------------------------------------------

class Meter:
    """What the model was given per micro-batch, and the time at every optimizer step's end."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.batches: list[dict[str, int]] = []
        self.steps: list[tuple[int, float, int]] = []  # (global step, time, micro-batches so far)
        self.train_begin: float | None = None
        self.attn_impl: str | None = None
        self.trainer_args: dict[str, Any] = {}

    def record(self, inputs: dict[str, Any], pad_id: int | None) -> None:
        import torch

        ids = inputs["input_ids"]
        positions = ids.numel()
        if "attention_mask" in inputs:
            rows = inputs["attention_mask"].sum(-1).tolist()  # one sample per row
            seqs = [int(r) for r in rows]
            real = sum(seqs)
            row_len = ids.shape[-1]
            computed = len(seqs) * row_len * (row_len + 1) // 2
        else:  # padding-free: one row of packed sequences; a pad tail (pad_to_multiple_of) would be pad ids
            real = int((ids != pad_id).sum()) if pad_id is not None else positions
            cu = inputs.get("cu_seq_lens_q")
            if cu is None:
                starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist() + [ids.shape[-1]]
                cu = torch.tensor(starts)
            seqs = [int(x) for x in cu.diff().tolist() if x > 0]
            if real < positions:  # drop the pad tail's one-token "sequences"
                seqs = seqs[: len(seqs) - (positions - real)] if len(seqs) > positions - real else seqs
            computed = positions * (positions + 1) // 2
        needed = sum(s * (s + 1) // 2 for s in seqs)
        if self.attn_impl and "flash" in self.attn_impl:
            computed = needed  # varlen kernels skip padding and other sequences
        labels = inputs.get("labels")
        loss_tokens = int((labels != -100).sum()) if labels is not None else real
        self.batches.append({"positions": positions, "real": real, "pad": positions - real, "loss_tokens": loss_tokens,
                             "sequences": len(seqs), "attn_computed": computed, "attn_needed": needed,
                             "longest": max(seqs) if seqs else 0, "row_length": int(ids.shape[-1]), "rows": int(ids.shape[0])})

    def callback(self):  # type: ignore[no-untyped-def]
        from transformers import TrainerCallback

        meter = self

        class StepClock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                meter.sync()
                meter.train_begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                meter.sync()
                meter.steps.append((state.global_step, time.perf_counter(), len(meter.batches)))

        return StepClock()

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def summary(self, warmup: int) -> dict[str, Any]:
        if len(self.steps) <= warmup:
            raise BenchError(f"only {len(self.steps)} optimizer steps ran; need more than --warmup {warmup}")
        # Each step's time runs from the previous step's end, so it includes fetching and collating its
        # batches and the previous step's logging; the first step's runs from the start of training.
        marks = [(0, self.train_begin, 0), *self.steps]
        step_times = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
        (_, t0, b0), (_, t1, b1) = marks[warmup], marks[-1]
        timed = self.batches[b0:b1]
        total = {k: sum(b[k] for b in self.batches) for k in ("positions", "real", "pad", "loss_tokens", "sequences",
                                                              "attn_computed", "attn_needed")}
        seconds = t1 - t0
        return {
            "steps": len(self.steps), "timed_steps": len(self.steps) - warmup, "micro_batches": len(self.batches),
            "seconds": seconds,
            "tokens_per_s": sum(b["real"] for b in timed) / seconds,
            "positions_per_s": sum(b["positions"] for b in timed) / seconds,
            "loss_tokens_per_s": sum(b["loss_tokens"] for b in timed) / seconds,
            "sequences_per_s": sum(b["sequences"] for b in timed) / seconds,
            "step_seconds": [round(s, 3) for s in step_times],
            "padding_waste": total["pad"] / total["positions"],
            "loss_token_share": total["loss_tokens"] / total["real"],
            "attention_work": total["attn_computed"] / total["attn_needed"],
            "tokens_per_step": total["real"] / len(self.steps),
            "sequences_per_step": total["sequences"] / len(self.steps),
            "mean_row_length": statistics.mean(b["row_length"] for b in self.batches),
            "totals": total,
            "attn_implementation": self.attn_impl,
        }


def _instrumented(meter: Meter):  # type: ignore[no-untyped-def]
    """SFTTrainer plus the meter: records each micro-batch's inputs in compute_loss, clocks each step."""
    from trl import SFTTrainer

    class MeteredSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), meter.callback()]
            super().__init__(*args, **kwargs)
            meter.attn_impl = getattr(self.model.config, "_attn_implementation", None)
            # What the trainer really uses (train_phase may derive them from the settings and the data).
            meter.trainer_args = {"per_device_train_batch_size": self.args.per_device_train_batch_size,
                                  "gradient_accumulation_steps": self.args.gradient_accumulation_steps,
                                  "packing": self.args.packing, "padding_free": self.padding_free,
                                  "gradient_checkpointing": self.args.gradient_checkpointing,
                                  "optim": str(self.args.optim), "bf16": self.args.bf16,
                                  "assistant_only_loss": self.args.assistant_only_loss}
            self._bench_pad_id = self.processing_class.pad_token_id

        def compute_loss(self, model, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
            if model.training:
                meter.record(inputs, self._bench_pad_id)
            return super().compute_loss(model, inputs, *args, **kwargs)

    return MeteredSFTTrainer


def worker(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import resource
    import warnings

    import torch
    import trl
    from transformers.utils import logging as hf_logging

    from labcycle.tasks.tune import trainer as tune_trainer
    from labcycle.tasks.tune.settings import KNOWLEDGE_DEFAULTS, TuneSettings

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    meter = Meter(cuda)
    metered = _instrumented(meter)
    work = Path(spec["work_dir"])
    batch, accum = spec["batch_size"], spec["gradient_accumulation"]
    if spec["path"] == "labcycle-bs1":
        batch, accum = 1, batch * accum
    from dataclasses import replace

    phase = replace(KNOWLEDGE_DEFAULTS, max_steps=spec["steps"], batch_size=batch, gradient_accumulation=accum,
                    max_length=spec["max_length"], learning_rate=spec["learning_rate"], seed=spec["seed"],
                    save_steps=spec["steps"] + 1000)
    if spec["path"] == "labcycle-packed":
        phase = replace(phase, packing=True)
    elif spec["path"] == "labcycle-unpacked-bs1":
        batch, accum = 1, batch * accum
        phase = replace(phase, packing=False, batch_size=batch, gradient_accumulation=accum)
    settings = TuneSettings(method=spec["method"], knowledge=phase)
    started = time.perf_counter()
    extra: dict[str, Any] = {"notes": []}
    if spec["path"].startswith("labcycle"):
        import importlib.util

        from labcycle.tasks.tune import card

        if importlib.util.find_spec("matplotlib") is None:
            # The loss plot is drawn after training, outside the timed steps; a GPU machine may lack matplotlib.
            card.write_loss_plot = lambda history, dest, title: dest
            extra["notes"].append("matplotlib is not installed: train_phase's loss plot was skipped")
        # train_phase imports SFTTrainer from trl when called: the metered subclass takes its place.
        original = trl.SFTTrainer
        trl.SFTTrainer = metered
        try:
            result = tune_trainer.train_phase("knowledge", Path(spec["model"]), Path(spec["data"]), work, settings)
            extra["train_phase_metrics"] = result["metrics"]
            extra["train_phase_samples"] = result.get("samples")
            extra["loss_on"] = result["loss_on"]
        except Exception as e:  # noqa: BLE001 - after the last step only saving and the model card remain
            if len(meter.steps) < spec["steps"]:
                raise
            extra["notes"].append(f"train_phase failed after training (not timed): {type(e).__name__}: {e}")
        finally:
            trl.SFTTrainer = original
    else:
        extra.update(_baseline(spec, settings, metered, work))
    if not meter.batches:
        raise BenchError(f"{spec['path']}: no micro-batch was recorded (did train_phase stop using trl.SFTTrainer?)")
    out = meter.summary(spec["warmup"])
    out.update(extra)
    out["path"], out["method"] = spec["path"], spec["method"]
    out["settings_batch_size"], out["settings_gradient_accumulation"] = batch, accum
    out["trainer_args"] = meter.trainer_args
    out["batch_size"] = meter.trainer_args.get("per_device_train_batch_size", batch)
    out["gradient_accumulation"] = meter.trainer_args.get("gradient_accumulation_steps", accum)
    out["setup_s"] = (meter.train_begin or started) - started  # model load, tokenizing and packing: not timed
    out["wall_s"] = time.perf_counter() - started
    if cuda:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        out["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        out["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out["peak_memory_kind"] = "peak RSS of the worker process"
    out["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    Path(spec["out"]).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


def _baseline(spec: dict[str, Any], settings: Any, metered: Any, work: Path) -> dict[str, Any]:
    """Plain SFTTrainer: SFTConfig defaults except what a fair comparison must hold equal."""
    from dataclasses import replace

    import torch
    from datasets import Dataset
    from trl import SFTConfig

    from labcycle.tasks.tune import data as tune_data
    from labcycle.tasks.tune import trainer as tune_trainer
    from transformers import AutoTokenizer

    gpu = tune_trainer.has_gpu()
    dtype = tune_trainer.compute_dtype(settings)
    p = settings.knowledge
    gc = p.gradient_checkpointing if isinstance(p.gradient_checkpointing, bool) else gpu  # labcycle's choice
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    masks = tune_data.uses_assistant_masks(tokenizer)
    rows = [json.loads(line) for line in Path(spec["data"]).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not masks:
        rows = [tune_data.to_prompt_completion(r) for r in rows]
    args = SFTConfig(
        output_dir=str(work / "baseline"),
        max_length=p.max_length,
        per_device_train_batch_size=p.batch_size,
        gradient_accumulation_steps=p.gradient_accumulation,
        learning_rate=p.learning_rate,
        max_steps=p.max_steps,
        seed=p.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16 and gpu,
        use_cpu=not gpu,
        gradient_checkpointing=gc,
        assistant_only_loss=masks,
        save_strategy="no",
        report_to="none",
    )
    torch.manual_seed(p.seed)
    # A plain user loads the model with transformers' default attention (sdpa); labcycle's own choice
    # (tuning.attention auto: flash_attention_2 where a GPU has it) is part of what the labcycle path measures.
    model = tune_trainer.load_student(Path(spec["model"]), replace(settings, attention="sdpa"), args.gradient_checkpointing)
    trainer = metered(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                      peft_config=tune_trainer.lora_config(settings))
    trainer.train()
    return {"loss_on": "assistant turns" if masks else "the last assistant turn (prompt/completion)"}


# --- the parent: build once, run each path in its own process ----------------------------------------------

def measure(path: str, args: argparse.Namespace, model_dir: Path, data: Path, scratch: Path, tag: str) -> dict[str, Any]:
    tag = f"{args.method}-{path}-{tag}"
    work = scratch / tag
    shutil.rmtree(work, ignore_errors=True)  # a run again starts afresh (train_phase would resume or return its result)
    spec = {"path": path, "method": args.method, "model": str(model_dir), "data": str(data), "work_dir": str(work),
            "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
            "gradient_accumulation": args.grad_accum, "max_length": args.seq_len, "learning_rate": args.learning_rate,
            "seed": args.seed, "out": str(scratch / f"{tag}.json")}
    spec_path = scratch / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    log = scratch / f"{tag}.log"
    load0 = load_average()
    busy0, child0 = _busy_seconds(), _children_cpu_seconds()
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                              stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, timeout=args.run_timeout)
    busy1, child1 = _busy_seconds(), _children_cpu_seconds()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise BenchError(f"{path} run {tag} failed (exit {proc.returncode}); log tail:\n{tail}")
    out = json.loads(Path(spec["out"]).read_text(encoding="utf-8"))
    out["load_1min"] = [load0, load_average()]
    out["worker_cpu_s"] = round(child1 - child0, 2)
    if busy0 is not None and busy1 is not None:
        # CPU time the whole machine used while the worker ran, less the worker's own: other programs on
        # the same cores (the benchmark's parent process only waits). Compare runs with little of it.
        out["other_cpu_s"] = round(busy1 - busy0 - out["worker_cpu_s"], 2)
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
        (args.keep_logs / log.name).write_text(log.read_text(errors="replace"), encoding="utf-8")
    return out


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux), else None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(seconds: float, limit_s: float = 900) -> None:
    """Wait until the machine has been nearly idle (under 0.1 core busy) for `seconds`, or limit_s passed."""
    deadline = time.monotonic() + limit_s
    quiet_since = time.monotonic()
    last = _busy_seconds()
    if last is None:
        return
    while time.monotonic() < deadline:
        time.sleep(1)
        now = _busy_seconds()
        if now is None:
            return
        if now - last > 0.1:
            quiet_since = time.monotonic()
        last = now
        if time.monotonic() - quiet_since >= seconds:
            return
    print(f"  (the machine did not become quiet within {limit_s:.0f} s; running anyway)", flush=True)


def _children_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("tokens_per_s", "positions_per_s", "loss_tokens_per_s", "sequences_per_s", "seconds", "padding_waste",
            "loss_token_share", "attention_work", "tokens_per_step", "sequences_per_step", "mean_row_length",
            "peak_memory_gib", "setup_s")
    if any(r["totals"] != runs[0]["totals"] for r in runs):
        # Same seed, same data, same settings: every repeat must feed the model the same batches.
        raise BenchError(f"{runs[0]['path']}: the repeats saw different batches: {[r['totals'] for r in runs]}")
    row = {k: statistics.median(r[k] for r in runs) for k in keys}
    row["runs_tokens_per_s"] = [round(r["tokens_per_s"], 1) for r in runs]
    row["other_cpu_s"] = statistics.median(r["other_cpu_s"] for r in runs) if all("other_cpu_s" in r for r in runs) else None
    for k in ("batch_size", "gradient_accumulation", "attn_implementation", "peak_memory_kind", "device", "loss_on",
              "steps", "timed_steps"):
        row[k] = runs[0].get(k)
    row["runs"] = runs
    return row


def print_table(out: dict[str, Any]) -> None:
    print_machine(out)
    mod, d = out["model"], out["data"]
    name = "random Llama" if out.get("built_model") else Path(mod["dir"]).name
    print(f"model: {name}, {mod['parameters'] / 1e6:.1f}M parameters (hidden {mod['hidden']}, {mod['layers']} layers, "
          f"{mod['heads']} heads, MLP {mod['intermediate']}, vocab {mod['vocab']}), method {out['method']}")
    what = f"knowledge phase (Q&A + RAFT copies, chunking {d['chunking']})" if d.get("kind") == "knowledge" else "synthetic"
    print(f"data: {d['samples']} {what} samples, {d['tokens_min']}-{d['tokens_max']} tokens (mean {d['tokens_mean']:.0f}, chat "
          f"template included), max_length {out['max_length']}"
          + (f"; {d['left_out_longer_than_max_length']} longer samples left out" if d["left_out_longer_than_max_length"] else ""))
    print(f"steps: {out['steps']} ({out['warmup']} not timed), batch {out['batch_size']} x accumulation {out['grad_accum']}, "
          f"median of {out['repeat']} runs")
    print()
    rows = [("path", "batch x acc", "tokens/s", "vs baseline", "padding waste", "loss share", "attn work x",
             "tokens/step", "seqs/step", "peak GiB", "runs tok/s", "other CPU s")]
    base = out["results"].get("baseline")
    for name, r in out["results"].items():
        rows.append((name, f"{r['batch_size']} x {r['gradient_accumulation']}", f"{r['tokens_per_s']:.0f}",
                     f"{r['tokens_per_s'] / base['tokens_per_s']:.3f}" if base else "-", f"{100 * r['padding_waste']:.2f}%",
                     f"{100 * r['loss_token_share']:.1f}%", f"{r['attention_work']:.2f}", f"{r['tokens_per_step']:.0f}",
                     f"{r['sequences_per_step']:.1f}", f"{r['peak_memory_gib']:.2f}",
                     ", ".join(f"{x:.0f}" for x in r["runs_tokens_per_s"]),
                     "-" if r["other_cpu_s"] is None else f"{r['other_cpu_s']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    for d in out.get("discarded_runs", []):
        print(f"  discarded and run again: {d['path']} run {d['run']} ({d['other_cpu_s']} CPU s of other work, "
              f"{d['tokens_per_s']:.0f} tok/s)")
    kind = next(iter(out["results"].values()))["peak_memory_kind"]
    print(f"(peak memory: {kind}; attention implementation: {next(iter(out['results'].values()))['attn_implementation']})")


def parse_range(text: str) -> tuple[int, int]:
    lo, hi = (int(x) for x in text.split(","))
    if not 1 <= lo <= hi:
        raise ValueError(text)
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="an existing model folder (with tokenizer and chat template) instead of building one")
    ap.add_argument("--save-model", type=Path, metavar="DIR",
                    help="build the model into DIR and keep it; reused when DIR already holds one (e.g. across methods)")
    ap.add_argument("--hidden", type=int, default=512, help="hidden size of the built model (default 512)")
    ap.add_argument("--layers", type=int, default=4, help="layers (default 4)")
    ap.add_argument("--heads", type=int, default=8, help="attention heads (default 8; head_dim = hidden / heads)")
    ap.add_argument("--kv-heads", type=int, help="key/value heads (default: as --heads); needs --intermediate")
    ap.add_argument("--intermediate", type=int, help="MLP width (default: 2 x hidden, as build_tiny)")
    ap.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary size (default 1024)")
    ap.add_argument("--data", choices=("synthetic", "knowledge"), default="synthetic",
                    help="synthetic: pseudo-word chat samples (default); knowledge: a knowledge phase as labcycle's "
                         "mixer makes it, Q&A plus RAFT copies over real text (make_knowledge_samples; needs --model)")
    ap.add_argument("--chunking", default="tokens:500",
                    help="with --data knowledge: how documents are cut, tokens:N (the model's tokens) or words:N "
                         "(labcycle's default chunking is words:1000) (default tokens:500)")
    ap.add_argument("--samples", type=int, default=512,
                    help="synthetic chat samples, or with --data knowledge Q&A records (the phase holds twice as many) (default 512)")
    ap.add_argument("--user-words", default="20,300", help="user turn length range in words (default 20,300)")
    ap.add_argument("--answer-words", default="20,600", help="answer length range in words (default 20,600)")
    ap.add_argument("--method", choices=("qlora", "lora"), default="qlora", help="adapter method for both paths (default qlora)")
    ap.add_argument("--paths", default="labcycle,baseline", help=f"comma-separated, from {', '.join(PATHS)} (default labcycle,baseline)")
    ap.add_argument("--seq-len", type=int, default=2048, help="max_length of both paths (default 2048)")
    ap.add_argument("--batch-size", type=int, default=2, help="per-device batch size of both paths (default 2)")
    ap.add_argument("--grad-accum", type=int, default=2, help="gradient accumulation of both paths (default 2)")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run (default 12)")
    ap.add_argument("--warmup", type=int, default=1, help="first steps not timed (default 1)")
    ap.add_argument("--learning-rate", type=float, default=2e-4, help="both paths (default 2e-4, labcycle's knowledge phase)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each path; medians are reported (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the trainers (default 0)")
    ap.add_argument("--device-check", action="store_true", help="stop unless a CUDA device is available (GPU runs)")
    ap.add_argument("--max-other-cpu", type=float, metavar="S",
                    help="run a measurement again (see --attempts) when other programs used more than S CPU seconds during it")
    ap.add_argument("--attempts", type=int, default=3, help="with --max-other-cpu: tries per measurement; the last is kept (default 3)")
    ap.add_argument("--wait-quiet", type=float, metavar="S",
                    help="before each run, wait (at most 15 minutes) until other programs have used under 0.1 core for S seconds")
    ap.add_argument("--run-timeout", type=float, default=None, help="seconds one run may take before it is killed")
    ap.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy every worker's log into DIR")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON to OUT")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        ap.error(f"--paths takes names from {', '.join(PATHS)}")
    try:
        user_words, answer_words = parse_range(args.user_words), parse_range(args.answer_words)
    except ValueError:
        ap.error("--user-words and --answer-words take LOW,HIGH with 1 <= LOW <= HIGH")
    if min(args.steps, args.batch_size, args.grad_accum, args.repeat, args.samples, args.seq_len, args.attempts) < 1 or args.warmup < 0:
        ap.error("sizes, --steps and --repeat must be positive")
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")
    if args.hidden % args.heads or (args.kv_heads and args.heads % args.kv_heads):
        ap.error("--hidden must be a multiple of --heads, and --heads of --kv-heads")
    if args.kv_heads and args.intermediate is None:
        ap.error("--kv-heads needs --intermediate")
    unit, _, size = args.chunking.partition(":")
    if unit not in ("tokens", "words") or not size.isdigit() or int(size) < 10:
        ap.error("--chunking takes tokens:N or words:N, N at least 10")
    chunking = (unit, int(size))
    if args.data == "knowledge" and not args.model:
        ap.error("--data knowledge needs --model (a real tokenizer makes real lengths)")
    load_start = load_average()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    elif args.device_check:
        print("error: --device-check: no CUDA device is visible to torch "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="labcycle-bench-train-") as tmp:
        scratch = Path(tmp)
        os.environ.setdefault("HF_HOME", str(scratch / "hf"))
        samples = make_samples(args.samples, args.seed, user_words, answer_words)
        if args.model:
            model_dir = args.model
        else:
            model_dir = args.save_model or scratch / "model"
            if (model_dir / "config.json").is_file():
                print(f"reusing the model in {model_dir}", flush=True)
            else:
                print("building the model ...", flush=True)
                t0 = time.monotonic()
                texts = [m["content"] for s in samples[:300] for m in s["messages"]]
                partial = model_dir.with_name(model_dir.name + ".partial")  # a killed build is never reused
                shutil.rmtree(partial, ignore_errors=True)
                build_model(partial, args, texts)
                partial.rename(model_dir)
                print(f"built in {time.monotonic() - t0:.0f} s", flush=True)
        model = describe_model(model_dir)
        if args.data == "knowledge":
            samples = make_knowledge_samples(args.samples, args.seed, model_dir, chunking, args.seq_len)
        all_lengths = token_lengths(model_dir, samples)
        # train_phase leaves out samples longer than max_length (packing would cut off their answers), while
        # TRL truncates them: both paths get only the samples that fit, so they train on the same data.
        kept = [(s, n) for s, n in zip(samples, all_lengths) if n <= args.seq_len]
        if not kept:
            print(f"error: every sample is longer than --seq-len {args.seq_len}", file=sys.stderr)
            return 1
        lengths = [n for _, n in kept]
        left_out = len(samples) - len(kept)
        data = scratch / "train.jsonl"
        data.write_text("".join(json.dumps(s) + "\n" for s, _ in kept), encoding="utf-8")
        print(f"model: {model['parameters'] / 1e6:.1f}M parameters; data: {len(lengths)} samples, mean {statistics.mean(lengths):.0f} "
              f"tokens" + (f" ({left_out} longer than --seq-len {args.seq_len} left out)" if left_out else ""), flush=True)
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
        discarded: list[dict[str, Any]] = []

        def results(partial: bool) -> dict[str, Any]:
            medians = {p: median_row(rs) for p, rs in runs.items() if rs}
            out = {
                "benchmark": "tuning throughput and padding",
                "command": " ".join(["python", "bench/train.py", *(argv if argv is not None else sys.argv[1:])]),
                "partial": partial,
                "method": args.method, "max_length": args.seq_len, "batch_size": args.batch_size,
                "grad_accum": args.grad_accum, "steps": args.steps, "warmup": args.warmup,
                "learning_rate": args.learning_rate, "repeat": args.repeat, "seed": args.seed,
                "model": model, "built_model": not args.model,
                "data": {"samples": len(lengths), "tokens_total": sum(lengths), "tokens_min": min(lengths),
                         "tokens_max": max(lengths), "tokens_mean": statistics.mean(lengths),
                         "tokens_median": statistics.median(lengths),
                         "left_out_longer_than_max_length": left_out, "kind": args.data,
                         **({"chunking": args.chunking} if args.data == "knowledge" else
                            {"user_words": user_words, "answer_words": answer_words})},
                "source": source_state(),
                "machine": {**machine(PACKAGES), "gpu": gpu, "load_average_1min": {"start": load_start, "end": load_average()}},
                "results": medians,
                "discarded_runs": discarded,
                "goals": goals(medians),
            }
            return out

        try:
            for i in range(args.repeat):
                for path in (paths if i % 2 == 0 else list(reversed(paths))):
                    for attempt in range(args.attempts):
                        if args.wait_quiet:
                            wait_quiet(args.wait_quiet)
                        r = measure(path, args, model_dir, data, scratch, f"r{i + 1}")
                        other = r.get("other_cpu_s")
                        if (args.max_other_cpu is None or other is None or other <= args.max_other_cpu
                                or attempt == args.attempts - 1):
                            break
                        print(f"  run {i + 1}/{args.repeat} {path:12s}: discarded and run again: other programs used "
                              f"{other} CPU s during it (--max-other-cpu {args.max_other_cpu})", flush=True)
                        discarded.append({"path": path, "run": i + 1, "other_cpu_s": other, "tokens_per_s": r["tokens_per_s"]})
                    runs[path].append(r)
                    print(f"  run {i + 1}/{args.repeat} {path:12s}: {r['tokens_per_s']:8.1f} tok/s, padding {100 * r['padding_waste']:5.2f}%, "
                          f"{r['timed_steps']} steps in {r['seconds']:.1f} s, peak {r['peak_memory_gib']:.2f} GiB, "
                          f"load {r['load_1min'][1]}, other work {r.get('other_cpu_s', '?')} CPU s", flush=True)
                    if args.json:  # kept if a later run fails or the machine's time runs out
                        args.json.parent.mkdir(parents=True, exist_ok=True)
                        args.json.write_text(json.dumps(results(partial=True), indent=2) + "\n", encoding="utf-8")
            out = results(partial=False)
        except (BenchError, subprocess.TimeoutExpired) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print_table(out)
    print()
    for line in out["goals"]["lines"]:
        print("goal, " + line)
    write_results(args.json, out)
    return 0


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals: padding waste < 2% and tokens/s at least the baseline's."""
    out: dict[str, Any] = {"lines": []}
    for name in ("labcycle", "labcycle-bs1", "labcycle-packed"):
        if name not in results:
            continue
        r = results[name]
        waste = r["padding_waste"]
        line = f"{name}: padding waste < 2%: {'met' if waste < 0.02 else 'NOT met'} ({100 * waste:.2f}%)"
        out[name] = {"padding_waste_met": waste < 0.02}
        if "baseline" in results:
            ratio = r["tokens_per_s"] / results["baseline"]["tokens_per_s"]
            out[name].update(ratio=ratio, tokens_per_s_met=ratio >= 1)
            line += f"; tokens/s >= baseline: {'met' if ratio >= 1 else 'NOT met'} ({ratio:.3f}x)"
        out["lines"].append(line)
    return out


if __name__ == "__main__":
    sys.exit(main())
