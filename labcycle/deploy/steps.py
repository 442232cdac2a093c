"""Pull steps for labcycle's deployments (deployments/prefect.yaml).

A Prefect pull step is a function the worker calls, in the flow run's own process, before it imports the
flow; a returned {"directory": ...} becomes the run's working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKDIR_ENV = "LABCYCLE_WORKDIR"


def working_directory() -> dict[str, str]:
    """Start the flow run in a worker-local folder that outlives it: $LABCYCLE_WORKDIR, else
    $LABCYCLE_HOME/work, else .labcycle/work under the worker's directory.

    A process worker starts each run in a temporary folder and deletes it afterwards; runs/ (the default
    run folder) and other relative paths would go with it."""
    from labcycle.env import state_dir

    folder = Path(os.environ.get(WORKDIR_ENV) or state_dir() / "work").expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return {"directory": str(folder)}
