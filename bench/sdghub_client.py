"""The sdg_hub column of `bench/sdg.py --multistage`: the same multi-stage work through an sdg_hub Flow.

Runs in a virtual environment of its own with sdg_hub 0.9 installed (never labcycle's), for example:

    python -m venv /tmp/sdghub-venv && /tmp/sdghub-venv/bin/pip install 'sdg_hub>=0.9,<0.10'
    .venv/bin/python bench/sdg.py --multistage --sdghub-python /tmp/sdghub-venv/bin/python

The flow is sdg_hub's own blocks, as its shipped flows chain them: per stage a PromptBuilderBlock (a
one-message prompt file, "Stage k of N: continue {{ previous }}"), an LLMChatBlock (async, through
LiteLLM's hosted_vllm provider) and an LLMResponseExtractorBlock whose content column the next stage
reads. Flow.generate(max_concurrency=C) is timed alone (imports and building the flow are not); the
seconds, the client's CPU seconds and whether every row came out with its chain's last answer are
written as JSON. The requests and completion tokens are the stub's own counts (LiteLLM's success
callbacks run in the background and may not all have run when generate returns). This file imports
nothing from labcycle.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


def stage_prompt(stage: int, stages: int, previous: str) -> str:
    # Must render exactly as bench/sdg.py's stage_prompt does: the stub checks a digest of every prompt.
    return f"Stage {stage + 1} of {stages}: continue {previous}"


def write_flow(folder: Path, stages: int, max_tokens: int) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    blocks = []
    previous_col = "row"
    for k in range(stages):
        prompt = folder / f"stage{k}.yaml"
        prompt.write_text(yaml.safe_dump([{"role": "user", "content": stage_prompt(k, stages, "{{ previous }}")}]))
        blocks += [
            {"block_type": "PromptBuilderBlock", "block_config": {
                "block_name": f"prompt{k}", "input_cols": {previous_col: "previous"}, "output_cols": f"messages{k}",
                "prompt_config_path": str(prompt)}},
            {"block_type": "LLMChatBlock", "block_config": {
                "block_name": f"chat{k}", "input_cols": f"messages{k}", "output_cols": f"response{k}", "async_mode": True,
                "n": 1, "max_tokens": max_tokens, "temperature": 0.7}},
            {"block_type": "LLMResponseExtractorBlock", "block_config": {
                "block_name": f"extract{k}", "input_cols": f"response{k}", "field_prefix": f"s{k}_", "extract_content": True}},
        ]
        previous_col = f"s{k}_content"
    flow = {"metadata": {"name": "labcycle bench multistage", "description": "A chain of LLM stages per row.",
                         "version": "1.0.0", "author": "labcycle bench", "license": "Apache-2.0",
                         "dataset_requirements": {"required_columns": ["row"], "description": "row tags"}},
            "blocks": blocks}
    path = folder / "flow.yaml"
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--stages", type=int, required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--max-tokens", type=int, required=True)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()

    import litellm
    import pandas as pd
    from sdg_hub import Flow

    logging.disable(logging.WARNING)  # sdg_hub logs every block at INFO; keep its errors
    litellm.suppress_debug_info = True
    flow = Flow.from_yaml(str(write_flow(args.folder, args.stages, args.max_tokens)))
    flow.set_model_config(model=f"hosted_vllm/{args.model}", api_base=args.base_url, api_key="EMPTY")
    dataset = pd.DataFrame({"row": [f"row-{r}" for r in range(args.rows)]})
    cpu0 = time.process_time()
    start = time.perf_counter()
    result = flow.generate(dataset, max_concurrency=args.concurrency)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    last = f"s{args.stages - 1}_content"
    ok = len(result) == args.rows and sorted(result[last].str.strip()) == sorted(dataset["row"])
    args.json.write_text(json.dumps({"seconds": seconds, "client_cpu_s": round(cpu, 3), "rows_out": len(result),
                                     "outputs_match": bool(ok)}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
