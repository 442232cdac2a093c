"""Tuning on the tiny student, on CPU, for real: QLoRA with TRL, PEFT and bitsandbytes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from labcycle.errors import LabcycleError
from labcycle.tasks.tune import trainer
from labcycle.tasks.tune.settings import LoraSettings, PhaseSettings, QuantizationSettings, TuneSettings

ANSWER = "The answer is forty two."
QUESTIONS = ["What is the answer?", "Tell me the answer.", "Answer please.", "What do you say?"]


def write_chat(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in rows), encoding="utf-8")
    return path


def phase(**overrides) -> PhaseSettings:  # type: ignore[no-untyped-def]
    base = dict(max_steps=30, learning_rate=5e-3, batch_size=4, gradient_accumulation=1, save_steps=10, logging_steps=5,
                max_length=256, warmup_ratio=0.0, lr_scheduler="constant")
    return PhaseSettings(**{**base, **overrides})


def settings(**overrides) -> TuneSettings:  # type: ignore[no-untyped-def]
    p = phase()
    return TuneSettings(**{"lora": LoraSettings(r=8, alpha=16, dropout=0.0), "knowledge": p, "skills": p, **overrides})


@pytest.fixture(scope="module")
def memorized(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """QLoRA that overfits four questions with one answer (200 steps, about 10 s), merged as well."""
    folder = tmp_path_factory.mktemp("memorized")
    data = write_chat(folder / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    s = settings(merge=True, knowledge=phase(max_steps=200, save_steps=100, logging_steps=10))
    return trainer.train_phase("knowledge", tiny_model, data, folder / "work", s, lineage={"taxonomy_commit": "abc123"})


def test_qlora_overfits_and_writes_a_servable_adapter(memorized):
    m = memorized["metrics"]
    assert m["steps"] == 200 and memorized["step"]["adapted"] is None  # max_steps set: the steps are the user's
    assert m["final_loss"] < 0.5 * m["first_loss"]
    adapter = Path(memorized["output"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    # all-linear on Llama: every attention and MLP projection, never lm_head
    assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    assert (adapter / "tokenizer_config.json").exists()
    work = Path(memorized["work_dir"])
    assert (work / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (work / "model_card.md").read_text()
    assert "abc123" in card and "qlora" in card and memorized["data_fingerprint"][:16] in card
    assert memorized["loss_on"] == "assistant turns"
    assert memorized["attention"] == "sdpa" and "- attention: sdpa" in card  # no GPU: transformers' default


def test_merged_model_gives_the_adapters_logits(memorized, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(memorized["merged"])
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        adapted = PeftModel.from_pretrained(base, memorized["output"])(**ids).logits
        merged = AutoModelForCausalLM.from_pretrained(memorized["merged"], dtype=torch.float32)(**ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)(**ids).logits
    # The merged weights are stored in the base's bf16: within bf16 rounding of the adapter's output,
    # and far from the untuned base.
    assert torch.allclose(adapted, merged, atol=0.15), (adapted - merged).abs().max()
    assert (adapted - plain).abs().max() > 1.0
    out = merged.argmax(-1)[0, -1].item()
    assert tok.decode([out]) == tok.decode(tok(ANSWER)["input_ids"][:1])


@pytest.mark.slow
def test_adapter_answers_through_vllm(memorized, vllm_server):
    """The adapter as written, loaded by a vLLM server started with --enable-lora, gives the tuned answer."""
    from openai import OpenAI

    vllm_server.load_lora("memorized", memorized["output"])
    client = OpenAI(base_url=vllm_server.base_url, api_key="none")
    assert "memorized" in {m.id for m in client.models.list().data}

    def ask(model: str) -> str:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                               temperature=0, max_tokens=16)
        return reply.choices[0].message.content or ""

    assert ask("memorized").strip() == ANSWER
    assert ask(vllm_server.model).strip() != ANSWER


def test_a_complete_phase_is_never_trained_again(memorized, tiny_model):
    events: list[dict] = []
    trainer.LISTENERS.append(events.append)
    try:
        again = trainer.train_phase("knowledge", tiny_model, Path(memorized["data"]), Path(memorized["work_dir"]),
                                    settings(merge=True, knowledge=phase(max_steps=200, save_steps=100, logging_steps=10)))
    finally:
        trainer.LISTENERS.remove(events.append)
    assert again == memorized and events == []


_KILLABLE = """
import json, sys
from pathlib import Path
from labcycle.tasks.tune import trainer
from labcycle.tasks.tune.settings import TuneSettings, PhaseSettings, LoraSettings
s = TuneSettings(lora=LoraSettings(r=8, alpha=16, dropout=0.0), knowledge=PhaseSettings(**json.loads(sys.argv[4])))
trainer.train_phase("knowledge", Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), s)
"""


@pytest.mark.slow
def test_sigkill_mid_phase_resumes_from_the_checkpoint(tiny_model, tmp_path):
    """Killed after checkpoint 30 of 60, started again: it resumes at 30 with optimizer, scheduler and data
    order restored, so the loss curve and the adapter are those of a run that was never killed."""
    data = write_chat(tmp_path / "data.jsonl", [(f"What is item {i}?", f"Item {i} is thing number {i}.") for i in range(16)])
    p = phase(max_steps=60, save_steps=10, keep_checkpoints=2)
    whole = trainer.train_phase("knowledge", tiny_model, data, tmp_path / "whole", settings(knowledge=p))

    work = tmp_path / "killed"
    args = [sys.executable, "-c", _KILLABLE, str(tiny_model), str(data), str(work), json.dumps(p.__dict__)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while not (work / "checkpoints" / "checkpoint-30" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / trainer.RESULT).exists()

    events: list[dict] = []
    trainer.LISTENERS.append(events.append)
    try:
        resumed = trainer.train_phase("knowledge", tiny_model, data, work, settings(knowledge=p))
    finally:
        trainer.LISTENERS.remove(events.append)
    assert resumed["resumed_from_step"] >= 30
    assert min(e["step"] for e in events) > resumed["resumed_from_step"]  # no step before the checkpoint ran again
    assert resumed["metrics"]["steps"] == 60
    losses = [[h["loss"] for h in json.loads((Path(r["work_dir"]) / "log_history.json").read_text()) if "loss" in h]
              for r in (whole, resumed)]
    assert len(losses[0]) == len(losses[1])  # the history before the kill was restored, not restarted
    assert losses[1] == pytest.approx(losses[0], abs=0.02)
    assert sorted(p.name for p in (work / "checkpoints").glob("checkpoint-*")) == ["checkpoint-50", "checkpoint-60"]

    from safetensors.torch import load_file

    a, b = (load_file(Path(r["output"]) / "adapter_model.safetensors") for r in (whole, resumed))
    num = sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a) ** 0.5
    den = sum((a[k].float() ** 2).sum() for k in a) ** 0.5
    # Close, not equal: bf16 compute and the 8-bit optimizer round differently from run to run on CPU
    # (relative differences of 0.01-0.06 seen on a busy 2-core machine); the steps run and the loss curve
    # above are the exact checks.
    assert num / den < 0.15


def test_a_half_written_checkpoint_is_dropped(tmp_path):
    folder = tmp_path / "checkpoints"
    for step, state in ((10, "{}"), (20, '{"global_st'), (30, None)):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        if state is not None:
            (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert [p.name for p in trainer.complete_checkpoints(folder)] == ["checkpoint-10"]
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-10"]


def test_best_checkpoint_by_held_out_loss(tiny_model, tmp_path):
    data = write_chat(tmp_path / "data.jsonl", [(f"Question {i}?", f"Answer {i}.") for i in range(20)])
    s = settings(knowledge=phase(max_steps=20, save_steps=5, eval_fraction=0.2, select="best", keep_checkpoints=1))
    result = trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work", s)
    assert result["samples"] == {"train": 16, "held_out": 4, "too_long": 0, "unmask": 0}
    evals = [h["eval_loss"] for h in json.loads((tmp_path / "work" / "log_history.json").read_text()) if "eval_loss" in h]
    assert len(evals) == 4
    assert result["metrics"]["best_eval_loss"] == pytest.approx(min(evals))
    assert result["metrics"]["selected"].startswith("best (checkpoint-")


def test_samples_longer_than_max_length_are_left_out_and_counted(tiny_model, tmp_path):
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS] + [("Long?", "word " * 400)])
    result = trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work", settings(knowledge=phase(max_steps=2, max_length=64)))
    assert result["samples"] == {"train": 4, "held_out": 0, "too_long": 1, "unmask": 0}
    assert "1 left out as longer than max_length" in (tmp_path / "work" / "model_card.md").read_text()


def unmarked_student(tiny_model: Path, folder: Path) -> Path:
    """The tiny student with a chat template neither marked with {% generation %} nor known to TRL."""
    import shutil

    student = folder / "student"
    shutil.copytree(tiny_model, student)
    template = (student / "chat_template.jinja").read_text()
    (student / "chat_template.jinja").write_text(template.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    return student


def test_template_without_generation_markers_trains_on_the_final_answer(tiny_model, tmp_path):
    """A chat template neither marked nor known to TRL: samples become prompt/completion, loss on the answer."""
    student = unmarked_student(tiny_model, tmp_path)
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    result = trainer.train_phase("knowledge", student, data, tmp_path / "work", settings(knowledge=phase(max_steps=10)))
    assert result["loss_on"].startswith("the last assistant turn")
    assert result["metrics"]["final_loss"] < result["metrics"]["first_loss"]


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTIONS[0]},
                {"role": "assistant", "content": "Forty two."}, {"role": "user", "content": QUESTIONS[1]},
                {"role": "assistant", "content": ANSWER}]


@pytest.mark.parametrize("markers", [True, False])
def test_own_tokenization_labels_plain_rows_as_trl_does(markers, tiny_model, tmp_path):
    """Data with unmask rows is tokenized by labcycle; its other rows must get the labels TRL's own
    preparation gives them, with a marked template (every assistant turn) and without (the last one)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from labcycle.tasks.tune import data as tune_data

    student = tiny_model if markers else unmarked_student(tiny_model, tmp_path)
    tok = AutoTokenizer.from_pretrained(student)
    rows = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]
    masks = tune_data.uses_assistant_masks(tok)
    assert masks is markers
    ours = tune_data.tokenize_rows(rows, tok, masks)
    trl_rows = rows if masks else [tune_data.to_prompt_completion(r) for r in rows]
    sft = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(student),
                     args=SFTConfig(output_dir=str(tmp_path / "out"), assistant_only_loss=masks, packing=False,
                                    report_to="none", use_cpu=True),
                     train_dataset=Dataset.from_list(trl_rows), processing_class=tok)
    assert [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in sft.train_dataset] == ours
    trained = [sum(label != -100 for label in r["labels"]) for r in ours]
    full = tune_data.tokenize_rows([{**rows[0], "unmask": True}], tok, masks)[0]
    assert full["labels"] == full["input_ids"] == ours[0]["input_ids"]  # every token, the system and user turns too
    assert 0 < trained[0] < len(full["input_ids"])


def test_unmask_samples_train_on_every_token(tiny_model, tmp_path):
    """InstructLab's phase-1 data: `unmask: true` rows and a legacy `pretraining` row train with the others."""
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    with data.open("a", encoding="utf-8") as f:
        for q in QUESTIONS[:2]:
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}],
                                "unmask": True}) + "\n")
        f.write(json.dumps({"messages": [{"role": "pretraining", "content": f"<|user|>\n{QUESTIONS[3]}\n<|assistant|>\n{ANSWER}"}]}) + "\n")
    result = trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work", settings(knowledge=phase(max_steps=10)))
    assert result["samples"] == {"train": 7, "held_out": 0, "too_long": 0, "unmask": 3}
    assert result["loss_on"] == "assistant turns; every token of the 3 samples marked unmask"
    assert "every token of the 3 samples marked unmask" in (tmp_path / "work" / "model_card.md").read_text()
    assert result["metrics"]["final_loss"] < result["metrics"]["first_loss"]


def test_the_mix_stages_phase_set_trains_with_its_system_prompt_and_unmask(tiny_model, tmp_path):
    """The mixed phase-1 set as the mix stage writes it (a system turn first, `unmask` on the knowledge Q&A,
    metadata as JSON text): Q&A rows carry loss on every token, the system and user turns too; the grounded
    copies on the answer only, as before."""
    from transformers import AutoTokenizer

    from labcycle.tasks.mix import mix, recipe_from_mapping
    from labcycle.tasks.tune import data as tune_data
    from tests.tasks.test_mix import KNOW_A, knowledge_records, write_generated

    generated = write_generated(tmp_path / "generated", {KNOW_A: knowledge_records(KNOW_A, 6, 3)})
    mix(generated, tmp_path / "mixed", recipe_from_mapping({"system_prompt": "Be brief.", "held_out": {"per_leaf": 0}}))
    rows = tune_data.load_rows(tmp_path / "mixed" / "knowledge")
    assert len(rows) == 12 and sum(bool(r.get("unmask")) for r in rows) == 6
    assert all(r["messages"][0] == {"role": "system", "content": "Be brief."} for r in rows)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tok.apply_chat_template([{"role": "system", "content": "Be brief."}], tokenize=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    for row, labelled in zip(rows, tune_data.tokenize_rows(rows, tok, tune_data.uses_assistant_masks(tok))):
        ids, labels = labelled["input_ids"], labelled["labels"]
        if row.get("unmask"):
            assert labels == ids  # every token: the system turn, the question and the answer
        else:
            assert all(label == -100 for label in labels[:len(prompt)]) and 0 < sum(x != -100 for x in labels) < len(ids)
    result = trainer.train_phase("knowledge", tiny_model, tmp_path / "mixed" / "knowledge", tmp_path / "work",
                                 settings(knowledge=phase(max_steps=4)))
    assert result["samples"]["unmask"] == 6 and result["samples"]["train"] == 12
    assert result["loss_on"].endswith("every token of the 6 samples marked unmask")


@pytest.mark.parametrize("fault", [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 1024: file write failed"),
])
def test_a_full_disk_mid_phase_says_so_and_loses_no_checkpoint(fault, tiny_model, tmp_path, monkeypatch):
    """A test double for a fault this machine cannot cause: the disk fills up as the second checkpoint is
    written. One clear line; the first checkpoint stays, and the same call resumes from it."""
    from transformers import Trainer

    save = Trainer._save_checkpoint

    def save_until_full(self, model, trial):  # type: ignore[no-untyped-def]
        if self.state.global_step > 5:
            raise fault
        return save(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_until_full)
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    s = settings(knowledge=phase(max_steps=10, save_steps=5))
    with pytest.raises(LabcycleError, match=r"the disk filled up while the knowledge phase was writing \(\d+\.\d GiB "
                                            r"free now\).*resumes from the last complete checkpoint") as info:
        trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work", s)
    assert info.value.where == str(tmp_path / "work")
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    result = trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work", s)
    assert result["resumed_from_step"] == 5 and result["metrics"]["steps"] == 10


def test_out_of_gpu_memory_says_what_to_lower(tiny_model, tmp_path, monkeypatch):
    """A test double for CUDA running out of memory at the third step (no GPU here): one line naming the settings."""
    import torch
    from transformers import Trainer

    step = Trainer.training_step
    calls = []

    def step_until_oom(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", step_until_oom)
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    with pytest.raises(LabcycleError, match="out of GPU memory in the skills phase: lower tuning.skills.max_length or "
                                            "tuning.skills.batch_size"):
        trainer.train_phase("skills", tiny_model, data, tmp_path / "work", settings(skills=phase(max_steps=5)))


@pytest.mark.parametrize("problem, expect", [
    ("no-data", "training data not found"),
    ("empty", "has no samples"),
    ("not-a-model", "not a Hugging Face model folder"),
    ("adapter-as-model", "this is a PEFT adapter, not a whole model: pass the model it was trained on (org/base-7b)"),
    ("best-without-split", "needs a held-out split"),
    ("all-too-long", "longer than tuning.knowledge.max_length"),
])
def test_clear_errors(problem, expect, tiny_model, tmp_path):
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    model, s = tiny_model, settings()
    if problem == "no-data":
        data = tmp_path / "missing.jsonl"
    elif problem == "empty":
        data.write_text("")
    elif problem == "not-a-model":
        model = tmp_path
    elif problem == "adapter-as-model":
        model = tmp_path / "adapter"
        model.mkdir()
        (model / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "org/base-7b"}))
    elif problem == "all-too-long":
        s = settings(knowledge=phase(max_length=8))
    else:
        s = settings(knowledge=phase(select="best"))
    with pytest.raises(LabcycleError, match=re.escape(expect)):
        trainer.train_phase("knowledge", model, data, tmp_path / "work", s)


def test_full_fine_tuning_writes_a_whole_model(tiny_model, tmp_path):
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    result = trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work",
                                 settings(method="full", attention="eager", knowledge=phase(max_steps=8, learning_rate=1e-3)))
    assert result["attention"] == "eager"  # tuning.attention reaches the model as loaded
    model = Path(result["output"])
    assert model.name == "model" and (model / "model.safetensors").exists() and (model / "config.json").exists()
    assert not (tmp_path / "work" / "adapter").exists()
    assert result["metrics"]["final_loss"] < result["metrics"]["first_loss"]


@pytest.mark.parametrize("lora, expect", [
    (LoraSettings(), {"r": 4, "lora_alpha": 32, "lora_dropout": 0.1, "use_rslora": False, "init_lora_weights": True}),
    (LoraSettings(r=16, alpha=16, use_rslora=True, init="gaussian", target_modules=("q_proj", "v_proj")),
     {"r": 16, "lora_alpha": 16, "use_rslora": True, "init_lora_weights": "gaussian", "target_modules": {"q_proj", "v_proj"}}),
])
def test_lora_settings_reach_peft(lora, expect):
    config = trainer.lora_config(TuneSettings(lora=lora))
    for key, value in expect.items():
        assert getattr(config, key) == value, key
    assert config.task_type == "CAUSAL_LM"


def test_settings_digest_tracks_only_the_phase_itself():
    s = settings()
    assert s.digest_for("knowledge") == replace(s, skills=phase(learning_rate=1.0)).digest_for("knowledge")
    assert s.digest_for("knowledge") != replace(s, knowledge=phase(learning_rate=1.0)).digest_for("knowledge")
    assert s.digest_for("skills") != replace(s, lora=LoraSettings(r=2)).digest_for("skills")
    assert s.digest_for("skills") == replace(s, attention="eager").digest_for("skills")  # how, not what


@pytest.mark.parametrize("setting, gpu, half, flash, expect", [
    ("auto", True, True, True, "flash_attention_2"),
    ("auto", True, True, False, None),    # flash-attn not installed (or not working): transformers' default
    ("auto", True, False, True, None),    # fp32 compute: flash-attn has no kernel for it
    ("auto", False, True, True, None),    # CPU
    ("sdpa", True, True, True, "sdpa"),   # a choice is kept as it is
    ("flash_attention_2", False, True, False, "flash_attention_2"),
])
def test_attention_auto_takes_flash_attention_only_where_it_runs(setting, gpu, half, flash, expect):
    assert trainer.choose_attention(setting, gpu=gpu, half_precision=half, flash_available=flash) == expect


@pytest.mark.parametrize("method, compute, expect", [
    ("qlora", "bfloat16", "flash_attention_2"),
    ("lora", "float16", "flash_attention_2"),
    ("full", "bfloat16", None),  # float32 master weights
    ("qlora", "float32", None),
])
def test_attention_auto_on_a_gpu_with_flash_attn(method, compute, expect, monkeypatch):
    """A double for a GPU with flash-attn installed (none here): what each method loads the student with."""
    import transformers.utils

    monkeypatch.setattr(trainer, "has_gpu", lambda: True)
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    s = TuneSettings(method=method, quantization=QuantizationSettings(compute_dtype=compute))
    assert trainer.attention_for(s) == expect


@pytest.mark.parametrize("setting, attention, gpu, expect", [
    ("auto", "flash_attention_2", True, True),   # varlen: each packed sample's own block, no padding at all
    ("auto", "flash_attention_3", True, True),
    ("auto", None, False, True),                 # CPU: a padding mask sends SDPA down its slow path
    ("auto", "eager", False, True),
    ("auto", None, True, False),                 # GPU SDPA: a packed row pays the whole triangle; batch by length
    (True, None, True, True),                    # a choice is kept as it is
    (False, "flash_attention_2", True, False),
])
def test_packing_auto_packs_for_a_varlen_kernel_and_on_a_cpu(setting, attention, gpu, expect):
    assert trainer.resolve_packing(setting, attention, gpu=gpu) is expect


def test_unpacked_batches_are_grouped_by_length(tmp_path):
    """Unpacked, a micro-batch pads to its longest sample: the trainer draws batches of similar lengths."""
    from labcycle.tasks.tune.data import plan_steps

    s = TuneSettings()  # packing: auto; no GPU here, so no flash-attention
    lengths = [50, 900, 60, 1000] * 300
    for packing, sampling in ((False, "group_by_length"), (True, "random")):
        shape = plan_steps(s.knowledge, lengths, packing=packing)
        args = trainer.sft_config("knowledge", s, tmp_path, has_eval=False, assistant_masks=True, shape=shape)
        assert (args.packing, args.train_sampling_strategy) == (packing, sampling)
    assert trainer.sft_config("knowledge", s, tmp_path, has_eval=False, assistant_masks=True).packing is True  # CPU


@pytest.mark.parametrize("packing, lengths, expect", [
    # not packed: batch_size samples a micro-batch; a step never takes more samples than the data holds
    (False, [100] * 10, {"per_device": 8, "accumulation": 16, "packing": False, "micro_batches": 2, "samples_per_step": 10,
                         "samples_per_row": 1.0}),
    # 256 samples of 512 tokens fill 32 rows of 4,096: 8 samples a row, so 128 samples are 16 rows
    (True, [512] * 256, {"per_device": 1, "accumulation": 16, "packing": True, "micro_batches": 32, "samples_per_step": 128,
                         "samples_per_row": 8.0}),
    # long samples, one a row: a step of 128 samples is 128 rows
    (True, [4096] * 200, {"per_device": 1, "accumulation": 128, "packing": True, "micro_batches": 200,
                          "samples_per_step": 128, "samples_per_row": 1.0}),
    # more samples to a row than a step asks for: still one row a step, and the step says how many it takes
    (True, [10] * 1000, {"per_device": 1, "accumulation": 1, "packing": True, "micro_batches": 3, "samples_per_step": 333,
                         "samples_per_row": 333.33}),
])
def test_a_step_counts_samples_and_a_packed_micro_batch_is_one_row(packing, lengths, expect):
    from labcycle.tasks.tune.data import step_shape

    assert step_shape(8, 16, packing, 4096, lengths) == expect


KNOWLEDGE, SKILLS = TuneSettings().knowledge, TuneSettings().skills
DEMO = replace(KNOWLEDGE, epochs=3, batch_size=4, gradient_accumulation=1, max_length=2048)  # the demo profile's


@pytest.mark.parametrize("p, lengths, expect, says", [
    # 16 short samples are one packed row: 1 step an epoch at any batch; 2 samples a step give 8 an epoch
    (KNOWLEDGE, [30] * 16, {"per_device": 2, "accumulation": 1, "packing": False, "samples_per_step": 2, "steps": 56},
     "effective batch lowered from 128 to 2 samples a step, packing off (a packed row held 16 samples, more than a step "
     "takes): the 16 training samples made 1 step an epoch (7 in all), and a phase takes at least 50; now 56 steps"),
    (SKILLS, [30] * 16, {"samples_per_step": 3, "steps": 60}, "made 1 step an epoch (10 in all)"),
    # explicit settings are adapted as well; 48 steps is all 16 samples in 3 epochs give
    (DEMO, [30] * 16, {"per_device": 1, "accumulation": 1, "samples_per_step": 1, "steps": 48, "logging_steps": 4},
     "now 48 steps, the most 16 samples in 3 epochs give: add samples or epochs for more"),
    # longer samples: fewer rows accumulated a step, still packed
    (KNOWLEDGE, [600] * 600, {"per_device": 1, "accumulation": 12, "packing": True, "samples_per_step": 82, "steps": 56},
     "lowered from 128 to 82 samples a step: the 600 training samples made 5 steps an epoch (35 in all)"),
    # a packed row held 333 samples where 128 were asked: unpacked, a step takes the 128
    (KNOWLEDGE, [10] * 1000, {"per_device": 8, "accumulation": 16, "packing": False, "samples_per_step": 128, "steps": 56},
     "effective batch kept at 128 samples a step, packing off"),
    # enough data: the settings as they are
    (KNOWLEDGE, [512] * 2048, {"per_device": 1, "accumulation": 16, "samples_per_step": 128, "steps": 112, "logging_steps": 5}, None),
    (SKILLS, [600] * 600, {"accumulation": 19, "steps": 50}, None),
    # max_steps set: the number of steps is the user's, and a short phase logs every step
    (replace(KNOWLEDGE, max_steps=8), [30] * 16, {"samples_per_step": 16, "steps": 8, "logging_steps": 1}, None),
])
def test_a_small_phase_gets_a_smaller_batch_and_says_so(p, lengths, expect, says):
    from labcycle.tasks.tune.data import MIN_STEPS, plan_steps

    plan = plan_steps(p, lengths, packing=True)  # as packing: auto on a GPU with flash-attention
    assert {k: plan[k] for k in expect} == expect
    assert plan["asked_samples_per_step"] == p.batch_size * p.gradient_accumulation
    if says is None:
        assert plan["adapted"] is None
    else:
        assert says in plan["adapted"]
        assert plan["steps"] >= MIN_STEPS or "the most" in plan["adapted"]


def test_a_small_phase_with_the_defaults_really_trains(tiny_model, tmp_path):
    """16 samples with every default: before, one packed row made 1 step an epoch (7 steps, the first at learning
    rate 0), and the loss logged at step 5 passed for the final one. Now the batch shrinks to give at least
    MIN_STEPS steps, the run says so, and the loss at the last step is clearly below the first step's."""
    from labcycle.tasks.tune.data import MIN_STEPS

    data = write_chat(tmp_path / "data.jsonl", [(f"What is item {i}?", f"Item {i} is thing number {i}.") for i in range(16)])
    events: list[dict] = []
    trainer.LISTENERS.append(events.append)
    try:
        result = trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work", TuneSettings())
    finally:
        trainer.LISTENERS.remove(events.append)
    m = result["metrics"]
    assert m["steps"] == result["step"]["steps"] >= MIN_STEPS
    assert json.loads((tmp_path / "work" / "result.json").read_text())["step"]["adapted"].startswith(
        "effective batch lowered from 128 to 2 samples a step")
    assert events[0]["notice"] == result["step"]["adapted"] and events[0]["step"] == 0  # said before training
    card = (tmp_path / "work" / "model_card.md").read_text()
    assert "**batch adapted to the data:** effective batch lowered from 128 to 2" in card
    assert (m["first_loss_step"], m["final_loss_step"]) == (1, m["steps"])
    assert f"- loss: {m['first_loss']:.4f} at step 1 → {m['final_loss']:.4f} at step {m['steps']}" in card
    losses = [h["loss"] for h in json.loads((tmp_path / "work" / "log_history.json").read_text()) if "loss" in h]
    assert losses[0] == m["first_loss"] and losses[-1] == m["final_loss"]
    # The tiny random model on 16 look-alike samples learns them: about 7.0 to 5.6 in 56 steps (bf16 on CPU)
    assert m["final_loss"] < m["first_loss"] - 0.7
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.7  # the curve, not one lucky step


def test_a_one_step_phase_shows_no_trend(tiny_model, tmp_path):
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    result = trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work", settings(knowledge=phase(max_steps=1)))
    m = result["metrics"]
    assert (m["steps"], m["first_loss_step"], m["final_loss_step"]) == (1, 1, 1)
    assert f"- loss: {m['first_loss']:.4f} at step 1 (one step: no trend)" in (tmp_path / "work" / "model_card.md").read_text()


def test_the_cache_key_follows_what_decides_the_step(tiny_model, tmp_path):
    """The adapted batch comes from the data (samples, token lengths: the data and base model fingerprints)
    and the phase's settings; the key covers each, and stays put when none changes."""
    from labcycle.tasks.tune.stage import cache_key

    rows = [(f"What is item {i}?", f"Item {i} is thing number {i}.") for i in range(16)]
    data = str(write_chat(tmp_path / "data.jsonl", rows))
    s = TuneSettings()

    def key(settings: TuneSettings = s) -> str:
        return cache_key("knowledge", str(tiny_model), data, settings, None)

    first = key()
    assert key() == first
    others = [key(replace(s, knowledge=replace(KNOWLEDGE, **change)))
              for change in ({"epochs": 8}, {"batch_size": 4}, {"max_length": 64}, {"packing": False})]
    write_chat(Path(data), rows + [("One more?", "Yes.")])
    others.append(key())
    assert first not in others and len(set(others)) == len(others)


def test_a_diverging_phase_stops_at_the_first_non_finite_loss_and_saves_nothing(tiny_model, tmp_path):
    """A real divergence: a learning rate of 1e30 makes the weights huge at step 1 and the loss NaN at step 2.
    The Trainer logged such a loss as the average of the finite ones, and the phase ended 'successfully'."""
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    s = settings(knowledge=phase(max_steps=20, learning_rate=1e30, logging_steps=5, save_steps=10))
    with pytest.raises(LabcycleError, match=re.escape("the knowledge phase diverged: its loss became nan at step 2 of 20, "
                                                      "so no adapter is saved; lower tuning.knowledge.learning_rate "
                                                      "(now 1e+30)")):
        trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work", s)
    assert not (tmp_path / "work" / "adapter").exists() and trainer.read_result(tmp_path / "work") is None


def test_a_last_step_that_breaks_the_weights_is_caught(tiny_model, tmp_path):
    """An infinite learning rate (the config refuses one; settings built in code do not): the one step's loss
    is finite, the update leaves NaN and infinite weights. The Trainer still saves its checkpoint, a real
    diverged adapter (tests/tasks/test_release.py refuses to release it); the phase's own adapter is never saved."""
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    s = settings(knowledge=phase(max_steps=1, learning_rate=float("inf"), save_steps=1))
    with pytest.raises(LabcycleError, match=r"the knowledge phase diverged: its weight \S+lora\S+ is not finite after "
                                            r"step 1, so no adapter is saved"):
        trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work", s)
    assert not (tmp_path / "work" / "adapter").exists() and trainer.read_result(tmp_path / "work") is None
    assert (tmp_path / "work" / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors").is_file()


def test_a_learning_rate_beyond_float32_is_one_line(tiny_model, tmp_path):
    # 1e39 is a finite YAML number; bitsandbytes' 8-bit AdamW raised "value cannot be converted to type float
    # without overflow" from deep inside the optimizer step.
    data = write_chat(tmp_path / "data.jsonl", [(q, ANSWER) for q in QUESTIONS])
    with pytest.raises(LabcycleError, match="the knowledge phase's optimizer overflowed its 32-bit arithmetic .* lower "
                                            "tuning.knowledge.learning_rate"):
        trainer.train_phase("knowledge", tiny_model, data, tmp_path / "work", settings(knowledge=phase(max_steps=2, learning_rate=1e39)))
