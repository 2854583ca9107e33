# nextstep — two commands matter: `make run` and `make test`.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3
UV := $(PYTHON) -m uv
NEXTSTEP_HOME ?= $(CURDIR)/.nextstep
export NEXTSTEP_HOME
DEMO_WORLD ?= ladder
DEMO_USERS ?= 4000
HOST ?= 127.0.0.1
PORT ?= 8000
NS := .venv/bin/nextstep

.PHONY: install run test test-fast lint format bench clean clean-state

.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --locked --compile-bytecode
	@touch $@

install: .venv/.synced

## Serve on http://$(HOST):$(PORT): demo data and a model trained on it are made once, then reused.
run: install
	$(NS) demo --world $(DEMO_WORLD) --users $(DEMO_USERS) --host $(HOST) --port $(PORT)

## The whole suite (end-to-end and PostgreSQL tests included).
# Two workers share the cores, so OpenMP threads that spin while they wait only slow the other.
test: install
	OMP_WAIT_POLICY=passive .venv/bin/python -m pytest -n 2 --dist loadgroup -q

test-fast: install
	.venv/bin/python -m pytest -q -m "not slow and not e2e and not postgres"

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports --no-logo --no-cache  # the layer contracts in pyproject.toml
	.venv/bin/hadolint Dockerfile

format: install
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench: install 
	.venv/bin/python -m benchmarks.run

## Remove the virtual environment and what nextstep made under NEXTSTEP_HOME (demo data, the local
## MLflow and service stores, the model cache); other files in NEXTSTEP_HOME are left alone.
clean: clean-state
	rm -rf .venv

clean-state:
	@test -n "$(strip $(NEXTSTEP_HOME))" || { echo "NEXTSTEP_HOME is empty" >&2; exit 2; }
	rm -rf "$(NEXTSTEP_HOME)/demo" "$(NEXTSTEP_HOME)/model-cache" "$(NEXTSTEP_HOME)/mlartifacts" \
		"$(NEXTSTEP_HOME)"/mlflow.db* "$(NEXTSTEP_HOME)"/service.db*
	-@rmdir "$(NEXTSTEP_HOME)" 2>/dev/null || true
