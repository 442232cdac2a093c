"""Project-local defaults for Prefect and Hugging Face, applied before either is imported.

A user who configured a Prefect server or profile keeps it: we only fill in what is unset, so
`PREFECT_API_URL` from the environment or the active profile still wins. Hugging Face's home is the
user's (`HF_HOME`, else ~/.cache/huggingface): their `hf auth login` token and model cache are found
there, so labcycle never moves it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def state_dir() -> Path:
    """Where labcycle keeps its caches and Prefect home: $LABCYCLE_HOME, else ./.labcycle."""
    return Path(os.environ.get("LABCYCLE_HOME", ".labcycle")).resolve()


def apply_defaults() -> Path:
    home = state_dir()
    os.environ.setdefault("LABCYCLE_HOME", str(home))
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    # Prefect 3.7 derives these two from ~/.prefect, not from PREFECT_HOME: without them persisted task
    # results (generation's cache) land in the user's home and are shared by every project and test run.
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(Path(os.environ["PREFECT_HOME"]) / "storage"))
    os.environ.setdefault("PREFECT_SERVER_MEMO_STORE_PATH", str(Path(os.environ["PREFECT_HOME"]) / "memo_store.toml"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The embedded server migrates its database on first start; 20 s (the default) is short on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Prefect creates only the last level of its home; the rest must exist first.
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    return home


def default_run_dir() -> Path:
    """runs/<UTC timestamp> under the current directory: one folder per run, never reused by accident."""
    from datetime import datetime, timezone

    return Path("runs", datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")).resolve()


def cache_dir(cfg) -> Path:  # type: ignore[no-untyped-def]
    """The configured cache folder, else $LABCYCLE_HOME/cache."""
    return Path(cfg.documents.cache_dir).resolve() if cfg.documents.cache_dir else state_dir() / "cache"


@contextlib.contextmanager
def datasets_bars_off() -> Iterator[None]:
    """No `datasets` progress bars inside: a stage that reports its own progress (the mix's card, tuning's
    step/loss line) would otherwise print a raw bar for every map, filter and save."""
    import datasets

    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()
