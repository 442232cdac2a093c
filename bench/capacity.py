"""One LAB cycle at scale, worked out: how long each stage takes and which one is the bottleneck.

Run from the repository root:

    .venv/bin/python bench/capacity.py                       # the scenarios of docs/architecture.md's capacity plan
    .venv/bin/python bench/capacity.py --leaves 10000 --replicas 16 --nodes 8 --leaf-groups 8
    .venv/bin/python bench/capacity.py --json /tmp/labcycle-capacity.json

No dependency beyond the standard library, and nothing is started: this is arithmetic over the figures
below, not a measurement. Stages run one after the other in a cycle, so a cycle takes their sum, and the
bottleneck is the slowest stage. Inside generation the limit is the slowest of three things that work at
once: the teacher replicas (tokens/s), the client's event loop (CPU per request, one per generate run, so
remote.leaf_groups runs have that many) and the Prefect API (task runs per leaf).

Where each default comes from (M = measured on this project's 2-core machine, A = an assumption):

  requests per kept sample   the shipped pipelines' blocks (tasks/generate/pipelines/*.yaml, PIPELINES below;
                             tests/test_capacity_sim.py keeps the two in step) with keep rates per block (A)
  tokens per completion      320: 579 requests, about 185,000 completion tokens (M, docs/results.md, SmolLM2 as
                             teacher; a real teacher's lengths differ)
  client CPU per request     2.1 ms: 0.53 CPU s per 256 requests, labcycle's client (M, docs/benchmarks.md,
                             "Synthetic data generation throughput", stub table)
  teacher tokens/s at C      a saturating curve PEAK * C / (C + HALF) with PEAK 12,500 and HALF 82 (A): fitted to
                             public figures for Llama-3.1-8B on vLLM (about 75 tok/s at C = 1 and 6.6x that at
                             C = 8 on an A100, an H100 about 2x an A100, about 12,500 tok/s peak on one H100);
                             3,500 tok/s per replica at C = 32. No GPU was available to measure it.
  Prefect task runs          84 task runs/s when one flow gathers 10,000 of them at once (10,000 trivial async
                             tasks in 119 s; 175/s for 500), and 62 ms per task called one after the other
                             from an async flow (500 in 31 s) (M, Prefect 3.7.7's embedded server on SQLite,
                             this machine under load; docs/benchmarks.md, "Capacity plan")
  training tokens/s per GPU  4,830 (A): 2 x the published 2,415 tok/s of QLoRA on Llama-2-7B on one A100 with
                             the Hugging Face stack (quoted in docs/benchmarks.md, "GPU"), for an H100-class GPU
  DDP efficiency             0.9 (A); one phase trains on one node (torch.distributed.run --standalone)
  sample lengths             knowledge phase 1,125 tokens a sample (M, docs/benchmarks.md, "Real lengths":
                             Q&A and RAFT copies); skills phase 892 (bench/train.py's synthetic samples, A)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The shipped pipelines, block by block, as (type, completions per request (vLLM's n), rows per completion
# (a json_list block's num)). Deterministic filters (length, refusal, dedup, seed_leakage) send no request;
# pii redacts and keeps every row; every judge sends one request per row.
PIPELINES: dict[str, tuple[tuple[str, int, int], ...]] = {
    "knowledge": (("generate", 1, 5), ("length", 1, 1), ("refusal", 1, 1), ("dedup", 1, 1), ("grounding_judge", 1, 1),
                  ("judge", 1, 1), ("judge", 1, 1), ("pii", 1, 1), ("safety_judge", 1, 1)),
    "freeform_skills": (("generate", 1, 5), ("length", 1, 1), ("dedup", 1, 1), ("judge", 1, 1), ("generate", 1, 1),
                        ("length", 1, 1), ("refusal", 1, 1), ("seed_leakage", 1, 1), ("judge", 1, 1), ("pii", 1, 1),
                        ("safety_judge", 1, 1)),
    "grounded_skills": (("generate", 10, 1), ("length", 1, 1), ("generate", 1, 3), ("dedup", 1, 1), ("judge", 1, 1),
                        ("generate", 1, 1), ("length", 1, 1), ("refusal", 1, 1), ("seed_leakage", 1, 1),
                        ("grounding_judge", 1, 1), ("judge", 1, 1), ("pii", 1, 1), ("safety_judge", 1, 1)),
}
FILTERS = ("length", "refusal", "dedup", "seed_leakage")
JUDGES = ("judge", "grounding_judge")


@dataclass(frozen=True)
class Scale:
    """What one cycle is run with. Every default is explained in the module docstring."""

    name: str = "custom"
    leaves: int = 10_000
    knowledge_share: float = 0.4  # the rest split evenly between freeform and grounded skills (bench/validate.py's mix)
    seeds_per_leaf: int = 5  # the schema's minimum; knowledge seeds hold 3 Q&A each
    samples_per_seed: int = 30  # generation.samples_per_seed
    filter_keep: float = 0.9  # share of rows each deterministic filter keeps (A)
    judge_keep: float = 0.8  # share each quality judge keeps (A)
    safety_keep: float = 0.98  # share the safety judge keeps (A)
    tokens_per_completion: float = 320  # M, docs/results.md
    replicas: int = 1  # teacher replicas (generation.teacher.endpoints)
    gpus_per_replica: int = 1  # an 8B-class teacher on one GPU (A)
    max_concurrency: int = 32  # generation.teacher.max_concurrency: per replica, and per generate run
    server_peak_tps: float = 12_500  # A: a replica's tokens/s as C grows without end
    server_half_c: float = 82  # A: the C at which a replica gives half its peak
    client_ms_per_request: float = 2.1  # M, docs/benchmarks.md
    leaf_groups: int = 1  # remote.leaf_groups: generate runs, each its own process (event loop) on a worker
    task_runs_per_s: float = 84  # M: task runs/s of 10,000 gathered at once, on the SQLite server
    sequential_task_s: float = 0.062  # M: one publish task called after another from the async flow
    nodes: int = 1
    gpus_per_node: int = 8
    tune_nodes: int = 1  # labcycle trains a phase on one node today (torch.distributed.run --standalone)
    train_tps_per_gpu: float = 4_830  # A
    ddp_efficiency: float = 0.9  # A
    knowledge_epochs: float = 7  # tuning defaults (tasks/tune/settings.py)
    skills_epochs: float = 10
    knowledge_sample_tokens: float = 1_125  # M, docs/benchmarks.md "Real lengths"
    skills_sample_tokens: float = 892  # A
    replay_fraction: float = 0.1  # taxonomy/recipe.yaml
    held_out_per_leaf: int = 2  # taxonomy/recipe.yaml held_out.per_leaf
    eval_concurrency: int = 8  # evaluation.concurrency: answers in flight, and the judge's per replica
    eval_answer_tokens: float = 200  # A: answers are capped at evaluation.max_tokens 256
    mix_samples_per_s: float = 2_000  # A: mixing is CPU work on one core; not measured at this size
    validate_files_per_s: float = 776  # M, docs/benchmarks.md "Taxonomy validation" (2 processes)

    def check(self) -> None:
        """A clear error for a scale that cannot run, instead of a division by zero or a negative time."""
        positive = ("leaves", "seeds_per_leaf", "samples_per_seed", "tokens_per_completion", "replicas", "gpus_per_replica",
                    "max_concurrency", "server_peak_tps", "client_ms_per_request", "leaf_groups", "task_runs_per_s", "nodes", "tune_nodes",
                    "gpus_per_node", "train_tps_per_gpu", "eval_concurrency", "eval_answer_tokens", "mix_samples_per_s",
                    "validate_files_per_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be more than 0 (got {getattr(self, name)})")
        if not 0 <= self.knowledge_share <= 1:
            raise ValueError(f"knowledge-share must be a share from 0 to 1 (got {self.knowledge_share})")
        for name in ("filter_keep", "judge_keep", "safety_keep", "ddp_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name.replace('_', '-')} must be a share above 0 and at most 1 (got {getattr(self, name)})")
        if self.replicas * self.gpus_per_replica > self.nodes * self.gpus_per_node:
            raise ValueError(f"{self.replicas} replicas of {self.gpus_per_replica} GPU(s) need "
                             f"{self.replicas * self.gpus_per_replica} GPUs; {self.nodes} node(s) of {self.gpus_per_node} have "
                             f"{self.nodes * self.gpus_per_node}")
        if self.tune_nodes > self.nodes:
            raise ValueError(f"tuning on {self.tune_nodes} nodes needs as many; there are {self.nodes}")


def per_unit(pipeline: str, s: Scale) -> dict[str, float]:
    """What one unit (a chunk, or a draw of seed examples) costs and yields, rows thinned block by block."""
    rows, requests, completions = 1.0, 0.0, 0.0
    for kind, n, num in PIPELINES[pipeline]:
        if kind == "generate":
            requests += rows
            completions += rows * n
            rows *= n * num
        elif kind in JUDGES or kind == "safety_judge":
            requests += rows
            completions += rows
            rows *= s.safety_keep if kind == "safety_judge" else s.judge_keep
        elif kind in FILTERS:
            rows *= s.filter_keep
    return {"requests": requests, "completions": completions, "kept": rows}


def server_tps(c: float, s: Scale) -> float:
    """One server's completion tokens/s with c requests in flight (the assumed saturating curve)."""
    return s.server_peak_tps * c / (c + s.server_half_c)


def simulate(s: Scale) -> dict[str, object]:
    """Every stage's time in seconds, the generation limits, the Prefect load and the bottleneck."""
    s.check()
    skills_share = (1 - s.knowledge_share) / 2
    leaves = {"knowledge": s.leaves * s.knowledge_share, "freeform_skills": s.leaves * skills_share,
              "grounded_skills": s.leaves * skills_share}
    target = s.seeds_per_leaf * s.samples_per_seed
    requests = completions = 0.0
    per_pipeline = {}
    for name, count in leaves.items():
        u = per_unit(name, s)
        units = target / u["kept"]
        requests += count * units * u["requests"]
        completions += count * units * u["completions"]
        per_pipeline[name] = {"requests_per_leaf": round(units * u["requests"]), "units_per_leaf": round(units, 1)}
    tokens = completions * s.tokens_per_completion
    samples = s.leaves * target
    knowledge_samples = leaves["knowledge"] * target
    skills_samples = samples - knowledge_samples

    # Generation: three limits at once; the slowest decides. Publishing (one task per leaf, one after another in
    # each generate run) follows once every leaf has finished. Each of the leaf_groups runs has its own TeacherPool,
    # each with max_concurrency per replica, so a replica has max_concurrency x leaf_groups requests in flight.
    replica_c = s.max_concurrency * s.leaf_groups
    teacher_tps = s.replicas * server_tps(replica_c, s)
    limits = {
        "teacher": tokens / teacher_tps,
        "client CPU": requests * s.client_ms_per_request / 1000 / s.leaf_groups,
        "Prefect API": 2 * s.leaves / s.task_runs_per_s,
    }
    gen_limit = max(limits, key=limits.__getitem__)
    publish_s = s.leaves / s.leaf_groups * s.sequential_task_s

    # Tuning: phase 1 trains knowledge Q&A and their RAFT copies, phase 2 skills plus a replay of phase 1. A phase
    # trains on one node's GPUs today (torchrun --standalone), so more nodes do not shorten it unless tune_nodes says so.
    tune_gpus = s.gpus_per_node * s.tune_nodes
    phase1_tokens = 2 * knowledge_samples * s.knowledge_sample_tokens * s.knowledge_epochs
    phase2_tokens = (skills_samples * s.skills_sample_tokens
                     + s.replay_fraction * 2 * knowledge_samples * s.knowledge_sample_tokens) * s.skills_epochs
    train_tps = s.train_tps_per_gpu * tune_gpus * (s.ddp_efficiency if tune_gpus > 1 else 1.0)

    # Evaluation: base and candidate answer each changed leaf's seed questions and held-out samples on one student
    # server at evaluation.concurrency; the judge (the teacher pool) scores each answer, that many per replica.
    questions = leaves["knowledge"] * (3 * s.seeds_per_leaf + s.held_out_per_leaf) \
        + (s.leaves - leaves["knowledge"]) * (s.seeds_per_leaf + s.held_out_per_leaf)
    answers_s = 2 * questions * s.eval_answer_tokens / server_tps(s.eval_concurrency, s)
    judge_c = min(s.max_concurrency, s.eval_concurrency) * s.replicas
    judge_s = 2 * questions * s.tokens_per_completion / (s.replicas * server_tps(judge_c / s.replicas, s))

    stages = {
        "taxonomy (validate)": s.leaves / s.validate_files_per_s,
        "generate": max(limits.values()) + publish_s,
        "mix": samples / s.mix_samples_per_s,
        "tune": (phase1_tokens + phase2_tokens) / train_tps,
        "evaluate": answers_s + judge_s,
    }
    bottleneck = max(stages, key=stages.__getitem__)
    return {
        "scale": asdict(s),
        "stages_s": {k: round(v) for k, v in stages.items()},
        "cycle_s": round(sum(stages.values())),
        "bottleneck": bottleneck,
        "generation": {"limits_s": {k: round(v) for k, v in limits.items()}, "limit": gen_limit, "publish_s": round(publish_s),
                       "in_flight_per_replica": replica_c,
                       "requests": round(requests), "completion_tokens": round(tokens), "samples": round(samples),
                       "teacher_tokens_per_s": round(teacher_tps),
                       "requests_per_s": round(requests / max(limits.values()), 1), "per_pipeline": per_pipeline},
        "tune": {"gpus": tune_gpus, "phase1_tokens": round(phase1_tokens), "phase2_tokens": round(phase2_tokens),
                 "tokens_per_s": round(train_tps)},
        "evaluate": {"questions": round(questions), "answers_s": round(answers_s), "judge_s": round(judge_s),
                     "judge_in_flight": judge_c},
        "prefect": prefect_objects(s),
    }


def prefect_objects(s: Scale) -> dict[str, int]:
    """What one cycle leaves in the Prefect database (an estimate: per leaf two task runs, generate and publish,
    each with about three states, a state-change event each and about one log line; per run a few artifacts)."""
    task_runs = 2 * s.leaves
    return {"task_runs": task_runs, "task_run_states": 3 * task_runs, "events": 3 * task_runs, "log_lines": task_runs,
            "generation_yield_table_rows": s.leaves, "flow_runs": 4 + s.leaf_groups}


def scenarios(base: Scale) -> list[Scale]:
    """The capacity plan's scenarios at `base`'s figures: the baseline, the target, and the target tuned."""
    return [
        replace(base, name="baseline: 1 replica, 1 node", replicas=1, nodes=1, leaf_groups=1),
        replace(base, name="target: 16 replicas, 8 nodes", replicas=16, nodes=8, leaf_groups=1),
        replace(base, name="target, leaf_groups 8, max_concurrency 4, eval concurrency 64", replicas=16, nodes=8,
                leaf_groups=8, max_concurrency=max(1, base.max_concurrency // 8), eval_concurrency=64),
        replace(base, name="as above, tuning on all 8 nodes (not in labcycle yet)", replicas=16, nodes=8, leaf_groups=8,
                max_concurrency=max(1, base.max_concurrency // 8), eval_concurrency=64, tune_nodes=8),
    ]


def sweep(base: Scale, replicas: list[int], groups: int = 8, tune_nodes: int = 8) -> list[dict[str, object]]:
    """Generation time and its limit as replicas grow (enough nodes for them), with one generate run and with
    `groups` runs (remote.leaf_groups), each replica with the same requests in flight (max_concurrency split over
    the runs); the cycle and its bottleneck with those runs, tuning on one node and on `tune_nodes` nodes."""
    rows = []
    per_replica = base.max_concurrency * base.leaf_groups
    for r in replicas:
        nodes = max(base.nodes, math.ceil(r * base.gpus_per_replica / base.gpus_per_node))
        at = replace(base, name=f"{r} replicas", replicas=r, nodes=nodes, tune_nodes=1)
        one = simulate(replace(at, leaf_groups=1, max_concurrency=per_replica))
        many = simulate(replace(at, leaf_groups=groups, max_concurrency=max(1, per_replica // groups)))
        wide = simulate(replace(at, leaf_groups=groups, max_concurrency=max(1, per_replica // groups), nodes=max(nodes, tune_nodes),
                                tune_nodes=tune_nodes))
        rows.append({"replicas": r, "nodes": nodes, "generate_s": one["stages_s"]["generate"], "limit": one["generation"]["limit"],
                     "groups": groups, "generate_groups_s": many["stages_s"]["generate"],
                     "limit_groups": many["generation"]["limit"], "cycle_s": many["cycle_s"], "bottleneck": many["bottleneck"],
                     "tune_nodes": tune_nodes, "cycle_wide_s": wide["cycle_s"], "bottleneck_wide": wide["bottleneck"]})
    return rows


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def print_table(results: list[dict[str, object]], sweep_rows: list[dict[str, object]]) -> None:
    stages = list(results[0]["stages_s"])
    print("| scenario | " + " | ".join(stages) + " | cycle | bottleneck | generation limited by |")
    print("|---|" + "---:|" * (len(stages) + 1) + "---|---|")
    for r in results:
        cells = " | ".join(hours(r["stages_s"][k]) for k in stages)
        print(f"| {r['scale']['name']} | {cells} | {hours(r['cycle_s'])} | {r['bottleneck']} | {r['generation']['limit']} |")
    print()
    g = sweep_rows[0]["groups"] if sweep_rows else 0
    n = sweep_rows[0]["tune_nodes"] if sweep_rows else 0
    print("Replicas sweep (other figures as the third scenario; nodes: enough for the replicas):")
    print()
    print(f"| replicas | generate, 1 run | limited by | generate, leaf_groups {g} | limited by | cycle, tuning on 1 node "
          f"| bottleneck | cycle, tuning on {n} nodes | bottleneck |")
    print("|---:|---:|---|---:|---|---:|---|---:|---|")
    for r in sweep_rows:
        print(f"| {r['replicas']} | {hours(r['generate_s'])} | {r['limit']} | {hours(r['generate_groups_s'])} | {r['limit_groups']} "
              f"| {hours(r['cycle_s'])} | {r['bottleneck']} | {hours(r['cycle_wide_s'])} | {r['bottleneck_wide']} |")
    g = results[-1]["generation"]
    p = results[-1]["prefect"]
    print()
    print(f"per cycle: {g['samples']:,} samples, {g['requests']:,} teacher requests, {g['completion_tokens']:,} completion "
          f"tokens; Prefect: {p['task_runs']:,} task runs, about {p['task_run_states']:,} states, {p['events']:,} events")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Scale()
    ap.add_argument("--leaves", type=int, default=defaults.leaves)
    ap.add_argument("--replicas", type=int, default=None, help="Simulate this one scale instead of the scenarios.")
    ap.add_argument("--nodes", type=int, default=None, help="GPU nodes (with --replicas; default: just enough).")
    ap.add_argument("--leaf-groups", type=int, default=1, help="remote.leaf_groups (with --replicas).")
    ap.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency,
                    help="generation.teacher.max_concurrency: requests in flight per replica, per generate run.")
    ap.add_argument("--eval-concurrency", type=int, default=defaults.eval_concurrency)
    ap.add_argument("--tokens-per-completion", type=float, default=defaults.tokens_per_completion)
    ap.add_argument("--replica-peak-tps", type=float, default=defaults.server_peak_tps,
                    help="A replica's completion tokens/s as concurrency grows without end (assumed).")
    ap.add_argument("--train-tps-per-gpu", type=float, default=defaults.train_tps_per_gpu, help="QLoRA tokens/s per GPU (assumed).")
    ap.add_argument("--gpus-per-node", type=int, default=defaults.gpus_per_node)
    ap.add_argument("--tune-nodes", type=int, default=defaults.tune_nodes,
                    help="Nodes one tuning phase trains on (with --replicas; labcycle uses 1 today).")
    ap.add_argument("--knowledge-epochs", type=float, default=defaults.knowledge_epochs)
    ap.add_argument("--skills-epochs", type=float, default=defaults.skills_epochs)
    ap.add_argument("--judge-keep", type=float, default=defaults.judge_keep)
    ap.add_argument("--sweep", default="1,2,4,8,16,32,64,128", help="Replica counts for the sweep table.")
    ap.add_argument("--json", type=Path, default=None, help="Write the results here as JSON.")
    args = ap.parse_args(argv)
    base = replace(defaults, leaves=args.leaves, max_concurrency=args.max_concurrency, eval_concurrency=args.eval_concurrency,
                   tokens_per_completion=args.tokens_per_completion, server_peak_tps=args.replica_peak_tps,
                   train_tps_per_gpu=args.train_tps_per_gpu, gpus_per_node=args.gpus_per_node, judge_keep=args.judge_keep,
                   knowledge_epochs=args.knowledge_epochs, skills_epochs=args.skills_epochs)
    try:
        if args.replicas is not None:
            nodes = args.nodes or max(1, math.ceil(args.replicas * base.gpus_per_replica / base.gpus_per_node))
            chosen = [replace(base, name=f"{args.replicas} replicas, {nodes} nodes, leaf_groups {args.leaf_groups}",
                              replicas=args.replicas, nodes=max(nodes, args.tune_nodes), leaf_groups=args.leaf_groups,
                              tune_nodes=args.tune_nodes)]
        else:
            chosen = scenarios(base)
        results = [simulate(s) for s in chosen]
        at = chosen[2] if len(chosen) > 2 else chosen[0]
        sweep_rows = sweep(replace(at, nodes=1), [int(x) for x in args.sweep.split(",") if x.strip()],
                           max(2, at.leaf_groups), max(2, at.nodes))
    except ValueError as exc:
        print(f"bench/capacity.py: {exc}", file=sys.stderr)
        return 2
    print_table(results, sweep_rows)
    if args.json is not None:
        from bench.common import write_results

        write_results(args.json, {"command": " ".join(["bench/capacity.py", *(argv if argv is not None else sys.argv[1:])]),
                                  "scenarios": results, "sweep": sweep_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
