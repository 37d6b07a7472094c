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

## demo: load the shipped sample data into the embedded store, run metrics and forecast, and say
## what is in the store now: the counts explained, then the latest forecasts
DEMO_AS_OF := (SELECT MAX(date) FROM pool_daily_metrics WHERE is_observed)
DEMO_COUNTS := SELECT 'pools with daily metrics' AS what, COUNT(DISTINCT pool_id) AS n \
  FROM pool_daily_metrics \
  UNION ALL SELECT 'pool-days of metrics up to the latest data day (the metrics rows)', \
  COUNT(*) FROM pool_daily_metrics WHERE date <= $(DEMO_AS_OF) \
  UNION ALL SELECT 'rows for the day after the data: only a next-day forecast', COUNT(*) \
  FROM pool_daily_metrics WHERE date > $(DEMO_AS_OF) \
  UNION ALL SELECT 'pools with data in the last 7 days (the others stopped reporting)', \
  COUNT(DISTINCT pool_id) FROM pool_daily_metrics WHERE is_observed AND date > $(DEMO_AS_OF) - 7 \
  UNION ALL SELECT 'pools with 1/7/30-day forecasts, made on their latest day', \
  COUNT(DISTINCT pool_id) FROM forecasts
DEMO_LATEST := SELECT p.symbol, p.project, p.chain, f.made_on, f.horizon, f.target_date, \
  CAST(f.value AS DECIMAL(10,2)) AS apy, CAST(f.lower AS DECIMAL(10,2)) AS low_80, \
  CAST(f.upper AS DECIMAL(10,2)) AS high_80 \
  FROM forecasts AS f JOIN pools AS p ON p.pool_id = f.pool_id \
  WHERE f.metric = 'apy' AND f.made_on = (SELECT MAX(made_on) FROM forecasts) \
  ORDER BY p.symbol, f.target_date, f.horizon

demo: $(VENV)/.demo-installed
	@echo "== 1/4 Create the tables in $(STORE)"
	$(BIN)/poolcast db init --store $(STORE)
	@echo
	@echo "== 2/4 Load the sample in data/sample: DefiLlama pools and their APY/TVL history,"
	@echo "   ETH and BTC prices from CoinMarketCap, daily gas fees from Etherscan"
	POOLCAST_LOG_LEVEL=WARNING $(BIN)/poolcast ingest --store $(STORE) data/sample
	@echo
	@echo "== 3/4 Daily metrics for every pool (step 7), then its APY forecasts 1, 7 and 30 days"
	@echo "   ahead with 80% intervals (step 11). One line per stage: seconds, rows read and"
	@echo "   written, then the stage's numbers (as_of: the latest data day; days: the metrics"
	@echo "   window; forecasts: pools forecast; model: where the trained model was saved)"
	POOLCAST_LOG_LEVEL=WARNING $(BIN)/poolcast run --store $(STORE)
	@echo
	@echo "== 4/4 What is in the store now. Most sample pools stopped reporting in May/June 2025,"
	@echo "   so their forecasts were made on their own last day:"
	@$(BIN)/poolcast sql --store $(STORE) "$(DEMO_COUNTS)"
	@echo
	@echo "The latest forecasts (apy, and the 80% interval low_80 to high_80, in %):"
	@$(BIN)/poolcast sql --store $(STORE) "$(DEMO_LATEST)"
	@echo
	@echo "Next: $(BIN)/poolcast report --store $(STORE)   # poolcast-report.html: every pool's forecasts,"
	@echo "      data freshness, checks, backtest; $(BIN)/poolcast --help lists every command"

## test: the whole suite against a throwaway PostgreSQL server, Spark local[2] and the real jars;
## two workers (PYTEST_WORKERS), every test that starts Spark on one of them (tests/conftest.py);
## the jars are resolved once first, as two JVMs resolving into one Ivy cache can corrupt it
PYTEST_WORKERS ?= 2
test: $(VENV)/.test-installed
	scripts/test-prereqs.sh
	scripts/fetch-spark-jars.sh $(BIN)/python
	scripts/with-postgres.sh $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

## bench: every stage at 2k and 20k pools x 365 days on both stores (BENCH_SCENARIOS=100k for more;
## see bench/run.py); results in bench/results/latest.{json,md,png}; then the Spark engine on
## executors in separate JVMs (bench/spark_cluster.py; BENCH_CLUSTER=0 skips it). Only the CLI's
## full and daily runs: BENCH_ONLY=runs BENCH_SCENARIOS=20k,100k BENCH_CLUSTER=0 make bench
bench: $(VENV)/.test-installed
	scripts/fetch-spark-jars.sh $(BIN)/python
	scripts/with-postgres.sh $(BIN)/python bench/run.py
	if [ "$${BENCH_CLUSTER:-1}" != 0 ]; then scripts/with-postgres.sh $(BIN)/python bench/spark_cluster.py; fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) .cache poolcast.duckdb models
