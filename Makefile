# `make test` works on a fresh machine: it makes .venv, installs the project with its extras, runs the suite.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
# pip on our machines warns about every missing local index folder; keep the log readable
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	@# the browser test drives Debian's Chromium (Playwright's own browser download is not used)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null)
	$(BIN)/pip install --quiet --upgrade pip $(QUIET_PIP)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1 $(QUIET_PIP)
	$(BIN)/pip install --quiet -e '.[serve,dev]' $(QUIET_PIP)
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check model service ops tests

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/glccl demo

clean:
	rm -rf $(VENV) .pytest_cache
