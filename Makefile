# Two entry points for a fresh machine: `make run` and `make test`.
# Both install into .venv in the checkout, and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
MODEL_DIR ?= models/digits
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install system run train lint test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH_PIN)"
	$(BIN)/python -m pip install -e ".[train,test]"
	touch $(STAMP)

$(MODEL_DIR)/manifest.json: | $(STAMP)
	$(BIN)/vae train --data digits --out $(MODEL_DIR)

train: $(MODEL_DIR)/manifest.json

run: $(STAMP) train
	$(BIN)/vae serve $(MODEL_DIR) --host $(HOST) --port $(PORT)

# What the tests need from Debian (podman, runc and debootstrap with a local base image; docker-compose and
# shellcheck; chromium and its driver; nginx; promtool) and from PyPI in a venv of its own (MLServer, in
# .venv-mlserver), installed where missing: each script does nothing when all is there. Installing from Debian
# needs root and apt-get; without them the step says so, and the tests that need the missing tools fail in CI
# and skip loudly elsewhere.
system:
	bash scripts/container_setup.sh all || echo "make system: container_setup.sh all failed; the container tests will say so"
	bash scripts/container_setup.sh compose-lint || echo "make system: container_setup.sh compose-lint failed"
	bash scripts/browser_setup.sh || echo "make system: browser_setup.sh failed; the browser tests will say so"
	bash scripts/proxy_setup.sh || echo "make system: proxy_setup.sh failed; the proxy tests will say so"
	bash scripts/deploy_setup.sh || echo "make system: deploy_setup.sh failed; the manifest tests will say so"
	bash scripts/promtool_setup.sh || echo "make system: promtool_setup.sh failed; the metrics format tests will say so"
	bash scripts/java_setup.sh || echo "make system: java_setup.sh failed; the Spark tests will say so"
	PYTHON=$(PYTHON) bash scripts/mlserver_setup.sh || echo "make system: mlserver_setup.sh failed; the MLServer codec tests will say so"

# ruff (lint and format check), mypy (strict on the torch-free core) and the import contracts
# (lint-imports: which layer may import which); settings in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) system lint
	$(BIN)/python -m pytest

# The edit loop: no container images, no browser, no proxy (markers set in tests/conftest.py), no system step.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not container and not browser and not proxy"

clean:
	rm -rf $(VENV) .venv-mlserver models .pytest_cache
