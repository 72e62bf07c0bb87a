# Two commands on a fresh machine: `make dev` serves the API on embedded defaults, `make test` runs
# the whole suite (lint included). Both bootstrap the virtual environment when there is none.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint unit integration bench fmt clean migrate wheel

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

dev: $(STAMP)
	JOBQUEUE_REGISTRY=$${JOBQUEUE_REGISTRY:-handlers:registry} $(BIN)/python -m jobqueue.devserver

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

migrate: $(STAMP)
	$(BIN)/jobqueue migrate

# dist/jobqueue-*.whl: the package alone (no api/, handlers/), for `pip install` into an app of
# your own or a Lambda zip (docs/deploy.md, L1). build/ goes first: setuptools would pack a stale
# build/lib's deleted files.
wheel: $(STAMP)
	rm -rf build
	$(BIN)/python -m build --wheel --outdir dist .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info build dist
