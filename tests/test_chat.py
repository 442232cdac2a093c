"""`labcycle chat MODEL [--adapter DIR]` on the tiny model, through the real CLI: one answer with --prompt,
a conversation from piped stdin, an adapter or a release (adapter files at its root, or in adapter/), and a
one-line error for each mistake."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labcycle.chat import Target, adapter_folder, interactive, resolve
from labcycle.errors import LabcycleError


def labcycle(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcycle.cli", "chat", *args], cwd=cwd, capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300, input=stdin if stdin is not None else "")


def _adapter(model: Path, out: Path, seed: int = 0) -> Path:
    """A LoRA adapter with random (not zero) weights, so that it changes what the model says."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model)
    config = peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    peft.get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from labcycle.models import build_tiny

    root = tmp_path_factory.mktemp("chat")
    adapter = _adapter(tiny_model, root / "adapter")
    release = root / "registry" / "demo" / "v1"  # a release: the adapter's files at its root, and a model card
    shutil.copytree(adapter, release)
    (release / "README.md").write_text("---\nlibrary_name: peft\n---\n# demo v1\n")
    older = root / "older" / "v1"  # a tuning phase's output: the adapter in adapter/
    shutil.copytree(adapter, older / "adapter")
    other = build_tiny(root / "other-model", hidden_size=128, layers=1, heads=2)
    return {"adapter": adapter, "release": release, "older": older, "mismatch": _adapter(other, root / "mismatch")}


def test_one_answer_with_prompt_and_the_adapter_changes_it(tiny_model, adapters, tmp_path):
    base = labcycle(str(tiny_model), "--prompt", "What is a taxonomy?", "--max-new-tokens", "6", cwd=tmp_path)
    assert base.returncode == 0, base.stderr
    assert base.stdout.endswith("\n") and base.stdout.strip()
    tuned = labcycle(str(tiny_model), "--adapter", str(adapters["release"]), "--prompt", "What is a taxonomy?",
                     "--max-new-tokens", "6", cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr
    assert tuned.stdout != base.stdout  # the adapter was applied
    assert "Traceback" not in base.stderr + tuned.stderr and "Loading weights" not in tuned.stderr


def test_piped_prompts_and_a_release_as_the_model(tiny_model, adapters, tmp_path):
    # The release names its base model by the folder it was trained on: chat puts the adapter on it.
    assert json.loads((adapters["release"] / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
    piped = labcycle(str(adapters["release"]), "--max-new-tokens", "4", cwd=tmp_path, stdin="hello\n\nand again?\n")
    assert piped.returncode == 0, piped.stderr
    assert f"loading {tiny_model} with the adapter in {adapters['release']}" in piped.stderr
    # an adapter in adapter/ (a tuning phase's output) is found too; greedy, so the same answer as at the root
    one = labcycle(str(tiny_model), "--adapter", str(adapters["older"]), "--prompt", "hello", "--max-new-tokens", "4", cwd=tmp_path)
    root = labcycle(str(tiny_model), "--adapter", str(adapters["adapter"]), "--prompt", "hello", "--max-new-tokens", "4", cwd=tmp_path)
    assert one.returncode == root.returncode == 0, one.stderr + root.stderr
    assert one.stdout == root.stdout


def test_an_adapter_for_another_model_is_one_line(tiny_model, adapters, tmp_path):
    res = labcycle(str(tiny_model), "--adapter", str(adapters["mismatch"]), "--prompt", "hi", cwd=tmp_path)
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "does not fit the model" in lines[0] and "size mismatch" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nope"], "no such model folder"),
    (["{model}", "--adapter", "{tmp}/nope"], "--adapter: no such folder"),
    (["{model}", "--adapter", "{model}"], "no adapter_config.json"),
    (["{tmp}"], "not a model (no config.json)"),
])
def test_mistakes_are_one_line_before_any_model_loads(tiny_model, tmp_path, args, message):
    res = labcycle(*(a.format(tmp=tmp_path, model=tiny_model) for a in args), "--prompt", "hi", cwd=tmp_path)
    assert res.returncode == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_resolve(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    release = tmp_path / "v1"
    release.mkdir()
    (release / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base-model"}))
    assert resolve(str(model), release) == Target(str(model), release)
    assert resolve(str(release), None) == Target("org/base-model", release)  # a Hub id: from the HF cache
    assert resolve("org/name", None) == Target("org/name", None)
    assert adapter_folder(tmp_path) is None
    # a release of a model known only by its folder's name, not here: say what to pass instead
    (release / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny"}))
    with pytest.raises(LabcycleError, match="trained on 'tiny'.*pass that model's folder as MODEL"):
        resolve(str(release), None)
    with pytest.raises(LabcycleError, match="MODEL is an adapter itself"):
        resolve(str(release), release)


def test_the_interactive_loop(monkeypatch, capsys):
    class Echo:
        def __init__(self) -> None:
            self.cleared = 0

        def ask(self, line: str) -> str:
            return f"echo {line}"

        def clear(self) -> None:
            self.cleared += 1

    lines = iter(["hi", "", "/clear", "again", "/exit", "never"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    chat = Echo()
    interactive(chat, out=sys.stdout, err=sys.stderr)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert out == "echo hi\n\necho again\n\n" and chat.cleared == 1
