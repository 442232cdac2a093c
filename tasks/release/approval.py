"""The optional human approval before a release: the flow run pauses with a typed form in the Prefect UI."""

from __future__ import annotations

import threading
from typing import Any

from prefect.input import RunInput

from labcycle.tasks.release.registry import logger


class ApprovalInput(RunInput):
    """The form a person fills in (Prefect UI: the paused run's Resume button) to release or not."""

    approved: bool
    comment: str = ""


def request_approval(candidate_summary: str, timeout_s: int, *, poll_interval_s: int = 10) -> dict[str, Any]:
    """Pause the current flow run until a person approves or rejects the release, or timeout_s passes.

    candidate_summary: Markdown shown above the form. -> {"approved", "comment", "by_timeout"}; a timeout
    means not released. Call it inside a flow run (not a task)."""
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run, resume_flow_run

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("request_approval pauses a flow run: call it inside a @flow")
    flow_run_id = context.flow_run.id
    form = ApprovalInput.with_initial_data(description=candidate_summary, approved=False, comment="")
    # When Prefect's own pause timeout expires, the server fails the run ("never resumed") even if the flow
    # goes on. So the deadline is ours: at timeout_s this timer resumes the run with a rejection and the
    # flow carries on without releasing. Prefect's timeout, set later, is the fallback should the timer's
    # call not get through (the run then ends failed, and nothing is released either).
    timed_out = threading.Event()

    def on_deadline() -> None:
        try:
            resume_flow_run(flow_run_id, run_input={"approved": False, "comment": "approval timed out"})
            timed_out.set()
        except Exception:  # a person answered first (not paused any more), or the server is unreachable
            pass

    timer = threading.Timer(timeout_s, on_deadline)
    timer.daemon = True
    timer.start()
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_s + 2 * poll_interval_s + 30,
                                poll_interval=poll_interval_s)
    except FlowPauseTimeout:
        timed_out.set()
    finally:
        timer.cancel()
        timer.join()  # if it fired, let it finish, so timed_out is set before it is read
    if timed_out.is_set():
        logger().warning(f"nobody answered the release approval within {timeout_s} s: not released")
        return {"approved": False, "comment": "", "by_timeout": True}
    return {"approved": bool(answer.approved), "comment": answer.comment, "by_timeout": False}
