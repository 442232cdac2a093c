#!/usr/bin/env bash
# QLoRA tokens/s and peak GPU memory on a lent GPU machine (no internet): labcycle's tuning phase and a
# plain TRL baseline, QLoRA, on a random-init Llama of about 1B parameters at sequence length 2048, and
# labcycle with LoRA in bf16 for comparison. See scripts/README.md.
#
#   bash scripts/gpu_check.sh            # from the repository root, with shared/wheels/ carried
#
# Everything it writes goes under $OUT (default ./gpu-check-out): gpu_check.log (this script's output),
# env.txt, nvidia-smi.txt, one JSON per bench/train.py call (qlora.json, lora.json, ...) and logs/ (each
# training run's own log). Settings, all optional, as environment variables:
#
#   PYTHON=python3            the interpreter with CUDA torch, transformers, peft, accelerate, datasets
#   WHEELS=shared/wheels      wheels installed with --no-index --no-deps (bitsandbytes, trl; any others)
#   SCRATCH=/tmp              where the venv, --target folder, package shim, model and HF cache go
#   VENV=$SCRATCH/labcycle-gpu-venv   venv (--system-site-packages) to install into; VENV=none: a --target
#                             folder on PYTHONPATH instead (if the venv cannot be made, that is the fallback)
#   HIDDEN=2048 LAYERS=16 HEADS=32 INTERMEDIATE=5632 VOCAB=32000   the model (about 1.0B parameters)
#   SEQ_LEN=2048 BATCH=8 GRAD_ACCUM=2 STEPS=6 WARMUP=1 SAMPLES=512 REPEAT=1
#   RUNS="qlora:labcycle,baseline qlora:labcycle-packed lora:labcycle"   bench/train.py calls, in order;
#                             each is METHOD:PATHS, and a call starts only while time is left
#   BUDGET_S=540              seconds for the whole script (the device allows 600 per command)
#   SMALL=1                   smaller fallback model: hidden 1024, 8 layers, 16 heads, MLP 2816 (~0.17B)
#   DRY_RUN=1                 no GPU needed: tiny sizes, no nvidia-smi, no --device-check (to test the script)
set -euo pipefail

START=$(date +%s)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu-check-out}
mkdir -p "$OUT/logs"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-shared/wheels}
SCRATCH=${SCRATCH:-/tmp}
VENV=${VENV:-$SCRATCH/labcycle-gpu-venv}
BUDGET_S=${BUDGET_S:-540}
DRY_RUN=${DRY_RUN:-0}
if [[ ${SMALL:-0} == 1 ]]; then
    HIDDEN=${HIDDEN:-1024} LAYERS=${LAYERS:-8} HEADS=${HEADS:-16} INTERMEDIATE=${INTERMEDIATE:-2816}
fi
if [[ $DRY_RUN == 1 ]]; then
    HIDDEN=${HIDDEN:-256} LAYERS=${LAYERS:-2} HEADS=${HEADS:-4} INTERMEDIATE=${INTERMEDIATE:-512} VOCAB=${VOCAB:-1024}
    SEQ_LEN=${SEQ_LEN:-1024} BATCH=${BATCH:-2} GRAD_ACCUM=${GRAD_ACCUM:-1} STEPS=${STEPS:-3} SAMPLES=${SAMPLES:-64}
fi
HIDDEN=${HIDDEN:-2048} LAYERS=${LAYERS:-16} HEADS=${HEADS:-32} INTERMEDIATE=${INTERMEDIATE:-5632} VOCAB=${VOCAB:-32000}
SEQ_LEN=${SEQ_LEN:-2048} BATCH=${BATCH:-8} GRAD_ACCUM=${GRAD_ACCUM:-2} STEPS=${STEPS:-6} WARMUP=${WARMUP:-1}
SAMPLES=${SAMPLES:-512} REPEAT=${REPEAT:-1}
RUNS=${RUNS:-"qlora:labcycle,baseline qlora:labcycle-packed lora:labcycle"}

say() { printf '[gpu_check %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
die() { say "ERROR: $*"; exit 1; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

say "repository $REPO, output $OUT, budget ${BUDGET_S}s"
command -v "$PYTHON" >/dev/null || die "no interpreter '$PYTHON' (set PYTHON=/path/to/python with CUDA torch)"

# --- the machine ------------------------------------------------------------------------------------
if [[ $DRY_RUN != 1 ]]; then
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: is this a GPU machine?"
    nvidia-smi | tee "$OUT/nvidia-smi.txt"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv \
        | tee -a "$OUT/nvidia-smi.txt"
fi

# --- the environment: carried wheels, then labcycle itself ------------------------------------------------
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -gt 0 ]] || say "warning: no wheels in $WHEELS; using what $PYTHON already has"

SITE=""
if [[ $VENV != none ]]; then
    if [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv --system-site-packages "$VENV" 2>"$OUT/logs/venv.err"; then
        PY=$VENV/bin/python
        if ! "$PY" -m pip --version >/dev/null 2>&1; then
            say "the venv has no pip (no ensurepip here?); using a --target folder instead"
            PY=$PYTHON VENV=none
        elif ! "$PY" -c "import torch" >/dev/null 2>&1 && "$PYTHON" -c "import torch" >/dev/null 2>&1; then
            # $PYTHON is itself a venv: a venv made from it sees its base interpreter's packages, not its own.
            say "the venv does not see $PYTHON's torch; using a --target folder instead"
            PY=$PYTHON VENV=none
        fi
    else
        say "could not create a venv ($(tail -1 "$OUT/logs/venv.err")); using a --target folder instead"
        PY=$PYTHON VENV=none
    fi
else
    PY=$PYTHON
fi
if [[ $VENV == none ]]; then
    SITE=$SCRATCH/labcycle-gpu-site
    mkdir -p "$SITE"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
say "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"

if [[ ${#wheels[@]} -gt 0 ]]; then
    say "installing ${#wheels[@]} carried wheel(s): ${wheels[*]##*/}"
    if [[ -n $SITE ]]; then
        "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$SITE" --upgrade "${wheels[@]}" \
            || die "pip could not install the wheels in $WHEELS"
    else
        "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "${wheels[@]}" \
            || die "pip could not install the wheels in $WHEELS"
    fi
fi

# labcycle maps tasks/, flows/ and schemas/ into the labcycle package, so it must be installed (or shimmed).
if [[ -z $SITE ]] && "$PY" -m pip install --quiet --no-deps --no-build-isolation --no-index -e . >"$OUT/logs/install.log" 2>&1; then
    say "labcycle installed (editable, no dependencies)"
else
    [[ -z $SITE ]] && say "editable install failed (see logs/install.log); using a symlink shim of the package instead"
    SHIM=$SCRATCH/labcycle-gpu-shim
    rm -rf "$SHIM" && mkdir -p "$SHIM/labcycle"
    for f in "$REPO"/labcycle/*; do ln -s "$f" "$SHIM/labcycle/"; done
    ln -s "$REPO/tasks" "$SHIM/labcycle/tasks"
    ln -s "$REPO/flows" "$SHIM/labcycle/flows"
    ln -s "$REPO/schemas" "$SHIM/labcycle/schemas"
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HOME=${HF_HOME:-$SCRATCH/labcycle-gpu-hf}
# Importing bitsandbytes tries the optional `kernels` package (which would reach the hub): harmless when absent.

say "checking imports"
# From $SCRATCH: in the repository root, its labcycle/ folder (without tasks/) would shadow the installed package.
if ! (cd "$SCRATCH" && "$PY" - "$DRY_RUN") <<'EOF' | tee "$OUT/env.txt"; then
import importlib, sys
from importlib import metadata
dry = sys.argv[1] == "1"
problems = []
for mod, dist in [("torch", "torch"), ("transformers", "transformers"), ("peft", "peft"), ("accelerate", "accelerate"),
                  ("datasets", "datasets"), ("tokenizers", "tokenizers"), ("trl", "trl"), ("bitsandbytes", "bitsandbytes"),
                  ("matplotlib", "matplotlib"), ("labcycle.tasks.tune.trainer", "labcycle")]:
    try:
        module = importlib.import_module(mod)
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "(not installed as a distribution)"
        print(f"{dist:14s} {version}  {module.__file__}")
    except Exception as e:  # noqa: BLE001 - report every missing piece at once
        print(f"{dist:14s} MISSING: {type(e).__name__}: {e}")
        if mod != "matplotlib":  # only the loss plot, after training, needs it; the benchmark skips that plot
            problems.append(mod)
import torch
print(f"python         {sys.version.split()[0]}")
print(f"torch CUDA     {torch.version.cuda}, available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device         {p.name}, {p.total_memory / 2**30:.1f} GiB, bf16: {torch.cuda.is_bf16_supported()}")
    for impl in ("flash_attn", "kernels"):
        print(f"{impl:14s} {'available' if importlib.util.find_spec(impl) else 'not installed'}")
elif not dry:
    problems.append("CUDA (torch sees no GPU)")
if problems:
    sys.exit("missing: " + ", ".join(problems))
EOF
    die "the environment is incomplete (see above); carry the missing wheels in $WHEELS"
fi

# --- the measurements ------------------------------------------------------------------------------------
MODEL=${MODEL_DIR:-$SCRATCH/labcycle-gpu-model-h${HIDDEN}-l${LAYERS}-a${HEADS}-i${INTERMEDIATE}-v${VOCAB}}
SIZES=(--hidden "$HIDDEN" --layers "$LAYERS" --heads "$HEADS" --intermediate "$INTERMEDIATE" --vocab "$VOCAB"
       --seq-len "$SEQ_LEN" --batch-size "$BATCH" --grad-accum "$GRAD_ACCUM" --steps "$STEPS" --warmup "$WARMUP"
       --samples "$SAMPLES" --repeat "$REPEAT" --save-model "$MODEL" --keep-logs "$OUT/logs")
[[ $DRY_RUN == 1 ]] || SIZES+=(--device-check)

done_any=0
for run in $RUNS; do
    method=${run%%:*} paths=${run#*:}
    name=${method}-${paths//,/-}
    remaining=$(left)
    # A run needs about a minute (model load, quantizing, packing, the steps); don't start one that cannot finish.
    if (( remaining < 90 )); then
        say "skipping $name: only ${remaining}s of the budget left"
        continue
    fi
    say "bench/train.py --method $method --paths $paths (${remaining}s left)"
    if timeout --signal=TERM --kill-after=10 "$(( remaining - 5 ))" \
        "$PY" bench/train.py "${SIZES[@]}" --method "$method" --paths "$paths" --json "$OUT/$name.json"; then
        done_any=1
    else
        say "bench/train.py for $name failed or ran out of time (exit $?); continuing with the next"
    fi
done

say "done; files in $OUT:"
ls -la "$OUT"
[[ $done_any == 1 ]] || die "no measurement finished"
