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

.PHONY: install run train serve test clean

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

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) models .pytest_cache
