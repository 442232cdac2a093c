"""Run instructlab-sdg's own mixer on the fixed samples in generated/ and keep what it writes in golden/.

tests/tasks/test_mix_instructlab.py mixes the same samples with labcycle and compares the two: the system
prompt, `unmask`, `metadata`, the file names and the message shape. This script needs instructlab-sdg, which
labcycle does not depend on: run it with a Python of its own, never labcycle's virtual environment.

    python3 -m venv /tmp/ilabsdg && /tmp/ilabsdg/bin/pip install instructlab-sdg "datasets<4" "pandas<3"
    /tmp/ilabsdg/bin/python tests/data/instructlab_mix/make_golden.py            # rewrites golden/
    /tmp/ilabsdg/bin/python tests/data/instructlab_mix/make_golden.py --output DIR

generated/ holds labcycle records (schemas/record.schema.json). Each leaf is handed to sdg's DataMixer as the
columns sdg's generation pipelines write (knowledge: document, question, response, domain; skills: question,
response), then DataMixer.generate() writes knowledge_train_msgs_<suffix>.jsonl and skills_train_msgs_<suffix>.jsonl
with sdg's default system prompt. Its random choices (RAFT documents), its uuid4 ids and string hashing are
seeded, so a rerun with the same sdg version writes the same files.
"""

from __future__ import annotations

import argparse
import json
import random
import os
import shutil
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUFFIX = "golden"


def sdg_columns(record: dict) -> dict:
    """A labcycle record as the row sdg's generation would have produced for it."""
    user = next(m["content"] for m in record["messages"] if m["role"] == "user")
    answer = next(m["content"] for m in reversed(record["messages"]) if m["role"] == "assistant")
    if record["metadata"]["kind"] == "knowledge":
        return {"document": record["metadata"]["context"], "question": user, "response": answer, "domain": "testing"}
    return {"question": user, "response": answer}


def main() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # sdg lists the distinct documents of a leaf through a set: its order follows string hashing.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=HERE / "golden")
    args = parser.parse_args()

    from datasets import Dataset
    from importlib.metadata import version
    from instructlab.sdg import datamixing
    from instructlab.sdg.generate_data import _SYS_PROMPT

    ids = random.Random(1)
    uuid.uuid4 = lambda: uuid.UUID(int=ids.getrandbits(128), version=4)  # sdg names every sample with uuid4
    random.seed(0)  # sdg's RAFT copies draw from the global generator

    out = args.output
    shutil.rmtree(out, ignore_errors=True)
    (out / f"node_datasets_{SUFFIX}").mkdir(parents=True)
    mixer = datamixing.DataMixer(data_dirs=[], output_dir=str(out), date_suffix=SUFFIX, sys_prompt=_SYS_PROMPT,
                                 num_procs=1)
    for samples in sorted((HERE / "generated").rglob("samples.jsonl")):
        records = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
        leaf = records[0]["metadata"]["leaf_id"]
        mixer.collect(leaf.replace("/", "_"), Dataset.from_list([sdg_columns(r) for r in records]),
                      is_knowledge=records[0]["metadata"]["kind"] == "knowledge", use_legacy_pretraining_format=False)
    mixer.generate()
    shutil.rmtree(out / f"node_datasets_{SUFFIX}")  # the per-leaf inputs of the mix, not its output
    for recipe in out.glob("*_recipe_*.yaml"):
        recipe.unlink()
    (out / "sdg.json").write_text(json.dumps({"instructlab-sdg": version("instructlab-sdg"), "suffix": SUFFIX,
                                              "system_prompt": _SYS_PROMPT}, indent=2, ensure_ascii=False) + "\n",
                                  encoding="utf-8")
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    main()
