"""lm-evaluation-harness as the regression backend (`evaluation.regression.backend: lm-eval`).

The suites are lm-eval task YAMLs: labcycle's own (tasks/evaluate/suites/, schemas/eval-suite.schema.json)
or any single task of the harness's format with local data (MMLU, ARC, HellaSwag ...: `include:`,
`!function`, `process_docs`, `metric_list` all work, since the harness itself reads them). Each side is
scored by lm-eval's `local-completions` model against the evaluation's vLLM server (base, or the candidate
adapter's served name on the same server; a whole-model candidate on its own server), with the model's
local tokenizer folder, and the harness's per-document results become the same report entries the
labcycle backend writes (regression.py), so the gate and the report read them unchanged:

- multiple_choice: `accuracy` = the harness's acc, `acc_norm` its acc_norm; per document the choices'
  log-likelihoods and each side's pick.
- loglikelihood_rolling: `perplexity` = exp(-sum of the documents' log-likelihoods / tokens scored), with
  every token scored (the harness predicts the first from the end-of-text token), and `word_perplexity`
  per whitespace word.

Relative `dataset_kwargs.data_files` are made relative to the YAML (the harness would read them relative
to the working directory). lm_eval is imported only here, inside the stage: `pip install 'labcycle[lmeval]'`.

vLLM serves the harness's requests as it serves ours: `/v1/completions` with `echo: true`, `logprobs: 1`,
`max_tokens: 1` on token-id prompts returns every prompt token's log-probability (vLLM maps echo+logprobs to
prompt logprobs). On CPU with LoRA on, only one such request may be in flight (loglik.py): the harness's
`num_concurrent` is the stage's score concurrency and its batch size 1.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcycle.errors import LabcycleError

SIDES = ("base", "candidate")
OUTPUT_TYPES = ("multiple_choice", "loglikelihood_rolling")
INSTALL = "pip install 'labcycle[lmeval]'"


@dataclass(frozen=True)
class Endpoint:
    """One side as lm-eval's local-completions model sees it."""

    base_url: str  # the server's OpenAI-compatible base URL (.../v1)
    model: str  # the served name: the base, or the candidate adapter's
    tokenizer: Path  # the local model folder whose tokenizer the server uses
    max_model_len: int  # the server's context


@dataclass(frozen=True)
class HarnessTask:
    """One task YAML, read by lm-eval's own loader (includes merged, !function resolved)."""

    name: str
    path: Path
    output_type: str  # multiple_choice | loglikelihood_rolling
    config: dict[str, Any] = field(repr=False, hash=False, compare=False)  # handed to lm-eval as is
    digest: str = ""  # the YAML, what it includes, and its data files
    limit: int | None = None  # the first `limit` documents; None: all

    @property
    def metric(self) -> str:
        return "accuracy" if self.output_type == "multiple_choice" else "perplexity"


@dataclass(frozen=True)
class HarnessSettings:
    concurrency: int = 1  # scoring requests in flight (1 on a CPU server with LoRA: loglik.py)
    timeout_s: int = 600
    api_key: str | None = None


@dataclass(frozen=True)
class DocScores:
    """One document's result for one side."""

    loglikelihoods: tuple[float, ...] = ()  # multiple_choice: per choice
    pick: int | None = None
    correct_norm: bool = False  # the harness's acc_norm for this document
    loglikelihood: float = 0.0  # rolling: the whole text's
    tokens: int = 0  # rolling: tokens scored
    words: int = 0


@dataclass(frozen=True)
class SideScores:
    """A task's results for one side."""

    docs: tuple[DocScores, ...]
    golds: tuple[int | None, ...]
    doc_ids: tuple[int, ...]


def require() -> None:
    """LabcycleError when lm-eval (with its API-model dependencies) is not installed."""
    from importlib.util import find_spec

    missing = [m for m in ("lm_eval", "tenacity", "aiohttp") if find_spec(m) is None]
    if missing:
        raise LabcycleError(f"evaluation.regression.backend lm-eval needs lm-evaluation-harness ({', '.join(missing)} "
                            f"not installed): {INSTALL}")


def _quiet() -> None:
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _data_files(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        return value if "://" in value or Path(value).is_absolute() else str((base / value).resolve())
    if isinstance(value, list):
        return [_data_files(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _data_files(v, base) for k, v in value.items()}
    return value


def _files(value: Any) -> list[Path]:
    if isinstance(value, str):
        return [Path(value)] if "://" not in value else []
    if isinstance(value, list):
        return [f for v in value for f in _files(v)]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _files(v)]
    return []


def load_task(path: str | Path, limit: int | None = None) -> HarnessTask:
    """One task YAML, checked before any server starts: a mapping naming its `task`, an output type labcycle
    can report (multiple_choice or loglikelihood_rolling) and local data files that exist."""
    require()
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(path)
    if not path.is_file():
        raise LabcycleError("regression suite not found; point evaluation.suites at lm-evaluation-harness task YAML "
                            "files", where=str(path))
    try:
        config = load_yaml(path, resolve_func=True, recursive=True)
    except Exception as exc:  # noqa: BLE001  yaml errors, a missing include or !function module
        raise LabcycleError(f"lm-eval cannot read this task ({type(exc).__name__}: {exc})", where=str(path)) from None
    if "group" in config and not isinstance(config.get("task"), str):
        raise LabcycleError("a group YAML (group: with a task list) is not supported here: list each task's YAML in "
                            "evaluation.suites, or write the benchmark as one task over one data file", where=str(path))
    name = config.get("task")
    if not isinstance(name, str) or not name or "/" in name:
        raise LabcycleError("a task YAML needs `task:`, a name without '/'", where=str(path))
    output_type = config.get("output_type", "generate_until")
    if output_type not in OUTPUT_TYPES:
        raise LabcycleError(f"output_type {output_type!r} is not supported: the regression report holds accuracy "
                            "(multiple_choice) and perplexity (loglikelihood_rolling)", where=str(path))
    config = dict(config)
    if output_type == "loglikelihood_rolling":
        config.setdefault("doc_to_text", "")  # labcycle's suites leave it out: the text scored is doc_to_target
    if "test_split" not in config and "validation_split" not in config:
        config["test_split"] = "test"  # labcycle's suites' default; the harness has none
    kwargs = dict(config.get("dataset_kwargs") or {})
    files: list[Path] = []
    if "data_files" in kwargs:
        kwargs["data_files"] = _data_files(kwargs["data_files"], path.parent)
        config["dataset_kwargs"] = kwargs
        files = _files(kwargs["data_files"])
        for f in files:
            if not f.is_file():
                raise LabcycleError(f"data file not found: {f} (relative data_files are read next to the YAML)",
                                    where=str(path))
    h = hashlib.sha256(path.read_bytes())
    for f in files:
        h.update(f.read_bytes())
    h.update(repr(sorted((k, repr(v)) for k, v in config.items() if not callable(v))).encode())
    return HarnessTask(name=name, path=path, output_type=output_type, config=config, digest=h.hexdigest()[:16],
                       limit=limit)


def _lm(endpoint: Endpoint, settings: HarnessSettings) -> Any:
    from lm_eval.api.registry import get_model

    from labcycle.teacher.openai_client import resolve_api_key

    return get_model("local-completions")(
        model=endpoint.model, base_url=endpoint.base_url.rstrip("/") + "/completions",
        tokenizer=str(endpoint.tokenizer), tokenizer_backend="huggingface", tokenized_requests=True,
        # The prompt plus the one generated token fit the server's context.
        max_length=max(16, endpoint.max_model_len - 2), num_concurrent=settings.concurrency, batch_size=1,
        max_retries=3, timeout=settings.timeout_s,
        header={"Authorization": f"Bearer {resolve_api_key(settings.api_key)}"})


def _float(value: Any) -> float:
    while isinstance(value, (list, tuple)):
        value = value[0]
    return float(value)


def _side(lm: Any, task: HarnessTask, samples: Sequence[dict[str, Any]]) -> SideScores:
    docs, golds, ids = [], [], []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        ids.append(int(sample["doc_id"]))
        resps = sample.get("filtered_resps") or sample.get("resps")
        if task.output_type == "multiple_choice":
            lls = tuple(_float(r) for r in resps)
            gold = sample.get("target")
            golds.append(int(gold) if isinstance(gold, int) or (isinstance(gold, str) and gold.isdigit()) else None)
            docs.append(DocScores(loglikelihoods=lls, pick=max(range(len(lls)), key=lls.__getitem__),
                                  correct_norm=bool(sample.get("acc_norm", 0.0))))
        else:
            text = str(sample.get("target") or "")
            golds.append(None)
            docs.append(DocScores(loglikelihood=_float(resps), tokens=len(lm.tok_encode(text)), words=len(text.split())))
    return SideScores(tuple(docs), tuple(golds), tuple(ids))


def score_side(endpoint: Endpoint, tasks: Sequence[HarnessTask], settings: HarnessSettings) -> dict[str, SideScores]:
    """Every task's per-document results for one served model (one simple_evaluate per distinct limit)."""
    require()
    _quiet()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = _lm(endpoint, settings)
    # The tasks are handed over as configs: no need to index the thousands of tasks lm-eval ships.
    manager = TaskManager(include_defaults=False)
    out: dict[str, SideScores] = {}
    for limit in dict.fromkeys(t.limit for t in tasks):
        batch = [t for t in tasks if t.limit == limit]
        results = simple_evaluate(model=lm, tasks=[dict(t.config) for t in batch], num_fewshot=0, limit=limit,
                                  log_samples=True, bootstrap_iters=0, cache_requests=False, apply_chat_template=False,
                                  task_manager=manager)
        if results is None or "samples" not in results:
            raise LabcycleError(f"lm-eval returned no per-document results for {', '.join(t.name for t in batch)}")
        for t in batch:
            samples = results["samples"].get(t.name)
            if not samples:
                raise LabcycleError(f"lm-eval scored no document of task {t.name!r}", where=str(t.path))
            out[t.name] = _side(lm, t, samples)
    return out


def _entry(task: HarnessTask, sides: dict[str, SideScores], seconds: float) -> dict[str, Any]:
    """The report entry regression.evaluate_suite writes, from both sides' harness results."""
    base = sides["base"]
    entry: dict[str, Any] = {"metric": task.metric, "higher_is_better": task.output_type == "multiple_choice",
                             "items": len(base.docs), "backend": "lm-eval"}
    details: list[dict[str, Any]] = [{"where": f"{task.name}[{i}]"} for i in base.doc_ids]
    if task.output_type == "multiple_choice":
        for row, gold in zip(details, base.golds):
            row["gold"] = gold
        for side in SIDES:
            s = sides[side]
            entry[side] = sum(d.pick == g for d, g in zip(s.docs, s.golds)) / len(s.docs)
            entry.setdefault("acc_norm", {})[side] = sum(d.correct_norm for d in s.docs) / len(s.docs)
            for row, d in zip(details, s.docs):
                row[side] = {"pick": d.pick, "loglikelihoods": [round(x, 4) for x in d.loglikelihoods]}
    else:
        words = sum(d.words for d in base.docs)
        entry.update({"tokens": sum(d.tokens for d in base.docs), "words": words})
        cand_tokens = sum(d.tokens for d in sides["candidate"].docs)
        if cand_tokens != entry["tokens"]:
            entry["candidate_tokens"] = cand_tokens
        for side in SIDES:
            s = sides[side]
            total, tokens = sum(d.loglikelihood for d in s.docs), sum(d.tokens for d in s.docs)
            entry[side] = math.exp(-total / tokens) if tokens else math.nan
            entry.setdefault("word_perplexity", {})[side] = math.exp(-total / words) if words else math.nan
            for row, d in zip(details, s.docs):
                row[side] = round(d.loglikelihood, 4)
    entry["details"] = details
    entry["file"] = str(task.path)
    entry["seconds"] = round(seconds, 2)
    return entry


def evaluate_regression(endpoints: dict[str, Endpoint], tasks: Sequence[HarnessTask],
                        settings: HarnessSettings = HarnessSettings()) -> dict[str, Any]:
    """The report's "regression" block, as regression.evaluate_regression writes it, scored by lm-eval: the base's
    requests first, then the candidate's (never both in one batch: branch.answer_prompts). Blocking: run it in a
    thread from async code."""
    started = time.monotonic()
    by_side: dict[str, dict[str, SideScores]] = {}
    for side in SIDES:
        by_side[side] = score_side(endpoints[side], tasks, settings)
    seconds = (time.monotonic() - started) / max(1, len(tasks))
    return {"suites": {t.name: _entry(t, {side: by_side[side][t.name] for side in SIDES}, seconds) for t in tasks}}


__all__ = ["Endpoint", "HarnessSettings", "HarnessTask", "evaluate_regression", "load_task", "require", "score_side"]
