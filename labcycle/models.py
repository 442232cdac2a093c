"""Tiny teacher/student models built from scratch, for smoke runs and tests (nothing is downloaded).

    labcycle models build-tiny OUT [--seed N] [--taxonomy ROOT]

A byte-level BPE tokenizer is trained with `tokenizers` on the taxonomy's own text, and a randomly
initialised Llama (head_dim 64, which vLLM's CPU attention needs) is saved beside it in safetensors.
Its chat template marks assistant turns with {% generation %} so TRL can train on assistant tokens only.
The weights are random: whatever such a model writes is noise. Real runs point labcycle at real models;
the code path is the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from labcycle.errors import LabcycleError

SPECIAL_TOKENS = ["<|pad|>", "<|begin|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

# Roles open with a marker line and every turn ends with <|end|> (the eos token, where vLLM stops).
# transformers renders templates with trim_blocks, so newlines after block tags are written as {{ '\n' }}.
CHAT_TEMPLATE = (
    "{{ '<|begin|>' }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}{{ '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|end|>' }}{{ '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{{ '\n' }}{% endif %}"
)

# A little fixed text so the tokenizer learns common English and JSON pieces even from a tiny taxonomy.
_BASE_CORPUS = """\
The quick brown fox jumps over the lazy dog. Question: what is the answer? Answer: yes, no, maybe.
{"question": "What is it?", "answer": "It is a test.", "score": 2, "verdict": "YES"}
Explain, summarise, list, compare and evaluate. 0 1 2 3 4 5 6 7 8 9 10. [ ] { } ( ) : ; , . ! ?
"""


def taxonomy_corpus(root: Path) -> list[str]:
    """Every qna.yaml and Markdown file under the taxonomy root, as text."""
    texts = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".md"):
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return texts


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is representable: no <unk>
        show_progress=False,
    )
    tok.train_from_iterator([_BASE_CORPUS, *texts], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny(out: Path, *, seed: int = 0, texts: Iterable[str] = (), hidden_size: int = 256, layers: int = 2,
               heads: int = 4, vocab_size: int = 1024, max_positions: int = 8192) -> Path:
    """Write a tokenizer and a random-init Llama to `out`; returns `out`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "labcycle-tiny.json").write_text(json.dumps({"seed": seed, "note": "random weights: output is noise"}) + "\n")
    return out


def is_tiny(model_dir: Path) -> bool:
    """True for a model this module built (its output is noise, and summaries say so)."""
    return (Path(model_dir) / "labcycle-tiny.json").exists()


ADAPTER_CONFIG = "adapter_config.json"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the Hugging Face Hub spells repository ids


def looks_like_hub_id(name: str) -> bool:
    return bool(HUB_ID.match(name))


def adapter_base(adapter: Path) -> str | None:
    """The model a PEFT adapter folder names as its base (adapter_config.json's base_model_name_or_path)."""
    try:
        named = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as exc:
        raise LabcycleError(f"{ADAPTER_CONFIG} cannot be read: {exc}", where=str(adapter)) from None
    return named if isinstance(named, str) and named.strip() else None


def model_folder_problem(path: Path) -> str | None:
    """What keeps a folder from loading as a whole model (None: it has a config.json), and what to pass."""
    path = Path(path)
    if (path / "config.json").is_file():
        return None
    if (path / ADAPTER_CONFIG).is_file():
        try:
            base = adapter_base(path)
        except LabcycleError:
            base = None
        return ("this is a PEFT adapter, not a whole model: pass the model it was trained on"
                + (f" ({base})" if base else "") + ", or the adapter merged into it (tuning.merge: true writes "
                "<phase>/merged/)")
    return ("not a Hugging Face model folder (config.json missing); pass a local model folder (e.g. one saved with "
            "save_pretrained, or a snapshot downloaded beforehand)")


def check_student(model: str) -> None:
    """Fail fast, before hours of generation, on a student that tuning cannot use: a local folder that is
    not there, has no config.json, or whose tokenizer has no chat template."""
    from labcycle.errors import LabcycleError

    path = Path(model).expanduser()
    if not path.is_dir():
        hint = (f" (a Hugging Face hub name? download it first: `hf download {model} --local-dir DIR`)"
                if not path.is_absolute() and model.count("/") == 1 and not model.startswith((".", "~")) else "")
        raise LabcycleError("the student model folder is not there; give --student-model (or student.model) "
                            f"a local Hugging Face model folder this machine can read{hint}", where=model)
    problem = model_folder_problem(path)
    if problem:
        raise LabcycleError(problem, where=model)
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if not config.get("chat_template"):
        raise LabcycleError("the student's tokenizer has no chat template, and tuning trains on chat data with it: "
                            "use an instruct model, or add one (chat_template.jinja, or `chat_template` in "
                            "tokenizer_config.json)", where=model)
