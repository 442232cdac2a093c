"""Errors a user can cause: each carries one line that says where, what is wrong and what to do."""

from __future__ import annotations


class LabcycleError(Exception):
    """A problem with the user's input or environment, shown without a traceback.

    `where` is a file path (optionally with :line:col) or a leaf id; the message says what to do.
    """

    def __init__(self, message: str, where: str | None = None, *, transient: bool = False):
        self.where = where
        self.message = message
        # True when trying again later may succeed (network trouble), so Prefect retries are worth it.
        self.transient = transient
        super().__init__(f"{where}: {message}" if where else message)


def retry_if_transient(task, task_run, state) -> bool:  # type: ignore[no-untyped-def]
    """Prefect retry condition: retry unexpected failures and transient LabcycleErrors, never user mistakes."""
    try:
        state.result()
    except LabcycleError as exc:
        return exc.transient
    except Exception:
        return True
    return False


class _NoTracebackForUserErrors:
    """A logging filter: a record about a LabcycleError keeps its message and loses the traceback."""

    def filter(self, record):  # type: ignore[no-untyped-def]
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, LabcycleError):
            record.exc_info, record.exc_text = None, None
        return True


_FILTER = _NoTracebackForUserErrors()


def quiet_user_errors() -> None:
    """Prefect logs a failed task or flow run with its traceback, in the terminal and in the UI. For a
    LabcycleError the message already says where and what to do: keep it, drop the traceback."""
    import logging

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
