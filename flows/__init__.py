"""Prefect flows: they only orchestrate the stages in tasks/."""

from labcycle.errors import quiet_user_errors

quiet_user_errors()  # a failed run over a user's mistake logs its one-line message, not a traceback
