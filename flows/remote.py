"""Remote stages: generate, tune and evaluate run in-process, or through a Prefect deployment (on a GPU
work pool) when the config names one; the data goes through shared storage, not in-memory results.

    remote:                                    # labcycle.yaml
      storage: s3://bucket/labcycle            # or a folder that this machine and the workers share
      deployments: {generate: generate/gpu, tune: tune/gpu, evaluate: evaluate/gpu}
      timeout_s: null

The run folder RUN has a mirror STORAGE/<run name>/ with the same layout, plus taxonomy/ (the manifest's
leaves, whose root is a path of this machine). Before a remote stage lab_cycle uploads what the stage
reads and starts the deployment with those paths relative to the mirror, `storage` set to the mirror's
URL and the parsed config as JSON. `@portable` (around each stage flow's body) downloads them into its
worker's copy of the mirror ($LABCYCLE_HOME/work/<run name>), runs the body as it runs in-process, uploads
its output folder and writes its result to STORAGE/<run name>/.stages/<flow run id>.json, every path in
it pointing into the mirror. lab_cycle then downloads the output folder into RUN and carries on as if the
stage had run here. Only changed files travel (labcycle/storage.py). So local or remote is one wrapper on
each side (`run_stage` here, `portable` on the worker), not a prologue in each stage flow.

Models outside RUN (the student, a teacher folder) and the files a config names (pipelines, recipe,
suites, gate policy) are passed as they are: a GPU worker must see them at the same path, or a model
under the same Hugging Face id. Files the stages write keep the worker's paths (result.json says where a
phase was trained); only the results lab_cycle uses are mapped back to RUN.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
import socket
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from labcycle import storage
from labcycle.errors import LabcycleError

# The parameters of each stage flow that name files or folders lab_cycle hands over (the output aside).
INPUTS = {
    "generate": ("manifest",),
    "tune": ("knowledge_data", "skills_data", "base_model"),
    "evaluate": ("manifest", "candidate", "base_model", "held_out"),
}
MODELS = ("base_model", "teacher_model")  # outside RUN: a local folder (by its absolute path) or a Hugging Face id
FOLDERS = {"generate": ("documents",)}  # RUN's folders a stage reads besides its parameters (when they exist)
RESULTS = ".stages"  # STORAGE/<run name>/.stages/<flow run id>.json: a remote stage's result


@dataclass(frozen=True)
class Mirror:
    """A local folder and its copy in shared storage, with the same layout."""

    url: str
    root: Path

    def push(self, *paths: str | None, writer: str | None = None) -> None:
        storage.upload(self.root, self.url, [p for p in paths if p], writer=writer)

    def pull(self, *paths: str | None, missing_ok: bool = False) -> dict[str, list[str]]:
        return storage.download(self.url, self.root, [p for p in paths if p], missing_ok=missing_ok)

    def local(self, rel: str | None) -> str | None:
        return str(self.root / rel) if rel else None

    def relative(self, path: str | Path) -> str | None:
        """path relative to the root (posix), or None when it lies outside."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return None

    def to_shared(self, obj: Any) -> Any:
        """obj with every path under the root rewritten to the same place in the storage."""
        return _rebase(obj, str(self.root), self.url)

    def from_shared(self, obj: Any) -> Any:
        """obj with every storage URL of the mirror rewritten to the same place under the root."""
        return _rebase(obj, self.url, str(self.root))


def run_stage(stage_flow: Any, settings: Any, run_dir: Path, job_variables: dict[str, Any] | None = None,
              **params: Any) -> Any:
    """Run a stage flow (generate, tune, evaluate) with these parameters and return its final state:
    in-process, or through the deployment the config's remote section (`settings`) names for it, with
    these work pool job variables (e.g. gpu_count). Either way the stage's files end up in run_dir and the
    state's result is what the in-process flow returns."""
    deployment = settings.deployments.get(stage_flow.name)
    if not deployment:
        from prefect.utilities.asyncutils import run_coro_as_sync

        call = stage_flow(**params, return_state=True)
        return run_coro_as_sync(call) if inspect.isawaitable(call) else call
    return _remote(stage_flow.name, deployment, settings, Path(run_dir).resolve(), params, job_variables)


def run_name(run_dir: Path) -> str:
    """The mirror's folder: RUN's name and a hash of this machine and RUN's full path, so a run folder
    always gets the same mirror and two machines' runs/demo never share one."""
    run_dir = Path(run_dir).resolve()
    digest = hashlib.sha256(f"{socket.gethostname()}:{run_dir}".encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', run_dir.name)}-{digest}"


# --- on the worker: what a stage flow does when its `storage` parameter is set ------------------------


def worker_mirror(url: str) -> Mirror:
    """The worker's copy of a run's mirror: $LABCYCLE_HOME/work/<run name>, kept between stages so that
    unchanged inputs are not fetched again."""
    from labcycle.env import state_dir

    url = url.rstrip("/")
    return Mirror(url, state_dir() / "work" / url.rsplit("/", 1)[-1])


def model_path(mirror: Mirror, path: str | None) -> str | None:
    """A model parameter: a folder of the mirror when lab_cycle put it there (a merged model under RUN),
    else as given (a path the worker sees as the orchestrator does, or a Hugging Face id)."""
    if not path or Path(path).is_absolute() or path.startswith(".."):
        return path
    found = mirror.pull(path, missing_ok=True)
    return mirror.local(path) if not found["missing"] else path


def hand_back(mirror: Mirror, output: str, result: Any) -> Any:
    """After the stage: its output folder to the storage (a failed stage's finished work too), and its
    result, paths pointing into the storage, where lab_cycle reads it. Returns what the flow returns."""
    from prefect.runtime import flow_run
    from prefect.states import Failed, State

    try:
        if (mirror.root / output).exists():
            mirror.push(output, writer=str(flow_run.id))  # its own shard of the index: others may hand back now too
        if isinstance(result, State):
            return result
        shared = mirror.to_shared(result)
        storage.write_json(storage.join(mirror.url, RESULTS, f"{flow_run.id}.json"), shared)
    except LabcycleError as exc:
        return Failed(message=f"the stage ran, but handing its output back failed: {exc}")
    return shared


Body = TypeVar("Body", bound=Callable[..., Any])


def portable(stage: str) -> Callable[[Body], Body]:
    """Around a stage flow's body, under @flow: the body always runs on local paths. With `storage` set (a
    run lab_cycle started through the stage's deployment) its file parameters are relative to the run's
    mirror: they are fetched into this worker's copy and given to the body as local paths, and the output
    folder and the result are handed back after (a failed stage's finished work too)."""

    def wrap(body: Body) -> Body:
        signature = inspect.signature(body)

        def arrive(args: tuple, kwargs: dict[str, Any]) -> tuple[Mirror | None, str, dict[str, Any]]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            params = dict(bound.arguments)
            url, params["storage"] = params.get("storage"), None
            if not url:
                return None, params["output"], params
            mirror = worker_mirror(url)
            files = [k for k in (*INPUTS[stage], "taxonomy_root") if k in params and k not in MODELS]
            mirror.pull(*(params[k] for k in files))
            for folder in FOLDERS.get(stage, ()):
                mirror.pull(folder, missing_ok=True)
            output = params["output"]
            params.update({k: mirror.local(params[k]) for k in (*files, "output")})
            params.update({k: model_path(mirror, params[k]) for k in MODELS if k in params and k in INPUTS[stage]})
            return mirror, output, params

        def failed(exc: LabcycleError) -> Any:
            from prefect.states import Failed

            return Failed(message=str(exc))

        if inspect.iscoroutinefunction(body):
            @functools.wraps(body)
            async def run(*args: Any, **kwargs: Any) -> Any:
                try:
                    mirror, output, params = arrive(args, kwargs)
                except LabcycleError as exc:
                    return failed(exc)
                result = await body(**params)
                return hand_back(mirror, output, result) if mirror else result
        else:
            @functools.wraps(body)
            def run(*args: Any, **kwargs: Any) -> Any:
                try:
                    mirror, output, params = arrive(args, kwargs)
                except LabcycleError as exc:
                    return failed(exc)
                result = body(**params)
                return hand_back(mirror, output, result) if mirror else result

        # Prefect types the parameters from the signature; the body's annotations are names in its own module.
        hints = typing.get_type_hints(body)
        run.__annotations__ = hints
        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()],
            return_annotation=hints.get("return", signature.return_annotation))
        return run  # type: ignore[return-value]

    return wrap


# --- on the orchestrator ----------------------------------------------------------------------------


def _remote(stage: str, deployment: str, settings: Any, run_dir: Path, params: dict[str, Any],
            job_variables: dict[str, Any] | None = None) -> Any:
    from prefect.states import Failed

    mirror = Mirror(storage.join(settings.storage, run_name(run_dir)), run_dir)
    try:
        parameters = _send(stage, mirror, params)
    except LabcycleError as exc:
        return Failed(message=f"{stage}: sending its inputs to the shared storage failed: {exc}")
    child = _start(stage, deployment, parameters, timeout=settings.timeout_s, job_variables=job_variables)
    return child if _refused(child) else _finish(stage, deployment, mirror, child, parameters["output"], settings)


def run_groups(stage_flow: Any, settings: Any, run_dir: Path, groups: list[dict[str, Any]], **params: Any) -> list[Any]:
    """Several runs of a stage's deployment at once, one per group: `params` with the group's own values
    over them (its own `output` folder at least, so that no two runs write the same files). The inputs are
    sent once; the runs are started together, so that the pool's workers take them up side by side, and
    awaited together within remote.timeout_s. -> each group's final state, in order, as run_stage's."""
    from prefect.states import Failed

    stage = stage_flow.name
    deployment = settings.deployments[stage]
    mirror = Mirror(storage.join(settings.storage, run_name(Path(run_dir).resolve())), Path(run_dir).resolve())
    try:
        shared = _send(stage, mirror, {k: v for k, v in params.items() if k != "output"})
        outputs = [_output(mirror, group["output"]) for group in groups]
    except LabcycleError as exc:
        return [Failed(message=f"{stage}: sending its inputs to the shared storage failed: {exc}")] * len(groups)
    started = [_start(stage, deployment, {**shared, **group, "output": output}, timeout=0)
               for group, output in zip(groups, outputs)]
    children = _wait([c for c in started if not _refused(c)], settings.timeout_s)
    return [c if _refused(c) else _finish(stage, deployment, mirror, children[c.id], output, settings)
            for c, output in zip(started, outputs)]


def _refused(started: Any) -> bool:
    """_start gave a Failed state (no run was made), not a flow run."""
    from prefect.states import State

    return isinstance(started, State)


def _start(stage: str, deployment: str, parameters: dict[str, Any], timeout: float | None,
           job_variables: dict[str, Any] | None = None) -> Any:
    """A run of the deployment (awaited up to `timeout`; 0: not at all), or a Failed state saying why none."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
    from prefect.states import Failed

    try:
        return run_deployment(deployment, parameters=parameters, timeout=timeout, job_variables=job_variables)
    except ObjectNotFound:
        return Failed(message=f"{stage}: deployment {deployment!r} not found on the Prefect server; create it (prefect "
                              f"deploy --all --prefect-file deployments/prefect.yaml) or remove remote.deployments.{stage} "
                              "from the config to run the stage in-process")
    except PrefectHTTPStatusError as exc:
        return Failed(message=f"{stage}: the Prefect server refused a run of deployment {deployment!r} "
                              f"({exc.response.status_code}: {exc.response.text[:300]})")


def _wait(children: list[Any], timeout_s: float | None, poll_s: float = 2.0) -> dict[Any, Any]:
    """The flow runs as they are once every one has ended, or when timeout_s has passed."""
    import time

    from prefect.client.orchestration import get_client

    latest = {c.id: c for c in children}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            pending = [i for i, c in latest.items() if c.state is None or not c.state.is_final()]
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                return latest
            time.sleep(poll_s)
            for i in pending:
                latest[i] = client.read_flow_run(i)


def _finish(stage: str, deployment: str, mirror: Mirror, child: Any, output: str, settings: Any) -> Any:
    """The state lab_cycle carries on with, once the child run has ended (or was given up on): its output
    folder fetched into RUN (a failed run's finished work too) and its result, paths mapped into RUN."""
    from prefect.states import Completed, Failed

    run = f"flow run {child.name!r} (id {child.id}) of deployment {deployment!r}"
    state = child.state
    if state is None or not state.is_final():
        return Failed(message=f"{stage}: {run} did not finish within remote.timeout_s ({settings.timeout_s:g} s) and is "
                              f"{state.name if state else 'not started'}; its worker may be busy or gone: raise the "
                              "timeout, or cancel the run in the Prefect UI and start again")
    try:  # the run wrote what it sent into its own shard of the mirror's index; it is done, so fold it in
        storage.fold(mirror.url, str(child.id))
    except LabcycleError:
        pass  # readers merge unfolded shards anyway
    if not state.is_completed():
        try:  # whatever the stage finished comes back too, as it would in-process
            mirror.pull(output, missing_ok=True)
        except LabcycleError:
            pass
        return Failed(message=f"{stage}: {run} ended {state.name}: {state.message or 'no message'}")
    try:
        mirror.pull(output)
        result = storage.read_json(storage.join(mirror.url, RESULTS, f"{child.id}.json"))
    except LabcycleError as exc:
        return Failed(message=f"{stage}: {run} completed, but fetching its output failed: {exc}")
    if result is None:
        return Failed(message=f"{stage}: {run} completed without writing its result to {mirror.url}; is labcycle on the "
                              "worker the same version as here?")
    return Completed(data=mirror.from_shared(result), message=f"ran as {run}")


def _output(mirror: Mirror, path: str) -> str:
    output = mirror.relative(path)
    if output is None:
        raise LabcycleError("a remote stage's output must lie inside the run folder", where=str(path))
    return output


def _send(stage: str, mirror: Mirror, params: dict[str, Any]) -> dict[str, Any]:
    """Upload what the stage reads; -> the deployment's parameters, paths relative to the mirror."""
    sent = dict(params)
    for key in INPUTS[stage]:
        value = params.get(key)
        if value is None:
            continue
        rel = mirror.relative(value) if Path(value).exists() else None  # not a Hugging Face id that looks like a path
        if rel is not None:
            mirror.push(rel)
            sent[key] = rel
    for key in MODELS:
        value = params.get(key)
        if value and sent.get(key) == value and Path(value).exists():
            sent[key] = str(Path(value).resolve())  # the workers must see it at this same path
    if "output" in params:
        sent["output"] = _output(mirror, params["output"])
    if "manifest" in params:
        sent["taxonomy_root"] = _send_taxonomy(mirror, Path(params["manifest"]))
    for folder in FOLDERS.get(stage, ()):
        if (mirror.root / folder).is_dir():
            mirror.push(folder)
    if hasattr(sent.get("config"), "to_json"):
        sent["config"] = sent["config"].to_json()  # the parsed config travels as JSON; the worker types it again
        teacher = sent["config"]["generation"]["teacher"]
        if teacher.get("model") and not teacher.get("endpoint") and Path(teacher["model"]).exists():
            teacher["model"] = str(Path(teacher["model"]).resolve())  # a local teacher folder: the same path there
    sent["storage"] = mirror.url
    return sent


def _send_taxonomy(mirror: Mirror, manifest: Path) -> str:
    """The manifest's leaves (their qna.yaml files) into the mirror's taxonomy/; -> "taxonomy"."""
    import json

    data = json.loads(manifest.read_text(encoding="utf-8"))
    leaves = [leaf["path"] for leaf in data["leaves"]]
    if leaves:
        storage.upload(Path(data["taxonomy"]["root"]), mirror.url, leaves, into="taxonomy")
    return "taxonomy"


def _rebase(obj: Any, old: str, new: str) -> Any:
    old = old.rstrip("/")
    if isinstance(obj, str):
        if obj == old or obj.startswith(old + "/"):
            return new.rstrip("/") + obj[len(old):]
        return obj
    if isinstance(obj, dict):
        return {k: _rebase(v, old, new) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rebase(v, old, new) for v in obj]
    return obj
