"""The Spark engine with executors in separate JVMs (`local-cluster[2,1,M]`), as on a cluster.

Each run is its own process, started as a user starts it: the Dataproc entry points through
`spark-submit`, the CLI with `--spark-master`. The processes must end by themselves (a hang is a
timeout here), the metrics must agree with the local engine to 1e-9, the forecasts within the
parity tolerance, and LightGBM must train on every executor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from poolcast.evaluation.parity import DEFAULT_FORECAST_TOL, compare_tables, format_report
from poolcast.spec import metric_names
from poolcast.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from spark_cluster import stage_tasks  # noqa: E402 - the benchmark reads event logs the same way

pytestmark = [pytest.mark.spark, pytest.mark.slow]
pytest.importorskip("pyspark", reason="the Spark engine needs the 'spark' extra")

MASTER = "local-cluster[2,1,1024]"
EXECUTORS = 2
KEY = ("pool_id", "date")
METRICS = [*metric_names(), "is_observed"]
JOBS = Path(__import__("poolcast.jobs").jobs.__file__).parent
TIMEOUT_S = 900  # a driver that does not exit fails here instead of hanging the suite
TRAINING_STAGE = "LightGBMBase.scala:623"  # synapseml-lightgbm_2.12 1.1.3


def _env(tmp_path: Path) -> dict[str, str]:
    import pyspark

    env = {
        **os.environ,
        "SPARK_HOME": os.path.dirname(pyspark.__file__),
        "SPARK_SCALA_VERSION": "2.12",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_ENVIRONMENT": "local",
        "POOLCAST_LOG_FORMAT": "json",
        "SPARK_LOCAL_DIRS": str(tmp_path / "spark-local"),
    }
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return env


def _spark_submit(tmp_path: Path, job: str, args: list[str], events: Path) -> dict[str, Any]:
    """``spark-submit --master local-cluster[...] <job> <args>``; its last stdout line (JSON)."""
    from poolcast.engines._spark_session import UTC_JAVA_OPTIONS, ivy_dir
    from poolcast.settings import Settings

    env = _env(tmp_path)
    submit = Path(env["SPARK_HOME"]) / "bin" / "spark-submit"
    conf = {
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.dynamicAllocation.enabled": "false",
        "spark.ui.enabled": "false",
        "spark.driver.extraJavaOptions": UTC_JAVA_OPTIONS,
        "spark.executor.extraJavaOptions": UTC_JAVA_OPTIONS,
        "spark.jars.ivy": str(ivy_dir()),
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": events.as_uri(),
    }
    cmd = [
        str(submit), "--master", MASTER, "--driver-memory", "2g", "--executor-memory", "1g",
        "--packages", ",".join(Settings().spark.packages),
        *[a for k, v in conf.items() for a in ("--conf", f"{k}={v}")],
        str(JOBS / job), *args,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _metrics(url: str) -> pa.Table:
    with open_store(url) as s:
        return s.fetch_arrow(
            f"SELECT pool_id, date, {', '.join(METRICS)} FROM pool_daily_metrics "
            "WHERE is_observed IS NOT NULL"
        )


def _forecasts(url: str) -> pa.Table:
    with open_store(url) as s:
        return s.fetch_arrow(
            "SELECT pool_id, date, forecasted_apy FROM pool_daily_metrics "
            "WHERE forecasted_apy IS NOT NULL"
        )


def _assert_like_local(
    url: str, local_metrics: pa.Table, local_forecasts: pa.Table | None = None
) -> None:
    metrics = compare_tables("metrics", local_metrics, _metrics(url), KEY, METRICS)
    assert metrics.ok, format_report([metrics])
    if local_forecasts is None:
        return
    forecasts = compare_tables(
        "forecasts", local_forecasts, _forecasts(url), KEY, ["forecasted_apy"],
        forecast_columns=["forecasted_apy"], forecast_tol=DEFAULT_FORECAST_TOL,
    )
    assert forecasts.ok, format_report([forecasts])


@pytest.fixture
def cluster_store(demo_store):  # type: ignore[no-untyped-def]
    """A copy of the demo store (local engine's metrics and forecasts), emptied of both, and
    the local results to compare with."""
    store, settings = demo_store
    local_metrics, local_forecasts = _metrics(store.url), _forecasts(store.url)
    with store.transaction():
        store.execute("DELETE FROM pool_daily_metrics")
    store.close()
    return store.url, settings, local_metrics, local_forecasts


@pytest.mark.parametrize("demo_template", ["postgres"], indirect=True)
def test_dataproc_entry_points_end_on_two_executors(cluster_store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Both `mainPythonFileUri` scripts under spark-submit on PostgreSQL (executors read and
    write over JDBC): they exit by themselves with status 0, compute as the local engine does,
    and LightGBM trains with one task per executor."""
    url, settings, local_metrics, local_forecasts = cluster_store
    events = tmp_path / "events"
    events.mkdir()
    models = str(tmp_path / "models")
    out = _spark_submit(tmp_path, "metrics_job.py", ["--store", url], events)
    assert out["stage"] == "metrics" and out["engine"] == "spark"
    args = ["--store", url, "--model-dir", models]
    out = _spark_submit(tmp_path, "forecast_job.py", args, events)
    assert out["stage"] == "forecast" and out["details"]["synapseml_fits"] > 0
    _assert_like_local(url, local_metrics, local_forecasts)
    # SynapseML's training is the mapPartitions stage at LightGBMBase.scala:623 (one task per
    # LightGBM worker); the single-task stage of the same name reads the staged rows before the
    # repartition.
    training = [n for name, n in stage_tasks(events) if TRAINING_STAGE in name]
    assert training.count(EXECUTORS) == out["details"]["synapseml_fits"], training


@pytest.mark.parametrize("demo_template", ["duckdb"], indirect=True)
def test_cli_run_on_two_executors_with_spark_master(cluster_store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`poolcast run --engine spark --spark-master local-cluster[...]` on the embedded store: the
    executors read and write staged Parquet (every part file accounted for), predict with the
    saved model (POOLCAST_MODEL: the local engine's, so the forecasts are its own), the command
    exits by itself and the metrics match the local engine. Training on the executors is the
    PostgreSQL test's above (the same DataFrames once the panel is read; a fit costs ~15 s
    here)."""
    url, settings, local_metrics, local_forecasts = cluster_store
    (saved,) = Path(settings.model_dir).iterdir()
    poolcast = Path(sys.executable).parent / "poolcast"
    env = {**_env(tmp_path), "POOLCAST_MODEL_DIR": str(tmp_path / "models"),
           "POOLCAST_MODEL": str(saved)}
    done = subprocess.run(
        [str(poolcast), "run", "--engine", "spark", "--spark-master", MASTER, "--store", url],
        env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "engine=spark" in done.stdout and "trained=False" in done.stdout, done.stdout
    assert f"model_version={saved.name.rsplit('-', 1)[1]}" in done.stdout, done.stdout
    _assert_like_local(url, local_metrics, local_forecasts)
