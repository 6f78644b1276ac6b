# The two set-up commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= ./data
LISTEN ?= 127.0.0.1:9443

.PHONY: run test lint typecheck unit suite bench soak venv system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## Start the service on embedded defaults (SQLite, built-in key store, dev auto-unseal, HTTPS).
## Elsewhere: make run LISTEN=127.0.0.1:8443 DATA_DIR=/tmp/kb (the operator commands then take --data-dir /tmp/kb).
run: venv
	$(BIN)/keybroker serve --dev --data-dir $(DATA_DIR) --listen $(LISTEN)

system-deps:
	./scripts/install-system-deps.sh

## ruff, and the package layers (import-linter's contracts in pyproject.toml; docs/architecture.md).
lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

## The tests run on every core (pytest-xdist; tests/integration one after another on one of them),
## their temporary dirs in memory when /dev/shm has room (SQLite's fsyncs cost nothing there), with
## bytecode caches written (PYTHONDONTWRITEBYTECODE would make each worker compile every module).
TEST_WORKERS ?= auto
TEST_TMPDIR ?= $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && [ $$(df -Pk /dev/shm | awk 'NR==2 {print $$4}') -gt 4194304 ] && echo /dev/shm || echo $${TMPDIR:-/tmp})
PYTEST := env -u PYTHONDONTWRITEBYTECODE TMPDIR=$(TEST_TMPDIR) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

## The fast tests only: no real servers (no PostgreSQL, no tests/integration).
unit: venv
	$(PYTEST) -q -m "not integration and not postgres"

suite: venv
	$(PYTEST) -q --durations=15

## Everything: lint, type checks and the whole suite (installs what it needs first).
test: venv system-deps lint typecheck suite

## Benchmarks: DCAP verification vs dcap-qvl; attested key transfer end to end (results in .bench/);
## then 1 and 2 `serve --workers` on PostgreSQL, same run, vs Little's law (.bench/transfer-workers.json).
bench: venv
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/transfer.py --workers 1,2 --variants v1/aes/rsa3072 --levels 4 --transfers 100000 \
		--seconds 5 --no-peer --out .bench/transfer-workers.json

## 100,000 transfers against one server, its RSS at the start, in the middle and at the end (.bench/soak.json).
soak: venv
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
