"""labcycle's taxonomy verdicts against the reference InstructLab parser on a real taxonomy repository.

    .venv/bin/python scripts/compare_reference.py PATH/TO/TAXONOMY-REPO [--rev REV] [--history]

Every qna.yaml at REV (default HEAD), or with --history every distinct qna.yaml blob the repository ever
held, is written to a scratch folder at its path and judged twice: by labcycle's validator and by
instructlab-schema's TaxonomyParser as `ilab taxonomy diff` builds it (a test dependency: `make setup`).
Prints the counts per kind, version and verdict, then each file where the two disagree; exits 1 if any do.
Where labcycle is deliberately stricter (docs/taxonomy-validation.md: an empty file, a duplicate key in a
version-1 file, merge keys, files over 1 MiB, PyYAML-only tags) a disagreement is expected and marked so.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Rules where labcycle rejects what the reference accepts, on purpose (docs/taxonomy-validation.md).
STRICTER = {"file/empty", "yaml/duplicate-key", "yaml/merge-key", "file/too-large", "yaml/tag"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def blobs(repo: Path, rev: str, history: bool) -> dict[str, str]:
    """{blob sha: a path it had} for every qna.yaml at `rev`, or in the whole history."""
    if history:
        lines = _git(repo, "rev-list", "--all", "--objects").splitlines()
        pairs = (line.split(" ", 1) for line in lines if " " in line)
    else:
        lines = _git(repo, "ls-tree", "-r", rev).splitlines()
        pairs = ((line.split()[2], line.split("\t", 1)[1]) for line in lines)
    found: dict[str, str] = {}
    for sha, path in pairs:
        if path.endswith("qna.yaml") and sha not in found:
            found[sha] = path
    return found


def reference_parser():  # type: ignore[no-untyped-def]
    """The reference parser as `ilab taxonomy diff` builds it; returns (valid, errors, warnings) for a file.
    Puts this interpreter's bin folder first on PATH: the reference runs `yamllint` from PATH and silently
    skips lint without it."""
    from instructlab.schema import taxonomy

    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    taxonomy.logger.disabled = True  # message_format="logging": keep it quiet
    parser = taxonomy.TaxonomyParser(schema_version=0, yamllint_strict=True, message_format="logging")
    # yq only looks up line numbers for its messages, never changes a verdict; the `yq` found on a machine
    # may be another tool with that name, so the reference's own switch turns the lookups off.
    parser.yq_available = False

    def judge(path: Path) -> tuple[bool, int, int]:
        try:
            result = parser.parse(path)
        except taxonomy.TaxonomyReadingException:  # what ilab reports as a failed file
            return False, 1, 0
        return result.errors == 0, result.errors, result.warnings

    return judge


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", type=Path)
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--history", action="store_true", help="every qna.yaml blob in the history, not only REV's")
    args = ap.parse_args(argv)

    from labcycle.tasks.taxonomy.validate import validate_file

    reference = reference_parser()
    found = blobs(args.repo, args.rev, args.history)
    counts: collections.Counter[tuple[str, object, bool]] = collections.Counter()
    mismatches = []
    with tempfile.TemporaryDirectory(prefix="labcycle-reference-") as scratch:
        for sha, path in sorted(found.items(), key=lambda kv: kv[1]):
            root = Path(scratch) / sha
            leaf = root / path
            leaf.parent.mkdir(parents=True)
            leaf.write_bytes(subprocess.run(["git", "-C", str(args.repo), "cat-file", "blob", sha], check=True,
                                            capture_output=True).stdout)
            ours, theirs = validate_file(leaf, root=root), reference(leaf)[0]
            counts[(ours.kind, ours.version, ours.valid)] += 1
            if ours.valid != theirs:
                expected = not ours.valid and any(p.rule in STRICTER for p in ours.errors)
                mismatches.append((path, sha, ours, theirs, expected))

    print(f"{len(found)} qna.yaml {'blobs in the history' if args.history else 'files at ' + args.rev} of {args.repo}")
    for (kind, version, valid), n in sorted(counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
        print(f"  {kind:15s} v{version!s:4s} {'valid' if valid else 'invalid':8s} {n}")
    unexpected = [m for m in mismatches if not m[4]]
    print(f"same verdict as the reference: {len(found) - len(mismatches)}; labcycle stricter by design: "
          f"{len(mismatches) - len(unexpected)}; disagreements: {len(unexpected)}")
    for path, sha, ours, theirs, expected in mismatches:
        rules = ", ".join(f"{p.rule} ({p.line}:{p.column})" for p in ours.errors) or "-"
        print(f"  {'stricter' if expected else 'DIFFERS '} {path} (blob {sha[:10]}): labcycle "
              f"{'valid' if ours.valid else 'invalid: ' + rules}, reference {'valid' if theirs else 'invalid'}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
