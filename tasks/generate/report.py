"""Progress while generating, and the summary after: a Prefect progress artifact, a table artifact of
per-leaf yield, and OUTPUT/summary.json (requests, tokens, samples kept, dropped and redacted per block,
tokens/s)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from labcycle.io import write_json

_UPDATE_EVERY_S = 2.0

# Called as listener(leaf_id, kept, target) on every finished unit: the CLI draws its progress bars here.
LISTENERS: list[Any] = []


class ProgressTracker:
    """Keeps kept/target per leaf and mirrors the overall share into a Prefect progress artifact."""

    def __init__(self, targets: dict[str, int], artifact_id: Any):
        self.kept = dict.fromkeys(targets, 0)
        self.targets = targets
        self.artifact_id = artifact_id
        self.started = time.monotonic()
        self._last = 0.0
        self._pending: set[asyncio.Task[Any]] = set()

    @classmethod
    async def start(cls, leaves: list[Any], cfg: Any, plan: dict[str, Any] | None = None) -> ProgressTracker:
        from prefect.artifacts import acreate_progress_artifact

        targets = {leaf.id: cfg.settings_for(leaf.id, plan).samples_per_seed * max(1, len(leaf.qna.get("seed_examples", []))) for leaf in leaves}
        artifact_id = await acreate_progress_artifact(progress=0.0, key="generation-progress", description="samples kept / target, all leaves")
        return cls(targets, artifact_id)

    def share(self) -> float:
        total = sum(self.targets.values()) or 1
        return 100.0 * sum(min(self.kept[k], t) for k, t in self.targets.items()) / total

    def update(self, leaf_id: str, kept: int, target: int) -> None:
        self.kept[leaf_id] = kept
        for listener in LISTENERS:
            listener(leaf_id, kept, target)
        now = time.monotonic()
        if now - self._last >= _UPDATE_EVERY_S:
            self._last = now
            self._push()

    def _push(self) -> None:
        from prefect.artifacts import aupdate_progress_artifact

        task = asyncio.get_running_loop().create_task(aupdate_progress_artifact(self.artifact_id, progress=self.share()))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        from prefect.artifacts import aupdate_progress_artifact

        await asyncio.gather(*self._pending, return_exceptions=True)
        await aupdate_progress_artifact(self.artifact_id, progress=100.0)


def summarize(reports: list[dict[str, Any]], teacher_stats: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """Requests and tokens are what THIS run sent (cached leaves send none); `generation` totals what
    producing the published samples cost, whenever that happened."""
    completion = teacher_stats.get("completion_tokens", 0)
    return {
        "leaves": len(reports),
        "samples": sum(r["kept"] for r in reports),
        "below_target": [r["leaf_id"] for r in reports if r.get("below_target")],
        "requests": teacher_stats.get("requests", 0),
        "prompt_tokens": teacher_stats.get("prompt_tokens", 0),
        "completion_tokens": completion,
        "wall_s": round(wall_s, 3),
        "completion_tokens_per_s": round(completion / wall_s, 1) if wall_s > 0 else None,
        "generation": {"requests": sum(r["requests"] for r in reports), "prompt_tokens": sum(r["prompt_tokens"] for r in reports),
                       "completion_tokens": sum(r["completion_tokens"] for r in reports)},
        "teacher": teacher_stats,
        "per_leaf": {r["leaf_id"]: {"kept": r["kept"], "target": r["target"], "advice": r.get("advice"),
                                    "dropped": {b: s["dropped"] for b, s in r.get("blocks", {}).items()},
                                    # Only blocks that redacted something (pii): a redacted sample is kept, changed.
                                    "redacted": {b: s["redacted"] for b, s in r.get("blocks", {}).items() if s.get("redacted")}}
                     for r in reports},
    }


def combine(parts: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """One summary of a stage fanned out over several runs (each part: a run's summary): counts add up,
    per_leaf joins; wall_s is the whole stage's, so the throughput is what the runs reached together. Each
    run's own teacher statistics stay under `groups`."""
    completion = sum(p.get("completion_tokens", 0) for p in parts)
    return {
        "leaves": sum(p["leaves"] for p in parts),
        "samples": sum(p["samples"] for p in parts),
        "below_target": [leaf for p in parts for leaf in p.get("below_target", [])],
        "requests": sum(p.get("requests", 0) for p in parts),
        "prompt_tokens": sum(p.get("prompt_tokens", 0) for p in parts),
        "completion_tokens": completion,
        "wall_s": round(wall_s, 3),
        "completion_tokens_per_s": round(completion / wall_s, 1) if wall_s > 0 else None,
        "generation": {k: sum(p["generation"][k] for p in parts) for k in ("requests", "prompt_tokens", "completion_tokens")},
        "per_leaf": {leaf: info for p in parts for leaf, info in p["per_leaf"].items()},
        "groups": [{"leaves": sorted(p["per_leaf"]), "wall_s": p.get("wall_s"), "teacher": p.get("teacher"),
                    "ran_as": p.get("ran_as")} for p in parts],
    }


async def finish(reports: list[dict[str, Any]], teacher: Any, out: Path, tracker: ProgressTracker) -> dict[str, Any]:
    from prefect.artifacts import acreate_table_artifact

    await tracker.close()
    summary = summarize(reports, teacher.stats.to_json(), time.monotonic() - tracker.started)
    write_json(out / "summary.json", summary)
    rows = [{"leaf": r["leaf_id"], "kept": r["kept"], "target": r["target"], "requests": r["requests"],
             "most dropped by": max(r.get("blocks", {}).items(), key=lambda kv: kv[1]["dropped"], default=("-", {}))[0],
             "redacted": sum(s.get("redacted", 0) for s in r.get("blocks", {}).values()),
             "advice": r.get("advice") or ""} for r in reports]
    await acreate_table_artifact(table=rows, key="generation-yield", description=f"{summary['samples']} samples from {len(reports)} leaves")
    return {**summary, "output": str(out)}
