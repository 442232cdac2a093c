"""What every benchmark records beside its figures: the machine, the load on it, the commit measured."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_average() -> float | None:
    """The 1-minute load average: other work on the machine skews every number a benchmark takes."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def source_state() -> dict[str, object]:
    """The commit measured, and whether labcycle's sources differed from it."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    dirty = git("status", "--porcelain", "--", "labcycle", "tasks", "schemas")
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_changes": bool(dirty) if dirty is not None else None}


def machine(packages: tuple[str, ...]) -> dict[str, object]:
    """CPU, memory, Python and the versions of the named packages (None when not installed)."""
    cpu_model = platform.processor() or platform.machine()
    mem_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in packages:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"cpu_count": os.cpu_count(), "cpu_model": cpu_model, "memory_gib": mem_gib, "python": platform.python_version(),
            "platform": platform.platform(), "packages": versions}


def write_results(path: Path | None, results: dict[str, object]) -> None:
    """The run's results as JSON at `path` (given with --json), for docs/benchmarks.md."""
    if path is None:
        return
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {path}")


def print_machine(out: dict) -> None:
    """The machine, load, commit and package lines every benchmark prints under its table."""
    m = out["machine"]
    print()
    print(f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}, {m['platform']}")
    if m.get("gpu"):
        print(f"GPU: {m['gpu']}")
    load = m["load_average_1min"]
    print(f"load average (1 min): {load['start']} at start, {load['end']} at end")
    src = out["source"]
    print(f"labcycle: commit {src['commit']}{' with uncommitted changes to its sources' if src['uncommitted_changes'] else ''}")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v is not None))
