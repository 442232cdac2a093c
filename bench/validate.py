"""Benchmark: taxonomy validation, labcycle against the reference InstructLab parser.

Run from the repository root:

    .venv/bin/python bench/validate.py --leaves 1000 --json /tmp/labcycle-bench-validate.json

Add `--reference-sample 300` when the full reference run would take too long (about 0.1 s a file):
the reference is then timed on a random sample and its files/s extrapolated to the whole taxonomy.

It generates a taxonomy of version-3 leaves (40% knowledge, 30% freeform skills, 30% grounded skills,
from tests/leafgen.py) in a temporary folder, or uses `--taxonomy DIR`, and measures files/s for:

  reference      instructlab-schema's TaxonomyParser(schema_version=0, yamllint_strict=True,
                 message_format="logging") parsing each file in this process, as `ilab` runs it
                 (one `yamllint` subprocess per file)
  labcycle w=1   validate_files(paths, root=root, workers=1), in-process, one worker
  labcycle       validate_files(paths, root=root), default workers (a process pool)
  labcycle CLI   `labcycle taxonomy validate --taxonomy DIR --format json` as a subprocess, wall time
                 including interpreter start

The reference runs once; each labcycle measurement runs `--repeat` times (default 3) and the median is
reported, with every run's time in the JSON. The machine's load average is printed at the start and
end: anything else running on the same cores skews the numbers, the process pool's most of all.

Every file must be valid under both the reference and labcycle, and a file with trailing spaces must
give errors under both (proof that yamllint really ran), or the benchmark stops with an error.
Results go into docs/benchmarks.md by hand; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests/leafgen.py

from tests.leafgen import MUTATIONS, knowledge_v3, skill  # noqa: E402

from bench.common import load_average, machine, source_state, write_results  # noqa: E402
from labcycle.tasks.taxonomy.discover import find_leaf_files  # noqa: E402
from labcycle.tasks.taxonomy.validate import validate_file, validate_files  # noqa: E402

# The venv's bin folder (not resolved: .venv/bin/python is usually a symlink out of the venv).
VENV_BIN = Path(sys.executable).parent


class BenchError(RuntimeError):
    pass


# --- taxonomy --------------------------------------------------------------------------------------


def generate(root: Path, leaves: int) -> dict[str, int]:
    """Write `leaves` version-3 leaves under root: 40% knowledge, 30% freeform, 30% grounded skills."""
    counts = {"knowledge": 0, "freeform_skill": 0, "grounded_skill": 0}
    for i in range(leaves):
        slot = i % 10
        if slot < 4:
            kind, rel, text = "knowledge", f"knowledge/domain_{i % 20}/topic_{i}/qna.yaml", knowledge_v3(seed=i)
        elif slot < 7:
            kind, rel, text = "freeform_skill", f"compositional_skills/writing/area_{i % 20}/skill_{i}/qna.yaml", skill(3, grounded=False, seed=i)
        else:
            kind, rel, text = "grounded_skill", f"compositional_skills/grounded/area_{i % 20}/skill_{i}/qna.yaml", skill(3, grounded=True, seed=i)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        counts[kind] += 1
    return counts


# --- the reference ---------------------------------------------------------------------------------


def reference_parser():
    from instructlab.schema.taxonomy import TaxonomyParser

    return TaxonomyParser(schema_version=0, yamllint_strict=True, message_format="logging")


def check_lint_runs(scratch: Path) -> None:
    """A leaf with trailing spaces must fail under both, or yamllint did not actually run."""
    bad = scratch / "knowledge" / "lint_check" / "qna.yaml"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text(MUTATIONS["trailing-spaces"](knowledge_v3(seed=0)), encoding="utf-8")
    logging.disable(logging.CRITICAL)  # the reference logs the expected lint error
    try:
        ref = reference_parser().parse(bad)
    finally:
        logging.disable(logging.NOTSET)
    if ref.errors == 0:
        raise BenchError("the reference found no error in a file with trailing spaces: is `yamllint` on PATH?")
    ours = validate_file(bad, root=scratch)
    if not any(p.rule == "yamllint/trailing-spaces" for p in ours.errors):
        raise BenchError("labcycle found no trailing-spaces error in a file with trailing spaces")


def time_reference(paths: list[Path]) -> tuple[float, list[str]]:
    parser = reference_parser()
    invalid = []
    start = time.perf_counter()
    for path in paths:
        taxonomy = parser.parse(path)
        if taxonomy.errors or taxonomy.warnings:
            invalid.append(str(path))
    return time.perf_counter() - start, invalid


# --- labcycle --------------------------------------------------------------------------------------


def time_labcycle(paths: list[Path], root: Path, workers: int | None) -> tuple[float, list[str]]:
    start = time.perf_counter()
    report = validate_files(paths, root=root, workers=workers)
    seconds = time.perf_counter() - start
    if len(report.files) != len(paths):
        raise BenchError(f"labcycle reported {len(report.files)} files for {len(paths)}")
    return seconds, [f.path for f in report.files if not f.valid]


def time_cli(root: Path, expected: int) -> tuple[float, list[str]]:
    exe = VENV_BIN / "labcycle"
    cmd = [str(exe) if exe.exists() else "labcycle", "taxonomy", "validate", "--taxonomy", str(root), "--format", "json"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    seconds = time.perf_counter() - start
    try:
        files = json.loads(proc.stdout)["files"]
    except (json.JSONDecodeError, KeyError) as e:
        raise BenchError(f"the CLI (exit {proc.returncode}) printed no JSON report: {proc.stderr[-2000:]}") from e
    if len(files) != expected:
        raise BenchError(f"the CLI reported {len(files)} files for {expected}")
    invalid = [f["path"] for f in files if not f["valid"]]
    if proc.returncode != (1 if invalid else 0):
        raise BenchError(f"the CLI exited {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds, invalid


# --- running ---------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _libyaml() -> bool:
    import yaml

    return bool(getattr(yaml, "__with_libyaml__", False))


def _row(name: str, files: int, runs: list[float], note: str = "") -> dict[str, object]:
    seconds = statistics.median(runs)
    return {
        "name": name,
        "files": files,
        "seconds": seconds,  # the median of the runs
        "runs_s": [round(t, 3) for t in runs],
        "files_per_s": files / seconds if seconds else float("inf"),
        "note": note,
    }


def _runs(repeat: int, what: str, fn) -> list[float]:
    """Run fn `repeat` times; every run must find every file valid."""
    times = []
    for _ in range(repeat):
        seconds, invalid = fn()
        if invalid:
            raise BenchError(f"{what} rejects {len(invalid)} files, e.g. {invalid[:3]}")
        times.append(seconds)
    print(f"  runs: {', '.join(f'{t:.2f} s' for t in times)}", flush=True)
    return times


def run(root: Path, reference_sample: int | None, repeat: int, scratch: Path) -> dict[str, object]:
    paths = find_leaf_files(root)
    if not paths:
        raise BenchError(f"no qna.yaml under {root}")
    n = len(paths)
    check_lint_runs(scratch)
    median = f"median of {repeat} runs" if repeat > 1 else ""

    results = []

    sample = paths
    if reference_sample is not None and reference_sample < n:
        sample = sorted(random.Random(0).sample(paths, reference_sample))
    print(f"reference: parsing {len(sample)} of {n} files (one yamllint subprocess each) ...", flush=True)
    seconds, invalid = time_reference(sample)
    if invalid:
        raise BenchError(f"the reference rejects {len(invalid)} files, e.g. {invalid[:3]}")
    note = "one run"
    if len(sample) < n:
        note = f"one run, timed on a random sample of {len(sample)} files ({seconds:.2f} s), extrapolated to {n}"
        print(f"reference: {note}", flush=True)
        seconds = seconds * n / len(sample)
    results.append(_row("reference (instructlab-schema, ilab settings)", n, [seconds], note))

    print(f"labcycle: {n} files, one worker, in-process ...", flush=True)
    runs = _runs(repeat, "labcycle", lambda: time_labcycle(paths, root, workers=1))
    results.append(_row("labcycle, in-process, workers=1", n, runs, median))

    workers = min(os.cpu_count() or 1, 8)
    print(f"labcycle: {n} files, default workers ({workers}) ...", flush=True)
    runs = _runs(repeat, "labcycle", lambda: time_labcycle(paths, root, workers=None))
    results.append(_row(f"labcycle, in-process, default workers ({workers})", n, runs, median))

    print(f"labcycle CLI: {n} files, end to end ...", flush=True)
    runs = _runs(repeat, "the labcycle CLI", lambda: time_cli(root, n))
    results.append(_row("labcycle CLI, end to end (subprocess)", n, runs, "; ".join(filter(None, [median, "includes interpreter start"]))))

    ref_rate = results[0]["files_per_s"]
    for r in results:
        r["speedup"] = r["files_per_s"] / ref_rate
    return {"files": n, "results": results}


def print_table(out: dict[str, object]) -> None:
    m = out["machine"]
    print()
    print(f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['platform']}, libyaml={m['libyaml']}")
    load = m["load_average_1min"]
    print(f"load average (1 min): {load['start']} at start, {load['end']} at end")
    src = out["source"]
    print(f"labcycle: commit {src['commit']}{' with uncommitted changes to its sources' if src['uncommitted_changes'] else ''}")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()))
    print()
    rows = [("", "files", "seconds", "files/s", "vs reference")]
    for r in out["results"]:
        rows.append((r["name"], str(r["files"]), f"{r['seconds']:.2f}", f"{r['files_per_s']:.1f}", f"{r['speedup']:.1f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
    for r in out["results"]:
        if r["note"]:
            print(f"  {r['name']}: {r['note']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--leaves", type=int, default=1000, help="leaves to generate (default 1000; ignored with --taxonomy)")
    ap.add_argument("--taxonomy", type=Path, help="benchmark this existing taxonomy root instead of generating one")
    ap.add_argument("--reference-sample", type=int, metavar="N", help="time the reference on N random files and extrapolate (default: all files)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each labcycle measurement; the median is kept (default 3; the reference runs once)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON to OUT")
    args = ap.parse_args(argv)
    load_start = load_average()

    # The reference finds `yamllint` on PATH; make sure it is the venv's.
    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    if shutil.which("yamllint") is None:
        print("error: no `yamllint` on PATH; the reference would silently skip linting", file=sys.stderr)
        return 2
    print(f"yamllint for the reference: {shutil.which('yamllint')}", flush=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="labcycle-bench-") as tmp:
        tmp_path = Path(tmp)
        if args.taxonomy is not None:
            root = args.taxonomy.resolve()
            generated = None
        else:
            root = tmp_path / "taxonomy"
            print(f"generating {args.leaves} leaves under {root} ...", flush=True)
            generated = generate(root, args.leaves)
        try:
            out = run(root, args.reference_sample, max(1, args.repeat), tmp_path / "scratch")
        except BenchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    out = {
        "benchmark": "taxonomy validation",
        "command": " ".join([".venv/bin/python", "bench/validate.py", *(argv if argv is not None else sys.argv[1:])]),
        "taxonomy": str(args.taxonomy) if args.taxonomy else "generated",
        "generated": generated,
        "reference_sample": args.reference_sample,
        "source": source_state(),
        "machine": {**machine(("instructlab-schema", "yamllint", "PyYAML", "ruamel.yaml", "ruamel.yaml.clib", "jsonschema")), "libyaml": _libyaml(), "load_average_1min": {"start": load_start, "end": load_average()}},
        **out,
    }
    print_table(out)
    labcycle_best = max(r["speedup"] for r in out["results"][1:])
    print(f"\ngoal (labcycle >= 20x the reference's files/s): {'met' if labcycle_best >= 20 else 'NOT met'} (best {labcycle_best:.1f}x)")
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
