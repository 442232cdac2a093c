"""`labcycle chat`: a quick look at a model, a tuned adapter or a release, like `ilab model chat`.

The model answers through its own chat template with transformers' `generate` (on the GPU when there is
one, else the CPU); a PEFT adapter (a tuning phase's `adapter/`, or a released version, whose adapter
files sit at its root) is put on the base model first. A release given as the model is taken for its
adapter, on the base model its adapter_config.json names (a local folder, or a Hub id found in the
Hugging Face cache).

Mistakes (a missing folder, an adapter that does not fit the model) are LabcycleErrors: one line each.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from labcycle.errors import LabcycleError
from labcycle.models import ADAPTER_CONFIG, adapter_base, looks_like_hub_id

# Without a chat template: plain turns, so a base (non-instruct) model can still be looked at.
_PLAIN = "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}Assistant:"


@dataclass(frozen=True)
class Target:
    base: str                 # a local model folder, or a Hub id for the Hugging Face cache
    adapter: Path | None      # the folder holding adapter_config.json


def adapter_folder(path: Path) -> Path | None:
    """The folder holding the adapter: `path` itself when adapter_config.json is at its root (an adapter, or
    a released version), else its `adapter/` subfolder (a tuning phase's output, an older release)."""
    for folder in (path, path / "adapter"):
        if (folder / ADAPTER_CONFIG).is_file():
            return folder
    return None


def resolve(model: str, adapter: Path | None) -> Target:
    """Which base model and which adapter folder MODEL and --adapter name, or one line saying what is wrong."""
    path = Path(model).expanduser()
    adapter_dir = None
    if adapter is not None:
        if not adapter.is_dir():
            raise LabcycleError("--adapter: no such folder", where=str(adapter))
        adapter_dir = adapter_folder(adapter)
        if adapter_dir is None:
            raise LabcycleError(f"--adapter: no {ADAPTER_CONFIG} in this folder or its adapter/ subfolder; pass a PEFT "
                                "adapter (a tuning phase's adapter/) or a released version", where=str(adapter))
    if path.is_dir():
        if (path / "config.json").is_file():
            return Target(str(path), adapter_dir)
        found = adapter_folder(path)
        if found is None:
            raise LabcycleError("not a model (no config.json), an adapter or a release (no adapter_config.json)",
                                where=str(path))
        if adapter_dir is not None:
            raise LabcycleError("MODEL is an adapter itself: pass the base model as MODEL and this folder with --adapter",
                                where=str(path))
        base = adapter_base(found)
        if base is None:
            raise LabcycleError(f"this adapter's {ADAPTER_CONFIG} names no base model: pass the base model as MODEL "
                                "and this folder with --adapter", where=str(path))
        if not Path(base).expanduser().is_dir() and not looks_like_hub_id(base):
            raise LabcycleError(f"this adapter was trained on '{base}', which is neither a folder here nor a Hugging Face "
                                "Hub id: pass that model's folder as MODEL and this folder with --adapter", where=str(path))
        return Target(base, found)
    if looks_like_hub_id(model) and not path.exists():
        return Target(model, adapter_dir)  # from the Hugging Face cache (or the Hub, with HF_HUB_OFFLINE=0)
    raise LabcycleError("no such model folder (MODEL is a local Hugging Face model folder, a release, or a Hub id "
                        "in your Hugging Face cache)", where=model)


class Chat:
    """A loaded model and one conversation's history."""

    def __init__(self, target: Target, *, system: str | None = None, max_new_tokens: int = 512,
                 temperature: float = 0.0, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.system = system
        self.history: list[dict[str, str]] = []
        base_is_folder = Path(target.base).expanduser().is_dir()
        try:
            tokenizer_from = (str(target.adapter) if target.adapter is not None
                              and (target.adapter / "tokenizer_config.json").is_file() else target.base)
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
            dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
            model = AutoModelForCausalLM.from_pretrained(target.base, dtype=dtype)
        except (OSError, ValueError) as exc:
            if base_is_folder:
                raise LabcycleError(f"the model cannot be loaded: {_first_line(exc)}", where=target.base) from None
            raise LabcycleError("not a folder, and not in your Hugging Face cache (with HF_HUB_OFFLINE=1, the default, "
                                "nothing is downloaded: `hf download` it first, or set HF_HUB_OFFLINE=0)",
                                where=target.base) from None
        if target.adapter is not None:
            model = _with_adapter(model, target)
        self.model = model.to(self.device).eval()
        self.template = None if getattr(self.tokenizer, "chat_template", None) else _PLAIN
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None

    def ask(self, prompt: str) -> str:
        import torch

        self.history.append({"role": "user", "content": prompt})
        ids = self._encode()
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0}
        if self.temperature > 0:
            kwargs["temperature"] = self.temperature
        else:  # greedy: no sampling settings from the model's generation_config, so no warning about them
            kwargs.update(temperature=None, top_p=None, top_k=None)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            output = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=pad, **kwargs)
        answer = self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def clear(self) -> None:
        self.history = []

    def _encode(self):  # type: ignore[no-untyped-def]
        """The conversation through the chat template; the oldest turns are dropped while it and the answer
        would not fit the model's context."""
        while True:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
            ids = self.tokenizer.apply_chat_template(messages, chat_template=self.template, add_generation_prompt=True,
                                                     return_tensors="pt", return_dict=True)["input_ids"]
            if self.context is None or ids.shape[1] + self.max_new_tokens <= self.context or len(self.history) <= 1:
                return ids.to(self.device)
            self.history = self.history[2:]


def _with_adapter(model, target: Target):  # type: ignore[no-untyped-def]
    import logging

    # bitsandbytes (imported by peft) warns on every CPU without its optional kernels package; chat uses no 4-bit.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from peft import PeftModel

    trained_on = adapter_base(target.adapter) if target.adapter is not None else None
    try:
        return PeftModel.from_pretrained(model, str(target.adapter))
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise LabcycleError(f"the adapter does not fit the model {target.base}"
                            + (f" (it was trained on {trained_on})" if trained_on else "") + f": {_first_line(exc)}",
                            where=str(target.adapter)) from None


def _first_line(exc: BaseException) -> str:
    """The line of the error that says what is wrong (for a state dict: its first size mismatch)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith(("size mismatch", "Target module", "Missing key"))),
                 lines[0] if lines else type(exc).__name__)
    return first if len(first) <= 300 else first[:297] + "..."


def prompts(stream: TextIO) -> Iterator[str]:
    """Each non-empty line of a piped stdin is one user turn."""
    for line in stream:
        line = line.strip()
        if line:
            yield line


def interactive(chat: Chat, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
    """Read a turn, print the answer, until end of input or /exit; /clear starts the conversation over."""
    err.write("chat: type a message; /clear forgets the conversation, /exit (or Ctrl-D) ends it\n")
    while True:
        try:
            line = input(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            err.write("\n")
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/clear":
            chat.clear()
            err.write("(conversation cleared)\n")
            continue
        out.write(chat.ask(line) + "\n\n")
        out.flush()


__all__ = ["ADAPTER_CONFIG", "Chat", "Target", "adapter_folder", "interactive", "prompts", "resolve"]
