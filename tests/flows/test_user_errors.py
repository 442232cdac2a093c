"""A run that fails over a user's mistake (a LabcycleError) logs its one-line message, in the terminal and
in the UI, without a traceback; any other exception keeps its traceback."""

from __future__ import annotations

import logging

import pytest
from prefect import flow, task

import labcycle.flows  # noqa: F401 - importing the flows installs the filter, as every deployment's entry point does
from labcycle.errors import LabcycleError


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("error, traceback", [(LabcycleError("unreachable", where="knowledge/a", transient=True), False),
                                              (RuntimeError("a bug"), True)])
def test_failed_runs_log_user_errors_without_a_traceback(prefect_harness, error, traceback):
    @task(retries=1, retry_delay_seconds=0)
    def fetch() -> None:
        raise error

    @flow
    def cycle() -> None:
        fetch()

    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("prefect.task_runs", "prefect.flow_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        state = cycle(return_state=True)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert state.is_failed()
    about = [r for r in handler.records if str(error) in r.getMessage() and r.levelno >= logging.ERROR]
    assert about, [r.getMessage() for r in handler.records]
    # Prefect logs a task that exhausted its retries with the exception's traceback
    assert any(r.exc_info for r in about) == traceback
