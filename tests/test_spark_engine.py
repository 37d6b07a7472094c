"""The Spark engine: Spark local[2] with the real SynapseML and PostgreSQL JDBC jars.

One SparkSession for the whole run (``spark`` fixture); every stage function finds and reuses it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from spark_support import spark_fixture  # noqa: F401 - the `spark` session fixture

from poolcast.engines import _spark_session as session_mod
from poolcast.evaluation.parity import compare_tables
from poolcast.settings import Settings
from poolcast.spec import metric_names
from poolcast.store import Store
from poolcast.store.spark_io import (
    JdbcTarget,
    SparkIOError,
    _render_params,
    pool_hash_predicates,
)

pytestmark = pytest.mark.spark

METRIC_COLUMNS = [*metric_names(), "is_observed"]
KEY = ("pool_id", "date")


# -- no JVM needed -------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
def test_a_fit_that_ran_all_its_rounds_gets_lightgbms_best_iteration(weighted: bool) -> None:
    """SynapseML names a best iteration only when early stopping stopped the fit; the engine then
    picks it as LightGBM's callback does (else the engines' 7-day models differ in rounds)."""
    import lightgbm as lgb

    from poolcast.engines._synapse import best_l1_iteration, prefix_l1

    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 4))
    y = x[:, 0] + rng.standard_t(2, 600)
    w = rng.uniform(0.05, 0.5, 600) if weighted else None
    train = lgb.Dataset(x[:400], y[:400], weight=None if w is None else w[:400])
    valid = lgb.Dataset(x[400:], y[400:], weight=None if w is None else w[400:], reference=train)
    params = {"objective": "regression_l1", "learning_rate": 0.3, "num_leaves": 15,
              "min_data_in_leaf": 5, "verbosity": -1}
    booster = lgb.train(params, train, num_boost_round=40, valid_sets=[valid],
                        callbacks=[lgb.early_stopping(40, verbose=False)])
    assert 1 < booster.best_iteration < 40  # the curve turns inside the run: never stopped
    # The validation rows in two parts (two partitions): their sums add up.
    text, wv = booster.model_to_string(), None if w is None else w[400:]
    parts = [
        prefix_l1(text, x[a:b], y[a:b], None if wv is None else wv[a - 400 : b - 400])
        for a, b in ((400, 470), (470, 600))
    ]
    assert best_l1_iteration(parts[0] + parts[1]) == booster.best_iteration


def test_environment_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("DATAPROC_") or key == "SPARK_ENVIRONMENT":
            monkeypatch.delenv(key)
    assert session_mod.detect_environment(Settings()) == "local"
    monkeypatch.setenv("DATAPROC_IMAGE_VERSION", "1.2")
    assert session_mod.detect_environment(Settings()) == "dataproc"
    monkeypatch.setenv("SPARK_ENVIRONMENT", "local")
    assert session_mod.detect_environment(Settings()) == "local"
    monkeypatch.setenv("SPARK_ENVIRONMENT", "cloud")
    with pytest.raises(session_mod.SparkSetupError, match="SPARK_ENVIRONMENT"):
        session_mod.detect_environment(Settings())


def test_session_conf_local_and_dataproc() -> None:
    s = Settings()
    local = session_mod.session_conf(s, environment="local")
    assert local["spark.master"] == "local[2]"
    assert "synapseml-lightgbm_2.12:1.1.3" in local["spark.jars.packages"]
    assert "org.postgresql:postgresql" in local["spark.jars.packages"]
    assert local["spark.sql.session.timeZone"] == "UTC"
    assert local["spark.dynamicAllocation.enabled"] == "false"
    assert local["spark.jars.ivy"] == str(session_mod.ivy_dir())
    # The driver JVM runs every task under local[N]; with executors it holds no table.
    assert local["spark.driver.memory"] == "4g"
    s.spark.master = "local-cluster[2,1,1536]"
    assert session_mod.session_conf(s, environment="local")["spark.driver.memory"] == "1g"
    s.spark.driver_memory = "3g"
    assert session_mod.session_conf(s, environment="local")["spark.driver.memory"] == "3g"
    s.spark.jars = ["gs://code/jars/synapseml-lightgbm_2.12-1.1.3.jar"]
    remote = session_mod.session_conf(s, environment="dataproc")
    assert "spark.master" not in remote and "spark.jars.packages" not in remote
    assert remote["spark.jars"] == s.spark.jars[0]
    training = session_mod.batch_properties(s, training=True)
    assert training["spark.dynamicAllocation.enabled"] == "false"
    assert training["spark.executor.instances"] == str(s.spark.executor_instances)
    assert "spark.dynamicAllocation.enabled" not in session_mod.batch_properties(s, training=False)


def test_no_session_at_import() -> None:
    import subprocess
    import sys

    code = (
        "import poolcast.engines.spark, poolcast.evaluation.parity, poolcast.stages\n"
        "from pyspark import SparkContext\n"
        "assert SparkContext._active_spark_context is None\n"
        "assert SparkContext._gateway is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


_LAUNCHER = r"""
import sys, time
print(":: resolving dependencies :: org.apache.spark#spark-submit-parent;1.0", flush=True)
print("\tfound com.microsoft.azure#synapseml-lightgbm_2.12;1.1.3 in central", flush=True)
err = sys.stderr
print("26/12/03 14:43:55 WARN Utils: Your hostname resolves to a loopback address", file=err)
print("26/12/03 14:43:56 ERROR SparkContext: launch error", file=err, flush=True)
sys.stdin.readline()  # started: what follows is printed while the JVM works
print("[LightGBM] [Info] Saving data reference to binary buffer", flush=True)
print("[LightGBM] [Warning] no meaningful features", flush=True)
print("26/12/03 14:45:00 ERROR Executor: task failed", file=err, flush=True)
"""


def _launch(capfd: pytest.CaptureFixture[str], *, fail: bool) -> str:
    """A stand-in for the JVM, started inside ``_jvm_output`` (it inherits stdout and stderr
    there), that prints Ivy's and Spark's start-up lines, then, once "started", its work's."""
    import subprocess
    import sys

    capfd.readouterr()
    child = None
    try:
        with session_mod._jvm_output(verbose=False):
            child = subprocess.Popen([sys.executable, "-c", _LAUNCHER], stdin=subprocess.PIPE)
            import time

            time.sleep(1.0)  # its start-up lines are printed
            if fail:
                child.stdin.close()  # type: ignore[union-attr]
                child.wait(timeout=30)
                raise RuntimeError("the gateway exited")
    except RuntimeError:
        assert fail
    assert child is not None
    if not fail:
        child.communicate(b"started\n", timeout=30)
    import time

    time.sleep(0.5)  # the relay copies what the child printed last
    return capfd.readouterr().err


def test_jvm_chatter_is_held_back_and_shown_when_the_start_fails(capfd) -> None:  # type: ignore[no-untyped-def]
    quiet = _launch(capfd, fail=False)
    # Ivy and Spark's start-up notes are dropped, the JVM's errors kept; afterwards every line
    # passes but LightGBM's [Info] notes.
    assert "resolving dependencies" not in quiet and "found com.microsoft" not in quiet
    assert "WARN Utils" not in quiet
    assert "ERROR SparkContext: launch error" in quiet
    assert "[LightGBM] [Info]" not in quiet
    assert "[LightGBM] [Warning] no meaningful features" in quiet
    assert "ERROR Executor: task failed" in quiet
    # A start that fails shows everything it printed: why it failed is in there.
    failed = _launch(capfd, fail=True)
    assert "resolving dependencies" in failed and "WARN Utils" in failed


def test_jdbc_target_keeps_password_out_of_url() -> None:
    t = JdbcTarget.from_url(
        "postgresql://alice:s%40cret@db.example:6543/pools?sslmode=require&"
        "options=-csearch_path%3Dt_1"
    )
    assert t.url.startswith("jdbc:postgresql://db.example:6543/pools?")
    assert "s@cret" not in t.url and "alice" not in t.url
    assert "sslmode=require" in t.url and "reWriteBatchedInserts=true" in t.url
    assert "options=-csearch_path%3Dt_1" in t.url
    assert t.properties["user"] == "alice" and t.properties["password"] == "s@cret"
    assert "s@cret" not in repr(t)
    with pytest.raises(SparkIOError):
        JdbcTarget.from_url("mysql://x/y")


def test_jdbc_parameters_are_numbers_and_dates_only() -> None:
    sql = "SELECT * FROM t WHERE a >= $1 AND b < $2 AND c = $10"
    params = [dt.datetime(2025, 1, 2, 3, 4, 5), dt.date(2025, 1, 3), *range(3, 10), 7]
    out = _render_params(sql, params)
    assert "TIMESTAMP '2025-01-02 03:04:05'" in out and "DATE '2025-01-03'" in out
    assert out.endswith("c = 7")
    with pytest.raises(SparkIOError, match="only numbers"):
        _render_params("SELECT $1", ["x'; DROP TABLE pools; --"])


def test_pool_hash_predicates_cover_every_hash() -> None:
    preds = pool_hash_predicates(4)
    assert len(preds) == 4 and all("hashtext(pool_id)" in p for p in preds)
    with pytest.raises(SparkIOError):
        pool_hash_predicates(0)


def test_listen_ports_differ_and_are_free() -> None:
    from poolcast.engines._synapse import _port_free, choose_listen_port

    ports = {choose_listen_port() for _ in range(20)}
    assert len(ports) > 15
    assert all(20_000 <= p < 60_000 and _port_free(p) for p in ports)


def test_synapseml_params_come_from_the_local_model() -> None:
    from poolcast.engines._synapse import synapseml_params
    from poolcast.model import Forecaster

    lgb_params = Forecaster("production", seed=7).lgb_params()
    p = synapseml_params(lgb_params, rounds=123, threads=1, port=23456)
    assert p["numIterations"] == 123 and p["seed"] == 7 and p["deterministic"] is True
    assert p["numLeaves"] == lgb_params["num_leaves"]
    assert p["objective"] == lgb_params["objective"]
    assert "force_row_wise=true" in p["passThroughArgs"]
    assert "num_iterations" not in p["passThroughArgs"]


# -- Spark ---------------------------------------------------------------------------------------
def _spark_exchange(spark, store: Store | None = None):  # type: ignore[no-untyped-def]
    from poolcast.store.embedded import DuckDBStore
    from poolcast.store.spark_io import SparkExchange

    return SparkExchange(spark, store or DuckDBStore(":memory:"))


def _metrics_both(store: Store, settings: Settings) -> tuple[pa.Table, pa.Table]:
    from poolcast.evaluation.parity import _metric_tables

    local, remote, _ = _metric_tables(store, settings)
    return local, remote


def _assert_same(report) -> None:  # type: ignore[no-untyped-def]
    assert report.rows_a == report.rows_b
    assert report.keys_only_in_a == report.keys_only_in_b == report.duplicate_keys == 0
    for c in report.columns:
        assert c.null_mismatches == 0, c
        assert c.max_rel_diff < 1e-9, c
    assert report.ok


def test_exchange_through_the_driver_matches_the_parquet_files(spark) -> None:  # type: ignore[no-untyped-def]
    """On Dataproc the executors do not share the driver's disk: the exchange goes through the
    driver in Arrow batches, and must hand over exactly what the Parquet files do."""
    from poolcast.store.spark_io import executors_share_driver_disk

    assert executors_share_driver_disk(spark)  # local[2]: the files path by default
    table = pa.table(
        {
            "pool_id": ["a", "b", None, "d"],
            "date": pa.array([dt.date(2025, 1, 1), None, dt.date(2025, 1, 3), dt.date(2025, 1, 4)]),
            "apy": [1.5, float("nan"), None, -2.0],
            "rows": pa.array([1, None, 3, 2**40], pa.int64()),
            "is_observed": [True, None, False, True],
        }
    )
    with _spark_exchange(spark) as files:
        assert files.via_files
        by_files = files.spark_to_arrow(files.arrow_to_spark(table, "t"), "t")
    from poolcast.store.embedded import DuckDBStore
    from poolcast.store.spark_io import SparkExchange

    with SparkExchange(spark, DuckDBStore(":memory:"), via_files=False) as driver:
        frame = driver.arrow_to_spark(table, "t")
        by_driver = driver.spark_to_arrow(frame, "t")
        empty = driver.spark_to_arrow(frame.where("false"), "t")
    def rows(t: pa.Table) -> list[list[object]]:  # NaN stays NaN, NULL stays None
        return [
            ["NaN" if isinstance(v, float) and v != v else v for v in r.values()]
            for r in t.sort_by("rows").to_pylist()
        ]

    assert by_driver.schema == by_files.schema
    assert rows(by_driver) == rows(by_files)
    assert [r[2] for r in rows(by_driver)] == [1.5, None, -2.0, "NaN"]
    assert by_driver.sort_by("rows").column("rows").to_pylist() == [1, 3, 2**40, None]
    assert empty.num_rows == 0 and empty.schema == by_files.schema


def test_session_is_local_utc_with_jars(spark) -> None:  # type: ignore[no-untyped-def]
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.master") == "local[2]"
    assert conf.get("spark.sql.session.timeZone") == "UTC"
    jvm = spark.sparkContext._jvm
    assert jvm.java.lang.System.getProperty("user.timezone") == "UTC"
    # Both jars were resolved from Maven Central and are loaded in the driver.
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    loader.loadClass("org.postgresql.Driver")
    from synapse.ml.lightgbm import LightGBMRegressor

    assert LightGBMRegressor(seed=1)._java_obj is not None
    assert spark.version.startswith("3.5.")


def test_metrics_match_local_on_sample(spark, demo_store) -> None:  # type: ignore[no-untyped-def]
    store, settings = demo_store
    local, remote = _metrics_both(store, settings)
    assert local.num_rows > 10_000
    _assert_same(compare_tables("pool_daily_metrics", local, remote, KEY, METRIC_COLUMNS))


# Generated panels: pools with gaps, late starts, several snapshots a day, NULL values, a market
# calendar with holes, an as-of past the data (the bounded forward fill shows).
@st.composite
def panels(draw: st.DrawFn) -> tuple[pa.Table, pa.Table, dt.date]:
    start = dt.date(2025, 1, 1)
    n_pools = draw(st.integers(1, 4))
    rows: dict[str, list] = {"pool_id": [], "timestamp": [], "apy": [], "tvl_usd": []}
    last_day = start
    for p in range(n_pools):
        offset = draw(st.integers(0, 20))
        length = draw(st.integers(1, 70))
        present = draw(st.lists(st.booleans(), min_size=length, max_size=length))
        for d in range(length):
            if not present[d] and d:
                continue
            day = start + dt.timedelta(days=offset + d)
            last_day = max(last_day, day)
            for hour in sorted(draw(st.sets(st.integers(0, 23), min_size=1, max_size=2))):
                apy = draw(st.one_of(st.none(), st.floats(0, 50, allow_nan=False)))
                tvl = draw(st.one_of(st.none(), st.floats(1e3, 1e9, allow_nan=False)))
                rows["pool_id"].append(f"pool-{p}")
                rows["timestamp"].append(dt.datetime.combine(day, dt.time(hour, 7)))
                rows["apy"].append(apy)
                rows["tvl_usd"].append(tvl)
    snapshots = pa.table(
        {
            "pool_id": pa.array(rows["pool_id"], pa.string()),
            "timestamp": pa.array(rows["timestamp"], pa.timestamp("us")),
            "apy": pa.array(rows["apy"], pa.float64()),
            "tvl_usd": pa.array(rows["tvl_usd"], pa.float64()),
        }
    )
    market: dict[str, list] = {"source": [], "date": [], "value": []}
    for source in ("ETH", "BTC", "gas"):
        begin = draw(st.integers(-5, 30))
        for d in range(begin, 100):
            if draw(st.integers(0, 4)) == 0:
                continue
            market["source"].append(source)
            market["date"].append(start + dt.timedelta(days=d))
            market["value"].append(draw(st.floats(1, 1e5, allow_nan=False)))
    market_t = pa.table(
        {
            "source": pa.array(market["source"], pa.string()),
            "date": pa.array(market["date"], pa.date32()),
            "value": pa.array(market["value"], pa.float64()),
        }
    )
    as_of = last_day + dt.timedelta(days=draw(st.integers(0, 40)))
    return snapshots, market_t, as_of


@hsettings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(panel=panels())
def test_metrics_match_local_on_generated_panels(spark, panel) -> None:  # type: ignore[no-untyped-def]
    from poolcast.engines import spark as engine
    from poolcast.engines.local import compute_metrics

    snapshots, market, as_of = panel
    local = compute_metrics(snapshots, market, as_of)
    with _spark_exchange(spark) as ex:
        frame = engine.compute_metrics(
            spark, ex.arrow_to_spark(snapshots, "s"), ex.arrow_to_spark(market, "m"), as_of
        )
        remote = ex.spark_to_arrow(frame, "out")
    _assert_same(compare_tables("generated", local, remote, KEY, METRIC_COLUMNS))


def test_features_match_local(spark, demo_store) -> None:  # type: ignore[no-untyped-def]
    from poolcast.engines import spark as engine
    from poolcast.engines.local import compute_features
    from poolcast.spec import FEATURES
    from poolcast.store.queries import read_panel

    store, settings = demo_store
    metrics = read_panel(store, settings.train_days, horizon=30)
    local = compute_features(metrics)
    with _spark_exchange(spark, store) as ex:
        remote = ex.spark_to_arrow(engine.forecast_panel(ex, settings.train_days), "panel")
    assert remote.num_rows == local.num_rows
    columns = [f.name for f in FEATURES] + ["target_h1"]
    _assert_same(compare_tables("panel", local, remote, KEY, columns))


def _metric_checksum(store: Store) -> list[dict]:
    return store.fetch_arrow(
        "SELECT pool_id, date, actual_apy, rolling_apy_30d, forecasted_apy FROM pool_daily_metrics "
        "ORDER BY pool_id, date"
    ).to_pylist()


def test_metrics_stage_on_spark_writes_the_local_rows(spark, demo_store) -> None:  # type: ignore[no-untyped-def]
    from poolcast.engines.local import compute_metrics
    from poolcast.stages import metrics_stage, resolve_as_of
    from poolcast.store.queries import read_market, read_snapshots

    store, settings = demo_store
    forecasts_before = store.fetch_arrow(
        "SELECT count(forecasted_apy) AS n FROM pool_daily_metrics"
    ).column("n")[0].as_py()
    result = metrics_stage(store, settings.model_copy(update={"engine": "spark"}))
    assert result.engine == "spark" and result.details["rows"] > 10_000
    # What the stage merged equals what the local engine computes, and forecasts were kept.
    as_of = resolve_as_of(store, settings)
    local = compute_metrics(
        read_snapshots(store, as_of, settings.lookback_days), read_market(store, as_of), as_of
    )
    stored = store.fetch_arrow(
        "SELECT * FROM pool_daily_metrics WHERE is_observed IS NOT NULL"
    )
    _assert_same(compare_tables("stored", local, stored, KEY, METRIC_COLUMNS))
    assert store.fetch_arrow(
        "SELECT count(forecasted_apy) AS n FROM pool_daily_metrics"
    ).column("n")[0].as_py() == forecasts_before
    if store.dialect == "postgres":
        leftovers = store.fetch_arrow(
            "SELECT count(*) AS n FROM information_schema.tables "
            "WHERE table_name LIKE '\\_spark\\_stage%'"
        )
        assert leftovers.column("n")[0].as_py() == 0


@pytest.mark.parametrize("demo_template", ["postgres"], indirect=True)  # JDBC path
def test_failed_jdbc_write_leaves_target_unchanged(spark, demo_store) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from poolcast.store.queries import METRIC_KEY

    store, _ = demo_store
    assert store.dialect == "postgres"
    before = _metric_checksum(store)
    with _spark_exchange(spark, store) as ex:
        good = ex.read_query(
            "SELECT pool_id, date, actual_apy FROM pool_daily_metrics", name="m",
            partition_by_pool=True,
        )
        # Half the rows are fine, then a value PostgreSQL refuses: the batch fails part way.
        bad = good.withColumn(
            "actual_apy",
            F.when(F.col("date") > F.lit("2025-01-01"), F.lit("not a number")).otherwise(
                F.col("actual_apy").cast("string")
            ),
        )
        with pytest.raises(SparkIOError, match="pool_daily_metrics is unchanged"):
            ex.merge("pool_daily_metrics", bad, METRIC_KEY, update=["actual_apy"])
    assert _metric_checksum(store) == before
    leftovers = store.fetch_arrow(
        "SELECT count(*) AS n FROM information_schema.tables "
        "WHERE table_name LIKE '\\_spark\\_stage%'"
    )
    assert leftovers.column("n")[0].as_py() == 0


def test_failed_training_leaves_tables_unchanged(spark, demo_store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from synapse.ml.lightgbm import LightGBMRegressor

    from poolcast.engines.spark import SparkStageError
    from poolcast.stages import forecast_stage

    store, settings = demo_store
    before = _metric_checksum(store)
    forecasts_before = store.fetch_arrow("SELECT count(*) AS n FROM forecasts").to_pylist()

    def boom(self, dataset, params=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("java.net.ConnectException: Connection refused (simulated)")

    monkeypatch.setattr(LightGBMRegressor, "fit", boom)
    with pytest.raises(SparkStageError, match=r"spark forecast failed at training: .*Connection"):
        forecast_stage(store, settings.model_copy(update={"engine": "spark"}))
    assert _metric_checksum(store) == before
    assert store.fetch_arrow("SELECT count(*) AS n FROM forecasts").to_pylist() == forecasts_before
    staging = store.fetch_arrow("SELECT count(*) AS n FROM pool_forecasts_staging")
    assert staging.column("n")[0].as_py() == 0


@pytest.fixture(scope="module")
def spark_forecast_run(spark, demo_template, tmp_path_factory):  # type: ignore[no-untyped-def]
    """`poolcast forecast --engine spark` once on a copy of each demo store."""
    from poolcast.stages import forecast_stage
    from poolcast.store import open_store

    from conftest import _copy_store

    url, settings = demo_template["demo"]
    root = tmp_path_factory.mktemp("spark-forecast")
    pg_base = None
    if url.startswith("postgresql://"):
        import os

        pg_base = os.environ["POOLCAST_TEST_PG_URL"]
    copy = _copy_store(url, root, pg_base)
    run_settings = settings.model_copy(
        update={"engine": "spark", "model_dir": str(root / "models")}
    )
    with open_store(copy) as s:
        local = s.fetch_arrow(
            "SELECT pool_id, date, forecasted_apy FROM pool_daily_metrics "
            "WHERE forecasted_apy IS NOT NULL"
        )
        result = forecast_stage(s, run_settings)
        remote = s.fetch_arrow(
            "SELECT pool_id, date, forecasted_apy FROM pool_daily_metrics "
            "WHERE forecasted_apy IS NOT NULL"
        )
    return result, local, remote


# On the embedded store; PostgreSQL's forecast through JDBC is the cluster test's
# (test_spark_cluster.py: the Dataproc entry point on two executors).
@pytest.mark.parametrize("demo_template", ["duckdb"], indirect=True)
def test_forecast_stage_on_spark(spark_forecast_run) -> None:  # type: ignore[no-untyped-def]
    import lightgbm as lgb

    result, local, remote = spark_forecast_run
    assert result.engine == "spark"
    assert result.details["forecasts"] == 99
    # every ensemble member of every horizon (1 + 3 + 3 + 3), calibration fit then final fit
    assert result.details["synapseml_fits"] == 2 * (1 + 3 + 3 + 3)
    # Same pools and days as the local engine's forecasts, values close (different LightGBM
    # builds: SynapseML's lightgbmlib 3.3.5 and the lightgbm package).
    report = compare_tables(
        "forecasts", local, remote, KEY, ["forecasted_apy"],
        forecast_columns=("forecasted_apy",),
    )
    assert report.ok, report
    # The saved artifact: native LightGBM text that the lightgbm package loads and predicts with.
    model_dir = Path(result.details["model"])
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["engine"] == "spark" and "synapseml" in meta["trainer"]
    booster = lgb.Booster(model_file=str(model_dir / "h1.txt"))
    n_features = len(meta["horizons"]["1"]["features"])
    assert booster.num_feature() == n_features
    thirty = lgb.Booster(model_file=str(model_dir / "h30.txt"))
    assert thirty.num_feature() == len(meta["horizons"]["30"]["features"]) > n_features
    assert np.isfinite(booster.predict(np.zeros((2, n_features)))).all()


@pytest.mark.parametrize("demo_template", ["duckdb"], indirect=True)
def test_forecast_through_the_driver_trains_the_same_model(spark, demo_store) -> None:  # type: ignore[no-untyped-def]
    """Dataproc's exchange (Arrow batches through the driver, no shared disk) gives SynapseML
    the same training rows as the Parquet files of local mode: the same model, byte for byte.
    The next-day horizon alone (two fits per exchange): the rows, not the horizons, differ."""
    from poolcast.engines import spark as engine
    from poolcast.model import ForecastModel
    from poolcast.store.spark_io import SparkExchange

    store, settings = demo_store
    versions = []
    for via_files in (True, False):
        with SparkExchange(spark, store, via_files=via_files) as ex:
            assert ex.via_files is via_files
            panel = engine.forecast_panel(ex, settings.train_days)
            compute = engine.spark_compute(ex, panel.count())
            model = ForecastModel(
                horizons=(1,), train_days=settings.train_days, seed=settings.seed, compute=compute
            ).fit(compute.keep(compute.by_pools(panel)))
            compute.close()
        assert model.horizons_[1].n_train_ > 1_000
        versions.append(model.version_)
    assert versions[0] == versions[1]


def test_dataproc_entry_point(spark, demo_store, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """The `mainPythonFileUri` script's main, in this session (a batch's is started by Dataproc)."""
    import runpy

    from poolcast.jobs._main import main

    store, settings = demo_store
    url = store.url
    store.close()
    monkeypatch.setenv("SPARK_ENVIRONMENT", "local")
    assert main("metrics", ["--store", url, "--lookback-days", "365"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["stage"] == "metrics" and out["engine"] == "spark" and out["details"]["pools"] == 99
    # The daily mode, flagged as on the CLI: only the last day is recomputed, and nothing changed.
    assert main("metrics", ["--store", url, "--lookback-days", "365", "--incremental"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["details"]["since"] == out["details"]["as_of"] and out["rows_written"] == 0
    # A failure is exit status 1 with the cause on stderr (the batch is then FAILED).
    assert main("metrics", ["--store", url + ".missing/none.duckdb"]) == 1
    assert "poolcast metrics job failed" in capsys.readouterr().err
    # The scripts themselves are importable files that call main() only as __main__.
    jobs = Path(__import__("poolcast.jobs").jobs.__file__).parent
    for name in ("metrics_job.py", "forecast_job.py"):
        runpy.run_path(str(jobs / name), run_name="not_main")


@pytest.mark.parametrize("demo_template", ["postgres"], indirect=True)  # JDBC path
def test_metrics_jdbc_failure(spark, demo_store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from poolcast.engines.spark import SparkStageError
    from poolcast.stages import metrics_stage
    from poolcast.store.spark_io import SparkExchange

    store, settings = demo_store
    assert store.dialect == "postgres"
    before = _metric_checksum(store)
    original = SparkExchange.append_jdbc

    def half_then_fail(self, table, df, *, label=None):  # type: ignore[no-untyped-def]
        original(self, table, df.limit(500), label=label)  # some batches land in the stage
        raise RuntimeError("java.sql.BatchUpdateException: connection reset (simulated)")

    monkeypatch.setattr(SparkExchange, "append_jdbc", half_then_fail)
    with pytest.raises(
        SparkStageError,
        match=r"spark metrics failed at writing pool_daily_metrics: .*connection reset",
    ):
        metrics_stage(store, settings.model_copy(update={"engine": "spark"}))
    assert _metric_checksum(store) == before
    leftovers = store.fetch_arrow(
        "SELECT count(*) AS n FROM information_schema.tables "
        "WHERE table_name LIKE '\\_spark\\_stage%'"
    )
    assert leftovers.column("n")[0].as_py() == 0


def test_missing_java_is_a_plain_error(tmp_path: Path) -> None:
    """No Java: the command says what is missing (exit 1), no traceback, nothing written."""
    import os
    import subprocess
    import sys

    from poolcast.store import open_store

    url = str(tmp_path / "empty.duckdb")
    with open_store(url) as s:
        s.init_schema()
    poolcast = Path(sys.executable).parent / "poolcast"
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java"), "PATH": "/usr/bin:/bin"}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    done = subprocess.run(
        [str(poolcast), "metrics", "--engine", "spark", "--store", url],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Java 17" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("demo_template", ["duckdb"], indirect=True)
def test_daily_forecast_on_spark_reuses_a_recent_model(spark, demo_store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`run --engine spark --incremental`: the forecast stage loads the newest Spark model trained
    at most retrain_days before the data (pipeline._recent_model's rule) instead of training."""
    from poolcast.engines.spark import spark_model_dir
    from poolcast.stages import forecast_stage

    store, settings = demo_store
    run = settings.model_copy(update={"model_dir": str(tmp_path / "models")})
    # An artifact where the Spark engine keeps its models, trained by the local engine (a
    # SynapseML training costs ~30 s here; the rule reads only the artifact's metadata).
    saved = forecast_stage(store, run.model_copy(update={"model_dir": spark_model_dir(run)}))
    assert saved.details["trained"] is True
    daily = run.model_copy(update={"engine": "spark", "incremental": True})
    reused = forecast_stage(store, daily)
    assert reused.engine == "spark" and reused.details["trained"] is False
    assert reused.details["model"] == saved.details["model"]
    assert reused.details["synapseml_fits"] == 0
    assert reused.rows_written == 0  # the same model on the same data: nothing changes


@pytest.mark.parametrize("demo_template", ["postgres"], indirect=True)
def test_the_forecast_brings_no_table_to_the_driver(spark, demo_store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The model's rows stay on the executors: fitting and predicting on the Spark compute, the
    driver collects only counts, sums and ranked values (a handful of rows per action), never
    the panel, the training rows or the predictions; nothing comes back as Arrow or pandas."""
    from pyspark.sql import DataFrame

    from poolcast.engines import spark as engine
    from poolcast.model import ForecastModel, forecast_table

    store, settings = demo_store
    collected: list[int] = []
    collect = DataFrame.collect

    def counted(self: DataFrame) -> list:  # type: ignore[type-arg]
        rows = collect(self)
        collected.append(len(rows))
        return rows

    def refused(self: DataFrame, *args: object, **kwargs: object) -> None:
        raise AssertionError("a whole table was brought to the driver")

    with _spark_exchange(spark, store) as ex:
        panel = engine.forecast_panel(ex, settings.train_days)
        compute = engine.spark_compute(ex, panel.count())
        monkeypatch.setattr(DataFrame, "collect", counted)
        for name in ("toPandas", "_collect_as_arrow", "toLocalIterator"):
            monkeypatch.setattr(DataFrame, name, refused)
        panel = compute.keep(compute.by_pools(panel))
        rows = compute.count(panel)
        model = ForecastModel(
            horizons=(1, 7), train_days=settings.train_days, seed=settings.seed, compute=compute
        ).fit(panel)
        forecasts = compute.count(model.forecasts(panel))
        next_day = compute.count(forecast_table(model, panel))
        compute.close()
    assert rows > 10_000 and next_day == 99 and forecasts == 99 * 4  # apy and tvl, 2 horizons
    assert model.horizons_[7].calibration_["n"] > 1_000
    assert collected and max(collected) <= 16, collected
