# The two commands a newcomer needs: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= poolcast.duckdb

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[spark]'  # the Spark engine too: `poolcast parity` and `--engine spark` work after make demo
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,test,spark,gcp,bench]'
	touch $@ $(VENV)/.demo-installed

## demo: load the shipped sample data into the embedded store, run metrics and forecast
demo: $(VENV)/.demo-installed
	$(BIN)/poolcast db init --store $(STORE)
	$(BIN)/poolcast ingest --store $(STORE) data/sample
	$(BIN)/poolcast run --store $(STORE)
	$(BIN)/poolcast sql --store $(STORE) "SELECT count(DISTINCT pool_id) AS pools, count(DISTINCT date) AS days, count(*) AS rows, count(rolling_apy_7d) AS with_7d, count(forecasted_apy) AS forecasts FROM pool_daily_metrics"

## test: the whole suite against a throwaway PostgreSQL server, Spark local[2] and the real jars
test: $(VENV)/.test-installed
	scripts/test-prereqs.sh
	scripts/with-postgres.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

## bench: every stage at 2k and 20k pools x 365 days on both stores (BENCH_SCENARIOS=100k for more;
## see bench/run.py); results in bench/results/latest.{json,md,png}; then the Spark engine on
## executors in separate JVMs (bench/spark_cluster.py; BENCH_CLUSTER=0 skips it)
bench: $(VENV)/.test-installed
	scripts/with-postgres.sh $(BIN)/python bench/run.py
	if [ "$${BENCH_CLUSTER:-1}" != 0 ]; then scripts/with-postgres.sh $(BIN)/python bench/spark_cluster.py; fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) .cache poolcast.duckdb models
