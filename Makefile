# labcycle: two commands on a fresh machine.
#   make demo   set up (if needed), then run the lab-cycle flow on the shipped example taxonomy
#               (--profile demo: a tiny random model, built on the fly, as teacher and student; the
#               whole cycle: generate, mix, tune both phases, evaluate, gate, release)
#   make test   set up (if needed), then run the whole test suite
# GPU machines: make setup GPU=1 (CUDA torch, vllm and bitsandbytes from the [gpu] extra).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
GPU    ?= 0
# The CPU build of torch comes first so nothing later pulls a multi-GB CUDA build on a CPU machine.
# Elsewhere point pip at PyTorch's CPU wheels (PIP_EXTRA_INDEX_URL) before `make setup`.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.setup-gpu$(GPU)
DEMO   := .labcycle/demo

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifeq ($(GPU),1)
	$(BIN)/python -m pip install -e '.[test,lmeval,gpu]'
else
	$(BIN)/python -m pip install '$(TORCH)'
	$(BIN)/python -m pip install -e '.[test,lmeval,cpu]'
	# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break importing transformers and vllm
	# beside the CPU torch; text models need none of them.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec
endif
	rm -f $(VENV)/.setup-gpu*
	touch $@

demo: setup
	$(BIN)/python -m labcycle.demo taxonomy $(DEMO)
	$(BIN)/labcycle run --taxonomy $(DEMO)/taxonomy --base empty --output runs/demo --profile demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .labcycle runs .pytest_cache
