"""The evaluation stage: branch, safety and regression evaluations of a candidate adapter against its base.

    report = evaluate(RUN/manifest.json, OUT/skills/adapter, BASE_DIR, RUN/cycle-1/eval,
                      endpoint=None, judge=teacher, suites=[...], held_out=None, safety=SafetySpec())

A candidate adapter is served by one vLLM server with its base (no merge): with no endpoint the stage
starts that server itself on the base and stops it at the end; with one, the server must run with
--enable-lora (and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) and read the adapter's folder at the same path.
The adapter is loaded under "candidate-<12 hex of its content>", so a changed adapter is never confused
with an old one of the same path. A whole-model candidate (a fully fine-tuned or merged model: a folder
with config.json) cannot ride on the base's server: the stage starts a second server for it, under the
same kind of name, and on a GPU the servers split its memory (see gpu_share).

The three run one after the other (branch, safety, regression), each sending one model's requests at a
time: vLLM on CPU mixes up base and adapter requests that share a batch (see branch.answer_prompts).

Re-running with the same inputs (leaves, held-out rows, suites, safety suite, adapter and base content,
judge model, settings) returns the report already in out_dir without starting anything: that is all the caching the
stage needs (an evaluation depends on a live server, which a Prefect result cache cannot vouch for).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from labcycle.errors import LabcycleError, retry_if_transient
from labcycle.tasks.evaluate import report as report_io
from labcycle.tasks.evaluate.branch import BranchSettings, evaluate_branch
from labcycle.tasks.evaluate.questions import Question, held_out_questions, seed_questions
from labcycle.tasks.evaluate.safety import SafetySpec, SafetySuite, load_safety_suite
from labcycle.tasks.evaluate.suite import Suite, load_suite
from labcycle.teacher.base import Teacher
from labcycle.urls import redact

# Bumped whenever the same inputs would give a different report (prompts, metrics, report shape).
EVAL_FORMAT = 2  # 2: the safety block


@dataclass(frozen=True)
class EvalSettings:
    max_tokens: int = 256  # per answer (greedy)
    judge_max_tokens: int = 256
    concurrency: int = 8  # requests in flight per model
    held_out_per_leaf: int | None = 10  # held-out rows per leaf, in file order; None: all
    max_items: int | None = None  # documents per suite; None: all
    max_model_len: int = 4096  # of the server the stage starts itself
    # Scoring requests in flight. None: `concurrency` on a GPU server the stage started, else 1, because vLLM's
    # CPU LoRA path crashes on batched prompt logprobs (see loglik.py); set it for a GPU endpoint.
    score_concurrency: int | None = None
    # Who scores the regression suites: labcycle's own scorer (regression.py) or lm-evaluation-harness
    # (lmeval.py, `pip install 'labcycle[lmeval]'`); both write the same report entries.
    regression_backend: Literal["labcycle", "lm-eval"] = "labcycle"
    knowledge_mc: bool = False  # the knowledge leaves' seed questions as multiple choice (knowledge_mc.py)


@dataclass(frozen=True)
class JudgeSpec:
    """The judge as settings, built inside the evaluation's own event loop (an async client made in another
    loop would fail there) and closed when the evaluation ends. The API key is read then, never passed."""

    endpoint: str | None  # an OpenAI-compatible base URL; None: an in-process vLLM engine on `model`
    model: str
    structured_mode: str = "vllm"
    max_model_len: int = 4096
    max_concurrency: int = 8
    api_key_secret: str | None = None  # a Prefect Secret block's name (else the environment's key)

    def local_dir(self) -> Path | None:
        """The judge's model folder when vLLM runs it here (no endpoint), else None."""
        return None if self.endpoint else Path(self.model).expanduser().resolve()

    async def build(self, **engine_kwargs: Any) -> Teacher:
        from labcycle.teacher import make_teacher
        from labcycle.teacher.settings import TeacherConfig, api_key

        key = await api_key(TeacherConfig(endpoint=self.endpoint, model=self.model, api_key_secret=self.api_key_secret))
        return make_teacher(self.endpoint, self.model, max_concurrency=self.max_concurrency,
                            structured_mode=self.structured_mode, api_key=key, max_model_len=self.max_model_len,
                            **engine_kwargs)


def shipped_suites() -> list[Path]:
    """The general suites labcycle ships (our own questions and prose; for demos and tests)."""
    folder = Path(__file__).resolve().parent / "suites"
    return sorted(folder.glob("*.yaml"))


def _adapter(path: Path) -> tuple[str, int]:
    """(content fingerprint, LoRA rank) of a PEFT adapter folder."""
    from labcycle.fingerprint import fingerprint_path

    config = path / "adapter_config.json"
    try:
        rank = int(json.loads(config.read_text(encoding="utf-8")).get("r") or 8)
    except (ValueError, json.JSONDecodeError) as exc:
        raise LabcycleError(f"unreadable adapter_config.json ({exc})", where=str(config)) from None
    return fingerprint_path(path), rank


@dataclass(frozen=True)
class Candidate:
    """The model under evaluation: a PEFT adapter, served by the base's server, or a whole model folder (a
    fully fine-tuned or merged model), served by a server of its own."""

    path: Path
    kind: Literal["adapter", "model"]
    fingerprint: str  # of its content
    rank: int | None = None  # an adapter's LoRA rank

    @property
    def served_name(self) -> str:
        # The content hash in the name: a changed candidate at the same path is never taken for the old one.
        return f"candidate-{self.fingerprint[:12]}"


def candidate_model(path: Path, endpoint: str | None = None) -> Candidate:
    """What `path` holds, checked before any server starts. `endpoint`: the user's evaluation server, which
    can load an adapter but not a second whole model."""
    from labcycle.fingerprint import model_fingerprint

    path = Path(path)
    if (path / "adapter_config.json").is_file():
        fingerprint, rank = _adapter(path)
        return Candidate(path, "adapter", fingerprint, rank)
    if not (path / "config.json").is_file():
        raise LabcycleError("not a candidate: neither a PEFT adapter folder (adapter_config.json) nor a model folder "
                            "(config.json)", where=str(path))
    if endpoint is not None:
        raise LabcycleError("a whole-model candidate needs a vLLM server of its own, which the evaluation starts, and "
                            "evaluation.endpoint serves only the base (and adapters): unset evaluation.endpoint to "
                            "evaluate this candidate", where=str(path))
    return Candidate(path, "model", model_fingerprint(path))


def judge_placement(endpoint: str | None, judge: Teacher | JudgeSpec | None, base_model: Path, *, cuda: bool) -> str:
    """Where a judge given as a JudgeSpec runs when the stage starts its own server (endpoint None):
    "server" when it is the base model itself (asked through the evaluation server: one engine, not two),
    "split-gpu" for another local model on a GPU (two engines at vLLM's default 0.9 of the memory cannot both
    start, so each gets its gpu_share), else "own" (its endpoint, or an engine of its own on CPU)."""
    if not isinstance(judge, JudgeSpec) or endpoint is not None:
        return "own"
    local = judge.local_dir()
    if local is None:
        return "own"
    if local == Path(base_model).expanduser().resolve():
        return "server"
    return "split-gpu" if cuda else "own"


GPU_SHARE = 0.45  # of the GPU's memory for each of two vLLM engines: the evaluation server and a local judge


def gpu_share(engines: int) -> float | None:
    """Each engine's share of the GPU when `engines` vLLM engines share it (the base's server, a whole-model
    candidate's server, a local judge): vLLM's default 0.9 each lets only one start. None for one engine."""
    return round(GPU_SHARE * 2 / engines, 2) if engines > 1 else None


def _cuda() -> bool:
    from labcycle.teacher.server import _cuda_available

    return _cuda_available()


def _settings_digest(settings: EvalSettings) -> dict[str, Any]:
    """The settings that change a report: not the concurrency, and the newer ones only when set, so a report
    written before they existed is still reused."""
    data = {**asdict(settings), "concurrency": None, "score_concurrency": None}
    for key, default in (("regression_backend", "labcycle"), ("knowledge_mc", False)):
        if data[key] == default:
            del data[key]
    return data


async def served_max_len(base_url: str, model: str, default: int) -> int:
    """The context of `model` at a vLLM server (its /v1/models card's max_model_len), else `default`."""
    status, data = await _get_json(base_url + "/models")
    cards = data.get("data", []) if status == 200 and isinstance(data, dict) else []
    lens = [c.get("max_model_len") for c in cards if c.get("id") == model] + [c.get("max_model_len") for c in cards]
    return next((int(n) for n in lens if isinstance(n, int) and n > 0), default)


def _digest(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


async def _get_json(url: str, body: dict[str, Any] | None = None, timeout_s: float = 120.0) -> tuple[int, Any]:
    import httpx

    from labcycle.teacher.openai_client import resolve_api_key

    headers = {"Authorization": f"Bearer {resolve_api_key(None)}"}
    async with httpx.AsyncClient(timeout=timeout_s, headers=headers) as client:
        try:
            resp = await (client.post(url, json=body) if body is not None else client.get(url))
        except httpx.TransportError as exc:
            raise LabcycleError(f"cannot reach the evaluation server ({type(exc).__name__}: {exc})", where=redact(url),
                                transient=True) from None
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, resp.text


async def served_base_name(base_url: str, base_model: Path) -> str:
    """The base model's name on the endpoint: the served model (not an adapter) whose id or root matches
    base_model, else the only one."""
    status, data = await _get_json(base_url + "/models")
    cards = data.get("data", []) if status == 200 and isinstance(data, dict) else []
    bases = [c for c in cards if not c.get("parent")]
    match = [c for c in bases if c.get("id") in (base_model.name, str(base_model)) or c.get("root") == str(base_model)]
    if len(match) == 1 or len(bases) == 1:
        return (match or bases)[0]["id"]
    names = ", ".join(c.get("id", "?") for c in bases) or "(nothing)"
    raise LabcycleError(f"cannot tell which served model is the base {base_model.name!r} (the endpoint serves: {names}); "
                        "set evaluation.served_base", where=redact(base_url))


async def load_adapter(base_url: str, name: str, path: Path) -> None:
    """Serve the adapter under `name` at a running vLLM server; one already loaded under that name (the
    name carries its content hash) is fine."""
    status, data = await _get_json(base_url + "/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
    if status >= 400:
        detail = json.dumps(data)[:400] if not isinstance(data, str) else data[:400]
        if "already" in detail.lower():
            return
        raise LabcycleError(f"the server refused the candidate adapter (HTTP {status}: {detail}); it needs --enable-lora, "
                            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, a --max-lora-rank at least the adapter's rank, and "
                            "the adapter folder at this same path", where=str(path))


async def _start(servers: list[Any], one_by_one: bool) -> None:
    """Start the evaluation's servers. On a GPU one after the other: two engines measuring its free memory at
    once misjudge it. On CPU at once (measured: two tiny-model servers on 2 cores, 51 s together, 78 s in turn),
    and every start ends, ready or failed, before a failure is raised, so none is left starting."""
    if one_by_one:
        for server in servers:
            await asyncio.to_thread(server.start)
        return
    results = await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _questions(manifest: Path, changed: list[str] | None, held_out: Path | None, per_leaf: int | None,
               taxonomy_root: Path | None = None) -> tuple[list[Question], dict[str, str], dict[str, Any]]:
    from labcycle.leaves import read_leaves

    leaves = read_leaves(Path(manifest), taxonomy_root)
    if changed is not None:
        unknown = sorted(set(changed) - {leaf.id for leaf in leaves})
        if unknown:
            raise LabcycleError(f"changed leaves not in the run manifest: {', '.join(unknown)}", where=str(manifest))
        leaves = [leaf for leaf in leaves if leaf.id in set(changed)]
    by_id = {leaf.id: leaf for leaf in leaves}
    questions = [q for leaf in leaves for q in seed_questions(leaf)]
    counts: dict[str, Any] = {"seed": len(questions)}
    if held_out is not None:
        extra, counts["held_out"] = held_out_questions(Path(held_out), by_id, per_leaf)
        questions += extra
    return questions, {leaf.id: leaf.kind for leaf in leaves}, counts


async def evaluate_async(manifest: Path, candidate_adapter: Path, base_model: Path, out_dir: Path, *,
                         endpoint: str | None, judge: Teacher | JudgeSpec | None, suites: list[Path], held_out: Path | None,
                         settings: EvalSettings = EvalSettings(), changed_leaves: list[str] | None = None,
                         served_base: str | None = None, reuse: bool = True,
                         taxonomy_root: Path | None = None, safety: SafetySpec | None = None) -> dict[str, Any]:
    from labcycle.models import is_tiny
    from labcycle.tasks.evaluate.knowledge_mc import NAME as MC_NAME
    from labcycle.tasks.evaluate.knowledge_mc import build_items, per_leaf, write_suite
    from labcycle.tasks.evaluate.lmeval import HarnessTask, load_task
    from labcycle.tasks.evaluate.loglik import LoglikClient
    from labcycle.tasks.evaluate.regression import evaluate_regression
    from labcycle.tasks.evaluate.safety import evaluate_safety
    from labcycle.teacher.openai_client import OpenAITeacher
    from labcycle.fingerprint import model_fingerprint

    out_dir, candidate_adapter, base_model = Path(out_dir), Path(candidate_adapter), Path(base_model)
    started = time.monotonic()
    # Everything a user can get wrong is checked before a server starts.
    questions, kinds, counts = _questions(manifest, changed_leaves, held_out, settings.held_out_per_leaf, taxonomy_root)
    mc_items = build_items(questions) if settings.knowledge_mc else []
    mc_suite = write_suite(mc_items, out_dir / MC_NAME) if mc_items else None
    harness = settings.regression_backend == "lm-eval"
    # The knowledge suite is scored whole: max_items cuts the general suites only.
    limits = [(Path(p), settings.max_items) for p in suites] + ([(mc_suite, None)] if mc_suite else [])
    loaded: list[Suite | HarnessTask] = [load_task(p, n) if harness else load_suite(p, n) for p, n in limits]
    names = [s.name for s in loaded]
    if len(set(names)) != len(names):
        twice = ", ".join(sorted({n for n in names if names.count(n) > 1}))
        raise LabcycleError(f"two regression suites share a task name ({twice}); give each its own `task:`")
    safety_suite: SafetySuite | None = load_safety_suite(safety.suite_path()) if safety is not None else None
    candidate = candidate_model(candidate_adapter, endpoint)
    digest = _digest(format=EVAL_FORMAT, questions=[(q.to_json(), q.messages) for q in questions], kinds=kinds,
                     suites=[(s.name, s.digest) for s in loaded],
                     adapter=candidate.fingerprint if candidate.kind == "adapter" else f"model:{candidate.fingerprint}",
                     base=model_fingerprint(base_model) if base_model.is_dir() else str(base_model),
                     judge=getattr(judge, "model", None),
                     safety=(safety_suite.digest, safety.judge) if safety is not None and safety_suite is not None else None,
                     settings=_settings_digest(settings))
    previous = out_dir / report_io.REPORT
    if reuse and previous.is_file():
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("inputs_digest") == digest:
            return old

    cuda = endpoint is None and _cuda()
    placement = judge_placement(endpoint, judge, base_model, cuda=cuda)
    judge_on_server, split_gpu = placement == "server", placement == "split-gpu"
    whole = candidate.kind == "model"
    share = gpu_share(1 + whole + split_gpu) if cuda else None
    memory = ["--gpu-memory-utilization", str(share)] if share else []
    servers = []  # the ones the stage starts: the base's, then a whole-model candidate's
    if endpoint is None:
        from labcycle.teacher.server import VLLMServer

        max_model_len = max(settings.max_model_len, judge.max_model_len) if judge_on_server else settings.max_model_len  # type: ignore[union-attr]
        lora = {"enable_lora": True, "max_lora_rank": candidate.rank} if not whole else {}
        # enforce_eager None: CUDA graphs on a GPU (faster decoding), eager on CPU.
        servers.append(VLLMServer(base_model, max_model_len=max_model_len, enforce_eager=None,  # type: ignore[arg-type]
                                  log_path=out_dir / "vllm-server.log", extra_args=memory, **lora))
        if whole:
            servers.append(VLLMServer(candidate.path, served_model_name=candidate.served_name,
                                      max_model_len=settings.max_model_len, enforce_eager=None,
                                      log_path=out_dir / "vllm-candidate.log", extra_args=memory))
    try:
        await _start(servers, one_by_one=cuda)
        base_url = servers[0].base_url if servers else endpoint.rstrip("/")  # type: ignore[union-attr]
        base_name = servers[0].model if servers else served_base or await served_base_name(base_url, base_model)
        if whole:
            urls = {"base": base_url, "candidate": servers[1].base_url}
        else:
            if servers:
                await asyncio.to_thread(servers[0].load_lora, candidate.served_name, candidate.path)
            else:
                await load_adapter(base_url, candidate.served_name, candidate.path)
            urls = {"base": base_url, "candidate": base_url}
        served = {"base": base_name, "candidate": candidate.served_name}
        models = {side: OpenAITeacher(urls[side], name, max_concurrency=settings.concurrency)
                  for side, name in served.items()}
        t0 = time.monotonic()
        own_judge = None
        if judge_on_server:
            own_judge = OpenAITeacher(base_url, base_name, max_concurrency=judge.max_concurrency,  # type: ignore[union-attr]
                                      structured_mode="vllm")
        elif isinstance(judge, JudgeSpec):
            own_judge = await judge.build(log_path=out_dir / "judge.log",
                                          **({"gpu_memory_utilization": share} if split_gpu else {}))
        try:
            branch, records = await evaluate_branch(questions, kinds, models, own_judge or judge,
                                                    BranchSettings(settings.max_tokens, settings.judge_max_tokens))
            t_safety = time.monotonic()
            safety_block, safety_records = None, []
            if safety is not None and safety_suite is not None:
                # After the branch evaluation, never beside it: one side's requests at a time (branch.answer_prompts).
                safety_block, safety_records = await evaluate_safety(
                    safety_suite, models, (own_judge or judge) if safety.judge else None,
                    max_tokens=settings.max_tokens, judge_max_tokens=settings.judge_max_tokens)
        finally:
            for m in [*models.values(), *([own_judge] if own_judge else [])]:
                await m.aclose()
        t1 = time.monotonic()
        score_concurrency = settings.score_concurrency or (settings.concurrency if servers and _cuda() else 1)
        async with contextlib.AsyncExitStack() as stack:
            def scorer(side: str) -> LoglikClient:
                return LoglikClient(urls[side], served[side], max_concurrency=settings.concurrency,
                                    score_concurrency=score_concurrency)

            if harness:
                from labcycle.tasks.evaluate import lmeval

                own = {"base": servers[0], "candidate": servers[-1]} if servers else {}
                lens = {side: own[side].max_model_len if own else
                        await served_max_len(urls[side], served[side], settings.max_model_len) for side in report_io.SIDES}
                tokenizers = {"base": base_model, "candidate": candidate.path if whole else base_model}
                endpoints = {side: lmeval.Endpoint(urls[side], served[side], tokenizers[side], lens[side]) for side in report_io.SIDES}
                regression = await asyncio.to_thread(lmeval.evaluate_regression, endpoints, loaded,  # type: ignore[arg-type]
                                                     lmeval.HarnessSettings(concurrency=score_concurrency))
            else:
                base_scorer = await stack.enter_async_context(scorer("base"))
                # An adapter is scored through the base's server (and tokenizer), a whole model through its own.
                cand_scorer = await stack.enter_async_context(scorer("candidate")) if whole else base_scorer
                regression = await evaluate_regression({"base": base_scorer, "candidate": cand_scorer},
                                                       loaded, served)  # type: ignore[arg-type]
        if mc_suite is not None:
            entry = regression["suites"][MC_NAME]
            entry["leaves"] = {leaf: asdict(score) for leaf, score in per_leaf(mc_items, entry["details"]).items()}
        t2 = time.monotonic()
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)

    rows = report_io.answer_rows(records, regression["suites"], safety_records)  # before build() moves the details out
    tiny = base_model.is_dir() and is_tiny(base_model)
    notes = ["tiny random models: their scores are noise and mean nothing"] if tiny else []
    extra = {
        "models": {**served, "judge": getattr(judge, "model", None), "judge_placement": placement,
                   "candidate_kind": candidate.kind,
                   ("adapter" if candidate.kind == "adapter" else "candidate_model"): str(candidate_adapter),
                   "base_model": str(base_model)},
        "questions": counts,
        "settings": asdict(settings),
        "timings": {"branch_s": round(t_safety - t0, 2), "safety_s": round(t1 - t_safety, 2),
                    "regression_s": round(t2 - t1, 2),
                    "total_s": round(time.monotonic() - started, 2)},
        "notes": notes,
        "inputs_digest": digest,
    }
    result = report_io.build(branch, regression, extra, safety_block)
    report_io.write(out_dir, result, rows, notes)
    return result


def evaluate(manifest: Path, candidate_adapter: Path, base_model: Path, out_dir: Path, *, endpoint: str | None,
             judge: Teacher | JudgeSpec | None, suites: list[Path], held_out: Path | None, max_tokens: int = 256,
             concurrency: int = 8, changed_leaves: list[str] | None = None, judge_max_tokens: int = 256,
             held_out_per_leaf: int | None = 10, max_items: int | None = None, max_model_len: int = 4096,
             served_base: str | None = None, score_concurrency: int | None = None,
             reuse: bool = True, taxonomy_root: Path | None = None, safety: SafetySpec | None = None,
             regression_backend: Literal["labcycle", "lm-eval"] = "labcycle", knowledge_mc: bool = False) -> dict[str, Any]:
    """Evaluate the candidate against the base and write out_dir/report.json, answers.jsonl and report.md;
    returns the report. Runs its own event loop: from async code, await evaluate_async instead.
    `candidate_adapter`: a PEFT adapter folder, or a whole model folder (served by a second server; not with
    an endpoint).
    `taxonomy_root`: where the manifest's leaves are read, if not at the root the manifest names.
    `safety`: the safety suite and whether the judge labels it (tasks/evaluate/safety.py); None: no safety
    evaluation (the report says so, and a gate policy with safety.required fails the candidate).
    `regression_backend`: who scores the regression suites (labcycle, or lm-eval: tasks/evaluate/lmeval.py).
    `knowledge_mc`: also score the knowledge leaves' seed questions as multiple choice (knowledge_mc.py)."""
    settings = EvalSettings(max_tokens=max_tokens, judge_max_tokens=judge_max_tokens, concurrency=concurrency,
                            held_out_per_leaf=held_out_per_leaf, max_items=max_items, max_model_len=max_model_len,
                            score_concurrency=score_concurrency, regression_backend=regression_backend,
                            knowledge_mc=knowledge_mc)
    return asyncio.run(evaluate_async(manifest, candidate_adapter, base_model, out_dir, endpoint=endpoint, judge=judge,
                                      suites=suites, held_out=held_out, settings=settings, changed_leaves=changed_leaves,
                                      served_base=served_base, reuse=reuse, taxonomy_root=taxonomy_root, safety=safety))


# No Prefect cache: a judge teacher is not a hashable input, and evaluate() already returns the report in
# out_dir when nothing it depends on changed.
@task(name="evaluate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=30, retry_condition_fn=retry_if_transient)
def evaluate_task(manifest: Path, candidate_adapter: Path, base_model: Path, out_dir: Path, *, endpoint: str | None,
                  judge: Teacher | JudgeSpec | None, suites: list[Path], held_out: Path | None, max_tokens: int = 256,
                  concurrency: int = 8, changed_leaves: list[str] | None = None, judge_max_tokens: int = 256,
                  held_out_per_leaf: int | None = 10, max_items: int | None = None, max_model_len: int = 4096,
                  served_base: str | None = None, score_concurrency: int | None = None,
                  taxonomy_root: Path | None = None, safety: SafetySpec | None = None,
                  regression_backend: Literal["labcycle", "lm-eval"] = "labcycle",
                  knowledge_mc: bool = False) -> dict[str, Any]:
    """evaluate(), with report.md as the markdown artifact "eval-report". A transient failure (the server
    would not start or stopped answering) is retried once; user mistakes are not."""
    from prefect.artifacts import create_markdown_artifact

    result = evaluate(manifest, candidate_adapter, base_model, out_dir, endpoint=endpoint, judge=judge, suites=suites,
                      held_out=held_out, max_tokens=max_tokens, concurrency=concurrency, changed_leaves=changed_leaves,
                      judge_max_tokens=judge_max_tokens, held_out_per_leaf=held_out_per_leaf, max_items=max_items,
                      max_model_len=max_model_len, served_base=served_base, score_concurrency=score_concurrency,
                      taxonomy_root=taxonomy_root, safety=safety, regression_backend=regression_backend,
                      knowledge_mc=knowledge_mc)
    md = (Path(out_dir) / report_io.MARKDOWN).read_text(encoding="utf-8")
    overall = result["branch"]["overall"]
    prompts = result["safety"].get("prompts")
    create_markdown_artifact(markdown=md, key="eval-report",
                             description=f"candidate vs base over {overall['leaves']} leaves, "
                                         f"{len(result['regression']['suites'])} suites and "
                                         + (f"{sum(prompts.values())} safety prompts" if prompts else "no safety suite"))
    return result


__all__ = ["Candidate", "EvalSettings", "JudgeSpec", "SafetySpec", "candidate_model", "evaluate", "evaluate_async",
           "evaluate_task", "gpu_share", "judge_placement", "load_adapter", "served_base_name", "shipped_suites"]
