"""labcycle's Prefect work pools, declared once in deployments/prefect.yaml and applied to a server:

    PREFECT_API_URL=http://HOST:4200/api labcycle pools apply [--gpu-type kubernetes|docker|process] [--dry-run]

The declarations live under `definitions.work_pools` (the deployments refer to them by YAML anchor) and
are checked against schemas/pools.schema.json. A pool's base job template comes from the JSON file its
`base_job_templates` names for the pool's type, checked as the server would check it; a process pool
without one gets the process worker's default template, as `prefect work-pool create --type process` does.
Missing pools are created, pools whose template or description differ are updated, and a pool whose
type differs on the server stops the run before anything changes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from labcycle.errors import LabcycleError

if TYPE_CHECKING:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.client.schemas.objects import WorkPool

POOL_TYPES = ("process", "kubernetes", "docker")
GPU_POOL = "gpu"  # the key under definitions.work_pools that --gpu-type retypes
DEFAULT_PROCESS_TEMPLATE = "Prefect's default process template"

Locate = Callable[[tuple], tuple[int, int]]


@dataclass(frozen=True)
class PoolSpec:
    """One work pool as it should be on the server."""

    key: str  # its key under definitions.work_pools (cpu, gpu)
    name: str
    type: str
    description: str | None  # None: leave the server's alone
    base_job_template: dict[str, Any]
    template_source: str  # the template file's name, or DEFAULT_PROCESS_TEMPLATE
    where: str  # prefect.yaml:line:col of the declaration's type, for messages


@dataclass(frozen=True)
class PoolResult:
    name: str
    type: str
    action: str  # created, updated, unchanged; checked: a dry run with no server to compare with
    template_source: str
    dry_run: bool = False


# --- reading the declarations ---------------------------------------------------------------------


def read_declarations(prefect_file: Path) -> tuple[dict[str, Any], Locate]:
    """`definitions.work_pools` of a prefect.yaml as plain data, and a function from a key path under
    it to (line, column) in the file."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    from labcycle.files import describe_os_error, read_bounded
    from labcycle.yaml_reader import MAX_FILE_BYTES, nesting_problem

    try:
        text = read_bounded(prefect_file, MAX_FILE_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise LabcycleError("no such file; run from the repository root or pass --prefect-file "
                            "deployments/prefect.yaml", where=str(prefect_file)) from None
    except OSError as exc:
        raise LabcycleError(f"cannot read the file ({describe_os_error(exc)}); it must be a plain UTF-8 text file",
                            where=str(prefect_file)) from None
    except UnicodeDecodeError as exc:
        raise LabcycleError(f"cannot read the file ({exc}); it must be readable UTF-8 text", where=str(prefect_file)) from None
    # ruamel composes recursively: a file nested thousands of levels deep would overflow the stack.
    problem, _ = nesting_problem(text)
    if problem:
        raise LabcycleError(problem.message, where=f"{prefect_file}:{problem.line}:{problem.column}")
    try:
        doc = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{prefect_file}:{mark.line + 1}:{mark.column + 1}" if mark else str(prefect_file)
        what = (exc.problem or exc.context or "invalid YAML").strip()
        raise LabcycleError(f"YAML error: {what}", where=where) from None
    except YAMLError as exc:
        raise LabcycleError(f"YAML error: {str(exc).splitlines()[0]}", where=str(prefect_file)) from None

    prefix = ("definitions", "work_pools")
    node: Any = doc
    for i, key in enumerate(prefix):
        if not isinstance(node, dict) or key not in node:
            at = ".".join(prefix[:i]) or "the top level"
            raise LabcycleError(f"{'.'.join(prefix)}: missing; declare the work pools under it (see "
                                f"deployments/prefect.yaml), {at} has none",
                                where=f"{prefect_file}:{':'.join(map(str, _position(doc, prefix[:i])))}")
        node = node[key]

    def locate(path: tuple) -> tuple[int, int]:
        return _position(doc, prefix + tuple(path))

    return _plain(node), locate


def _position(doc: Any, path: tuple) -> tuple[int, int]:
    """1-based (line, column) of the deepest key of `path` found in a ruamel round-trip document."""
    line, column = 1, 1
    node = doc
    for key in path:
        lc = getattr(node, "lc", None)
        if isinstance(node, dict) and key in node and lc is not None:
            line, column = (n + 1 for n in lc.key(key))
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node) and lc is not None:
            line, column = (n + 1 for n in lc.item(key))
        else:
            break
        node = node[key]
    return line, column


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _schema_message(err: Any, key: str) -> str:
    if err.validator == "additionalProperties":
        allowed = ", ".join(err.schema.get("properties", {}))
        return f"unknown key; the keys are {allowed}"
    if err.validator == "required":
        return f"{err.message}; every pool needs a name and a type ({', '.join(POOL_TYPES)})"
    return str(err.message)


def load_pools(prefect_file: Path, gpu_type: str | None = None) -> list[PoolSpec]:
    """The pools `prefect_file` declares, each with its checked base job template; `gpu_type` replaces
    the type of the `gpu` pool."""
    from labcycle.schemas import check

    declarations, locate = read_declarations(prefect_file)
    source = str(prefect_file)

    def where(*path: Any) -> str:
        return f"{source}:{':'.join(map(str, locate(path)))}"

    if not isinstance(declarations, dict):
        raise LabcycleError("definitions.work_pools must be a mapping of pool declarations (cpu: {name: ..., type: ...}, "
                            "gpu: ...)", where=where())
    check(declarations, "pools.schema.json", source, locate, _schema_message)
    if not declarations:
        raise LabcycleError("definitions.work_pools: no pools declared; declare at least one (name, type)", where=where())
    if gpu_type is not None:
        if gpu_type not in POOL_TYPES:
            raise LabcycleError(f"--gpu-type {gpu_type}: not a pool type; use one of {', '.join(POOL_TYPES)}")
        if GPU_POOL not in declarations:
            raise LabcycleError(f"--gpu-type: no `{GPU_POOL}` pool under definitions.work_pools to retype; declare one "
                                "or leave --gpu-type out", where=where())
    specs: list[PoolSpec] = []
    seen: dict[str, str] = {}
    for key, decl in declarations.items():
        name = decl["name"]
        if name in seen:
            raise LabcycleError(f"{key}.name: the pool {name!r} is declared twice (also as {seen[name]}); give each "
                                "declaration its own name", where=where(key, "name"))
        seen[name] = key
        pool_type = gpu_type if (gpu_type is not None and key == GPU_POOL) else decl["type"]
        files = decl.get("base_job_templates", {})
        if pool_type in files:
            path = prefect_file.parent / files[pool_type]
            template, template_source = load_template(path, where(key, "base_job_templates", pool_type)), files[pool_type]
        elif pool_type == "process":
            template, template_source = default_process_template(), DEFAULT_PROCESS_TEMPLATE
        else:
            other = ", or apply another --gpu-type" if key == GPU_POOL else ""
            raise LabcycleError(f"{key}: a {pool_type} pool needs a base job template; add base_job_templates: "
                                f"{{{pool_type}: FILE.json}} (a template beside prefect.yaml){other}",
                                where=where(key, "type"))
        specs.append(PoolSpec(key=key, name=name, type=pool_type, description=decl.get("description"),
                              base_job_template=template, template_source=template_source, where=where(key, "type")))
    return specs


# --- base job templates -----------------------------------------------------------------------------


def default_process_template() -> dict[str, Any]:
    """The template a process worker (and `prefect work-pool create --type process`) gives a new pool."""
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def load_template(path: Path, declared_at: str | None = None) -> dict[str, Any]:
    """A base job template read from JSON and checked (see check_template)."""
    from labcycle.files import describe_os_error, read_bounded
    from labcycle.yaml_reader import MAX_FILE_BYTES

    try:
        text = read_bounded(path, MAX_FILE_BYTES).decode("utf-8")
    except FileNotFoundError:
        where = f" (named at {declared_at})" if declared_at else ""
        raise LabcycleError(f"base job template not found{where}; file names in base_job_templates are relative "
                            "to prefect.yaml's folder", where=str(path)) from None
    except OSError as exc:
        raise LabcycleError(f"cannot read the base job template ({describe_os_error(exc)}); it must be a plain UTF-8 "
                            "JSON file", where=str(path)) from None
    except UnicodeDecodeError as exc:
        raise LabcycleError(f"cannot read the base job template ({exc}); it must be readable UTF-8 JSON", where=str(path)) from None
    try:
        template = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabcycleError(f"not valid JSON: {exc.msg}", where=f"{path}:{exc.lineno}:{exc.colno}") from None
    except RecursionError:
        raise LabcycleError("JSON nested too deeply to read; a job template is a few levels deep", where=str(path)) from None
    refuse_non_finite_json(template, text, str(path))
    check_template(template, str(path), text)
    return template


def check_template(template: Any, source: str, text: str | None = None) -> None:
    """Raise a LabcycleError unless `template` is a base job template the Prefect server accepts:
    job_configuration and variables objects, every {{ placeholder }} of job_configuration a property of
    variables (the server's own rule), variables a valid JSON Schema whose defaults fit it."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from prefect.utilities.templating import find_placeholders

    def where(needle: str | None = None, after: str | None = None) -> str:
        line = _line_of(text, needle, after) if text and needle else None
        return f"{source}:{line}" if line else source

    if not isinstance(template, dict):
        raise LabcycleError("a base job template is a JSON object with job_configuration and variables", where=where())
    unknown = [k for k in template if k not in ("job_configuration", "variables")]
    if unknown:
        raise LabcycleError(f"unknown key {unknown[0]!r}; a base job template holds only job_configuration and variables",
                            where=where(f'"{unknown[0]}"'))
    for key in ("job_configuration", "variables"):
        if not isinstance(template.get(key), dict) or not template[key]:
            raise LabcycleError(f"{key}: missing or empty; a base job template needs a job_configuration object and a "
                                "variables object (a JSON Schema)", where=where(f'"{key}"'))
    variables = template["variables"]
    properties = variables.get("properties", {})
    if not isinstance(properties, dict):
        raise LabcycleError("variables.properties must be an object: one JSON Schema per job variable",
                            where=where('"properties"', after='"variables"'))

    # As the server checks it (prefect/server/schemas/actions.py, validate_base_job_template).
    placeholders = {p.name: p.full_match for value in template["job_configuration"].values()
                    for p in find_placeholders(json.dumps(value))}
    missing = sorted(set(placeholders) - set(properties))
    if missing:
        names = ", ".join(f"{{{{ {name} }}}}" for name in missing)
        raise LabcycleError(f"job_configuration uses {names}, which variables.properties does not declare; add "
                            f"{'it' if len(missing) == 1 else 'them'} to variables.properties or remove the placeholder "
                            "(Prefect refuses the template otherwise)", where=where(placeholders[missing[0]]))

    try:
        Draft202012Validator.check_schema(variables)
    except SchemaError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        raise LabcycleError(f"variables{'.' + path if path else ''}: not a valid JSON Schema: {exc.message}",
                            where=where('"variables"')) from None
    defaults = {name: prop["default"] for name, prop in properties.items() if isinstance(prop, dict) and "default" in prop}
    for err in Draft202012Validator(variables).iter_errors(defaults):
        if err.validator == "required" or not err.absolute_path:
            continue
        name = err.absolute_path[0]
        raise LabcycleError(f"variables.properties.{name}.default: {err.message}; make the default fit the variable's schema",
                            where=where(f'"{name}"', after='"variables"'))


# Python's JSON reader takes NaN, Infinity and -Infinity, and a number too large for a float as infinity; the
# Prefect server's JSON does not. The string-free text is searched for them, for the line and column.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NON_FINITE_JSON = re.compile(r"-?Infinity|NaN|-?[0-9][0-9.]*[eE][+-]?[0-9]+")


def refuse_non_finite_json(data: Any, text: str, source: str) -> None:
    """A LabcycleError at the first NaN or infinite number of a JSON file."""
    from labcycle.schemas import non_finite

    found = non_finite(data)
    if not found:
        return
    key, value = ".".join(map(str, found[0])), found[1]
    shown, where = ("NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"), source
    plain = _JSON_STRING.sub(lambda m: " " * len(m.group()), text)
    for m in _NON_FINITE_JSON.finditer(plain):
        if not math.isfinite(float(m.group())):
            line, column = text.count("\n", 0, m.start()) + 1, m.start() - text.rfind("\n", 0, m.start())
            shown, where = m.group(), f"{source}:{line}:{column}"
            break
    raise LabcycleError(f"{key}: {shown} is not a finite number, and the Prefect server takes finite numbers only; "
                        "write a finite number instead", where=where)


def _line_of(text: str, needle: str, after: str | None = None) -> int | None:
    """The line of the first `needle` in `text` (after the first `after`, when given)."""
    start = max(text.find(after), 0) if after else 0
    index = text.find(needle, start)
    return text.count("\n", 0, index) + 1 if index >= 0 else None


# --- applying ----------------------------------------------------------------------------------------


def require_api_url() -> str:
    """The Prefect API URL from Prefect's settings; a LabcycleError when none is set, because Prefect would
    then start a temporary server and the pools would vanish with it."""
    from labcycle.webhook.events import prefect_api_url

    url = prefect_api_url()
    if not url:
        raise LabcycleError("PREFECT_API_URL is not set: name the Prefect server to apply the pools to, e.g. "
                            "export PREFECT_API_URL=http://HOST:4200/api (without it Prefect would start a temporary "
                            "server and the pools would vanish with it)")
    return url


def check_type(spec: PoolSpec, existing: WorkPool | None) -> None:
    """A pool's type cannot change on the server: say how to get the declared one."""
    if existing is None or existing.type == spec.type:
        return
    other = f", or apply with --gpu-type {existing.type} to keep it" if spec.key == GPU_POOL and existing.type in POOL_TYPES else ""
    raise LabcycleError(f"work pool {spec.name!r} exists on the server as a {existing.type} pool, declared {spec.type}; a "
                        f"pool's type cannot change: delete it with `prefect work-pool delete {spec.name}` and apply again "
                        f"(then `prefect deploy --all` to attach its deployments again), or give the declaration another "
                        f"name{other}; nothing was changed", where=spec.where)


def plan(spec: PoolSpec, existing: WorkPool | None) -> str:
    """created, updated or unchanged: what applying `spec` does to the pool the server has."""
    if existing is None:
        return "created"
    if existing.base_job_template != spec.base_job_template:
        return "updated"
    if spec.description is not None and existing.description != spec.description:
        return "updated"
    return "unchanged"


def create_payload(spec: PoolSpec) -> WorkPoolCreate:
    from prefect.client.schemas.actions import WorkPoolCreate

    fields: dict[str, Any] = {"name": spec.name, "type": spec.type, "base_job_template": spec.base_job_template}
    if spec.description is not None:
        fields["description"] = spec.description
    return WorkPoolCreate(**fields)


def update_payload(spec: PoolSpec) -> WorkPoolUpdate:
    """Only what the declaration sets: pausing and concurrency limits set on the server stay."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    fields: dict[str, Any] = {"base_job_template": spec.base_job_template}
    if spec.description is not None:
        fields["description"] = spec.description
    return WorkPoolUpdate(**fields)


def apply_pools(prefect_file: Path, gpu_type: str | None = None, dry_run: bool = False) -> list[PoolResult]:
    """Create or update the declared pools on the server PREFECT_API_URL names; one result per pool.

    A dry run changes nothing; without PREFECT_API_URL it only checks the declarations and templates."""
    specs = load_pools(prefect_file, gpu_type)
    if dry_run:
        from labcycle.webhook.events import prefect_api_url

        if not prefect_api_url():
            return [PoolResult(s.name, s.type, "checked", s.template_source, dry_run=True) for s in specs]
    require_api_url()
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    doing = "reading the work pools"
    try:
        with get_client(sync_client=True) as client:
            existing: dict[str, WorkPool | None] = {}
            for spec in specs:
                try:
                    existing[spec.name] = client.read_work_pool(spec.name)
                except ObjectNotFound:
                    existing[spec.name] = None
            for spec in specs:  # every type first, so that one wrong pool changes nothing
                check_type(spec, existing[spec.name])
            results = []
            for spec in specs:
                action = plan(spec, existing[spec.name])
                doing = f"applying work pool {spec.name!r}"
                if not dry_run and action == "created":
                    client.create_work_pool(create_payload(spec))
                elif not dry_run and action == "updated":
                    client.update_work_pool(spec.name, update_payload(spec))
                results.append(PoolResult(spec.name, spec.type, action, spec.template_source, dry_run=dry_run))
            return results
    except httpx.HTTPStatusError as exc:
        raise LabcycleError(f"the Prefect API refused {doing}: HTTP {exc.response.status_code} {_detail(exc.response)}; "
                            "check PREFECT_API_URL (and PREFECT_API_KEY or PREFECT_API_AUTH_STRING)") from None
    except httpx.HTTPError as exc:
        raise LabcycleError(f"cannot reach the Prefect API that PREFECT_API_URL names while {doing} "
                            f"({type(exc).__name__}: {exc}); start the server or fix PREFECT_API_URL", transient=True) from None


def _detail(response: Any) -> str:
    try:
        detail = response.json().get("detail", "")
    except (ValueError, AttributeError):
        detail = response.text
    return " ".join(str(detail).split())[:300]
