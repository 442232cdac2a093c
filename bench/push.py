"""Benchmark: how long from a git push to a lab-cycle flow run, through the real pieces.

Run from the repository root:

    .venv/bin/python bench/push.py --pushes 5 --poll 10 --json /tmp/labcycle-bench-push.json

It starts a real Prefect server (`prefect server start`, SQLite, its own home, a free loopback port),
applies the work pools, deploys deployments/prefect.yaml's lab-cycle deployment (its taxonomy.push
trigger included), starts one process worker on the cpu pool that polls every `--poll` seconds (Prefect's
default is 10), and the webhook receiver (`labcycle webhook serve`). Then, `--pushes` times: it POSTs a
signed GitHub push for a taxonomy repository made on the spot and measures

  created   push sent -> the flow run exists (receiver verifies, emits taxonomy.push; the automation
            creates the run)
  started   push sent -> the flow run is Running (the worker picked it up, started a process, ran the
            pull step and loaded the flow)

then cancels the run (only the start is measured) and waits until the worker has let it go. Between
pushes it sleeps a random fraction of the poll interval, so pushes land at random points of the
worker's polling cycle, as real ones do.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import load_average, machine, print_machine, source_state, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--poll", type=float, default=10.0, help="the worker's poll interval, seconds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="labcycle-bench-push-"))
    os.environ.setdefault("LABCYCLE_HOME", str(home / "labcycle"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    from labcycle.demo import prepare
    from tests.stack import BIN, deploy, flow_runs, prefect_stack
    from tests.test_webhook import SECRET, github_push, post_github

    load_start = load_average()
    prepare(REPO / "taxonomy", home / "origin")
    origin = home / "origin" / "taxonomy"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=origin, capture_output=True, text=True, check=True).stdout.strip()
    rows = []
    with prefect_stack(home / "stack") as stack:
        stack.env["LABCYCLE_WORKDIR"] = str(home / "work")
        stack.run(str(BIN / "labcycle"), "pools", "apply", "--gpu-type", "process")
        deploy(stack, "lab-cycle/labcycle")
        stack.worker("cpu", poll_seconds=args.poll)
        config = home / "webhook.yaml"
        config.write_text(f"delivery_store: {home / 'deliveries.sqlite'}\nallow_local_repositories: true\n")
        receiver = stack.receiver(config, SECRET)  # the webhook tests' secret: post_github signs with it
        with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client, \
                httpx.Client(base_url=receiver, timeout=30) as http:
            for i in range(args.pushes):
                time.sleep(random.uniform(0, args.poll))
                before = len(flow_runs(stack, "lab-cycle/labcycle"))
                # A fresh `before` per push: the receiver treats a byte-identical body as a replay.
                payload = github_push(full_name="acme/taxonomy", after=commit, before=uuid.uuid4().hex + "0" * 8)
                payload["repository"]["clone_url"] = str(origin)
                sent = time.time()
                res = post_github(http, payload, delivery=f"bench-{uuid.uuid4()}")
                assert res.status_code == 202, res.text
                created = started = None
                while started is None:
                    runs = flow_runs(stack, "lab-cycle/labcycle")[before:]
                    if runs:
                        run = runs[0]
                        created = created or run.created.timestamp() - sent
                        if run.start_time is not None:
                            started = run.start_time.timestamp() - sent
                    if time.time() - sent > 300:
                        raise SystemExit(f"push {i}: no run started within 300 s\n{stack.log('worker-cpu')[-3000:]}")
                    time.sleep(0.05)
                client.set_flow_run_state(run.id, Cancelling(), force=True)
                while client.read_flow_run(run.id).state.type not in (StateType.CANCELLED, StateType.FAILED,
                                                                       StateType.COMPLETED, StateType.CRASHED):
                    time.sleep(0.5)
                rows.append({"created_s": round(created, 3), "started_s": round(started, 3)})
                print(f"push {i + 1}: run created {created:.2f} s, started {started:.2f} s after the push")

    created = [r["created_s"] for r in rows]
    started = [r["started_s"] for r in rows]
    print(f"\nworker poll interval {args.poll:g} s, {len(rows)} pushes")
    print(f"push -> run created: median {statistics.median(created):.2f} s (min {min(created):.2f}, max {max(created):.2f})")
    print(f"push -> run started: median {statistics.median(started):.2f} s (min {min(started):.2f}, max {max(started):.2f})")
    out = {"machine": {**machine(("prefect", "uvicorn", "starlette")), "load_average_1min": {"start": load_start, "end": load_average()}},
           "source": source_state(), "poll_seconds": args.poll, "pushes": rows}
    print_machine(out)
    write_results(args.json, out)


if __name__ == "__main__":
    main()
