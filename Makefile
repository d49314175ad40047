# Maillage — every target creates .venv (Python 3.11) when it is missing or out of date.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
# make demo KEYCLOAK=1: the demo with a real Keycloak (maillage up --keycloak).
KEYCLOAK ?=

.PHONY: help install demo test test-unit lint format contracts contracts-check bench lock clean

help:
	@echo "make demo       run the embedded federation (nats-server, registry, gateway, 3 nodes, 4 territories)"
	@echo "                KEYCLOAK=1 adds a real Keycloak whose tokens every service accepts"
	@echo "make test       install what the tests need (venv, PostgreSQL) and run every test against real services"
	@echo "make lint       ruff and mypy"
	@echo "make contracts  regenerate contracts/asyncapi.yaml, JSON Schemas and OpenAPI documents"
	@echo "make bench      run the benchmarks and rewrite BENCHMARKS.md"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24,<27"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/maillage up $(if $(filter 1 yes true,$(KEYCLOAK)),--keycloak) $(ARGS)

test: $(STAMP)
	bash scripts/ensure-postgres.sh
	$(BIN)/python -m pytest $(ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy contracts libs services gateway bench

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

contracts: $(STAMP)
	$(BIN)/maillage contracts

contracts-check: $(STAMP)
	$(BIN)/maillage contracts --check

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# Re-resolve the pinned versions within the bounds of pyproject.toml (then commit constraints.txt).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -e ".[dev]"
	.venv-lock/bin/pip freeze --exclude-editable | grep -v '^maillage' > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
