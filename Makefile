# grounding-ops — every target does its own setup; `make demo` and `make test` need nothing first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
VENV_ML := .venv-ml
PY := $(VENV)/bin/python
PIP_QUIET ?= -q
PYTEST_ARGS ?=

.PHONY: setup setup-platform setup-ml services services-stop services-status images image-base image-trainer-cpu test test-fast test-unit test-heavy test-ml lint format typecheck demo bench clean

# Code the linter and formatter look at.
PY_SOURCES := grounding_ops dags plugins tests benchmarks scripts

setup: setup-platform setup-ml ## both environments (idempotent; a second run takes seconds)

setup-platform: $(VENV)/.installed
setup-ml: $(VENV_ML)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) wheel -c constraints.txt
	$(VENV)/bin/pip install $(PIP_QUIET) -r requirements.txt -c constraints.txt
	$(VENV)/bin/pip install $(PIP_QUIET) --no-deps --no-build-isolation -e .
	$(VENV)/bin/pip install $(PIP_QUIET) --no-build-isolation -e ".[test,test-platform,lint]" -c constraints.txt
	@# the editable install leaves package metadata in the checkout too: with the checkout on sys.path
	@# Airflow would find the airflow.plugins entry point twice (and refuse the second as an import error)
	rm -rf grounding_ops.egg-info
	@touch $@

$(VENV_ML)/.installed: docker/trainer/requirements.txt docker/trainer/constraints.txt pyproject.toml
	@test -x $(VENV_ML)/bin/python || $(PYTHON) -m venv $(VENV_ML)
	$(VENV_ML)/bin/pip install $(PIP_QUIET) wheel -c docker/trainer/constraints.txt
	$(VENV_ML)/bin/pip install $(PIP_QUIET) -r docker/trainer/requirements.txt -c docker/trainer/constraints.txt
	$(VENV_ML)/bin/pip install $(PIP_QUIET) --no-deps --no-build-isolation -e .
	$(VENV_ML)/bin/pip install $(PIP_QUIET) --no-build-isolation -e ".[test]" -c docker/trainer/constraints.txt
	rm -rf grounding_ops.egg-info
	@touch $@

services: setup-platform ## start S3 (moto), MLflow, Airflow and Docker on 127.0.0.1
	$(VENV)/bin/grounding-ops services start

services-stop:
	@test -x $(VENV)/bin/grounding-ops && $(VENV)/bin/grounding-ops services stop || true

services-status: setup-platform
	$(VENV)/bin/grounding-ops services status

images: image-base image-trainer-cpu

image-base: setup-platform
	$(VENV)/bin/grounding-ops images build base

image-trainer-cpu: setup-platform
	$(VENV)/bin/grounding-ops images build trainer-cpu

test: setup ## the whole suite: platform tests, then ML-stack tests (slow and heavy ones included)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	$(VENV_ML)/bin/python -m pytest -c tests/ml/pytest.ini tests/ml $(PYTEST_ARGS)

test-heavy: setup ## only the whole-deployment end-to-end runs (lineage walk, Celery profile, remote TLS daemon; ~3 min each)
	$(VENV)/bin/python -m pytest -m heavy $(PYTEST_ARGS)

test-fast: setup ## skip the slow end-to-end tests
	$(VENV)/bin/python -m pytest -m "not slow and not heavy" $(PYTEST_ARGS)
	$(VENV_ML)/bin/python -m pytest -c tests/ml/pytest.ini tests/ml -m "not slow and not heavy" $(PYTEST_ARGS)

test-unit: setup ## the tests that start no service, no Docker and no Airflow (a few minutes on 2 cores)
	$(VENV)/bin/python -m pytest -m "not slow and not services and not docker" $(PYTEST_ARGS)
	$(VENV_ML)/bin/python -m pytest -c tests/ml/pytest.ini tests/ml -m "not slow and not services and not docker" $(PYTEST_ARGS)

lint: setup-platform ## ruff's checks and the formatter's verdict (no changes)
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)

format: setup-platform ## apply the formatter and ruff's safe fixes
	$(VENV)/bin/ruff check --fix $(PY_SOURCES)
	$(VENV)/bin/ruff format $(PY_SOURCES)

typecheck: setup-platform ## mypy on the modules opted in (pyproject.toml [tool.mypy] files)
	$(VENV)/bin/mypy

demo: setup ## the whole loop on embedded defaults
	$(VENV)/bin/grounding-ops demo

# Benchmarks that need torch run in the ML environment; the rest in the platform one.
BENCH_ML := benchmarks/evaluate.py benchmarks/train_cpu.py benchmarks/grpo_gain.py
BENCH_PLATFORM := $(filter-out $(BENCH_ML) benchmarks/_%.py,$(wildcard benchmarks/*.py))

bench: setup ## print every benchmark's figures next to its baseline
	set -e; for b in $(BENCH_PLATFORM); do echo "== $$b"; $(PY) $$b; done
	set -e; for b in $(BENCH_ML); do echo "== $$b"; $(VENV_ML)/bin/python $$b; done

clean: services-stop
	rm -rf $(VENV) $(VENV_ML) .services .pytest_cache
