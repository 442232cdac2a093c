"""The Prefect task of the release, its event, and the optional push to the Hugging Face Hub."""

from __future__ import annotations

import os
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from labcycle.errors import LabcycleError, retry_if_transient
from labcycle.tasks.release.candidate import Candidate
from labcycle.tasks.release.registry import Release, is_local, logger

EVENT = "labcycle.model.released"


def emit_released(result: dict[str, Any], candidate: Candidate) -> None:
    """The `labcycle.model.released` event, for automations (serving roll-out, notifications)."""
    from prefect.events import emit_event

    name, version = result["name"], result["version"]
    emit_event(event=EVENT,
               resource={"prefect.resource.id": f"labcycle.model.{name}.{version}",
                         "prefect.resource.name": f"{name} {version}",
                         "labcycle.model.name": name, "labcycle.model.version": version},
               payload={"version": version, "path": result["path"], "metrics": candidate.metrics,
                        "taxonomy_commit": candidate.taxonomy_commit, "fingerprint": result["fingerprint"]})


# No Prefect cache: the fingerprint already makes a second release of the same candidate a no-op, and
# looking it up in the registry (rather than a cache) also holds when the registry was changed by hand.
@task(name="release", task_run_name="release: {name}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10,
      retry_condition_fn=retry_if_transient)
def release_task(candidate: Candidate, registry: str, name: str = "labcycle-model",
                 hub_repo: str | None = None) -> dict[str, Any]:
    """release() as a Prefect transaction: a failure rolls back what was written aside; the commit emits
    the event. With hub_repo, the version (new or already released) is then pushed to the Hub."""
    from prefect.transactions import CommitMode, transaction

    attempt = Release(candidate, registry, name)
    log = logger()
    if attempt.existing:
        result = attempt.existing
        log.info(f"{name} {result['version']} already holds this candidate (fingerprint "
                 f"{attempt.fingerprint[:16]}): nothing released")
    else:
        def remove_written_aside(txn: Any) -> None:
            attempt.discard()

        def emit_release_event(txn: Any) -> None:
            assert attempt.result is not None
            emit_released(attempt.result, candidate)

        # EAGER: the release is its own unit. Once release.json is written the version exists and the event
        # goes out, whatever later steps of an enclosing transaction do; a rollback after that would find
        # nothing to remove (discard() keeps a version holding release.json).
        with transaction(commit_mode=CommitMode.EAGER) as txn:
            txn.stage(None, on_rollback_hooks=[remove_written_aside], on_commit_hooks=[emit_release_event])
            result = attempt.write()
        log.info(f"released {name} {result['version']}: {result['path']}")
    if hub_repo:
        result = {**result, "hub": push_to_hub(result["path"], hub_repo)}
    return result


def push_to_hub(version_path: str, repo_id: str, token_env: str = "HF_TOKEN") -> dict[str, Any]:
    """Upload a released version to a Hugging Face Hub model repo (created private if missing) and tag the
    commit with the version; -> {"repo", "commit", "url"}. The token comes from $token_env, else the
    huggingface_hub login."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise LabcycleError("HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to push, or leave the "
                            "hub repo unset to skip the push (the version stays released in the registry)",
                            where=repo_id)
    import tempfile

    from fsspec.core import url_to_fs
    from huggingface_hub import HfApi

    fs, path = url_to_fs(str(version_path))
    version = path.rstrip("/").rsplit("/", 1)[-1]
    api = HfApi(token=os.environ.get(token_env) or None)
    with tempfile.TemporaryDirectory(prefix="labcycle-push-") as tmp:
        folder = path
        if not is_local(fs):  # upload_folder reads a local folder
            folder = f"{tmp}/{version}"
            fs.get(path, folder, recursive=True)
        try:
            api.create_repo(repo_id, repo_type="model", private=True, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                       commit_message=f"labcycle release {version}")
            api.create_tag(repo_id, tag=version, revision=commit.oid, exist_ok=True)
        except Exception as exc:
            raise LabcycleError(f"pushing {version} to the Hub failed ({exc}); check ${token_env} and the repo id, "
                                "then run the release again (the registry version is kept and not released twice)",
                                where=repo_id, transient=True) from None
    return {"repo": repo_id, "commit": commit.oid, "url": str(commit.commit_url)}
