# nextstep — two commands matter: `make run` and `make test`.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
NEXTSTEP_HOME ?= $(CURDIR)/.nextstep
export NEXTSTEP_HOME
DEMO_WORLD ?= ladder
DEMO_USERS ?= 4000
HOST ?= 127.0.0.1
PORT ?= 8000
NS := .venv/bin/nextstep

.PHONY: install run demo-data demo-model test test-fast lint format bench clean

$(UV):
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --user --quiet uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked
	@touch $@

install: .venv/.synced

$(NEXTSTEP_HOME)/demo/events.csv: | install
	$(NS) simulate --world $(DEMO_WORLD) --users $(DEMO_USERS) --seed 7 --out $(NEXTSTEP_HOME)/demo

demo-data: $(NEXTSTEP_HOME)/demo/events.csv

demo-model: demo-data
	@$(NS) models --has-champion >/dev/null 2>&1 || \
	  $(NS) train --events $(NEXTSTEP_HOME)/demo/events.csv --catalog $(NEXTSTEP_HOME)/demo/catalog.yaml --promote

## Serve on http://$(HOST):$(PORT) with demo data and a model trained on it (reused when present).
run: demo-model
	$(NS) serve --catalog $(NEXTSTEP_HOME)/demo/catalog.yaml --host $(HOST) --port $(PORT)

## The whole suite (end-to-end and PostgreSQL tests included).
test: install
	.venv/bin/python -m pytest -n 2 --dist loadgroup -q

test-fast: install
	.venv/bin/python -m pytest -q -m "not slow and not e2e and not postgres"

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: install
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench: install
	.venv/bin/python -m benchmarks.run

clean:
	rm -rf .venv .nextstep
