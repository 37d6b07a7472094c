"""One measurement, in its own process so that its peak RSS is its own (bench/run.py reads it with
wait4). Prints one JSON line: ``{"timings": {section: {"wall_s", "cpu_s"}}, "info": {...}}``.

Usage: ``python bench/_child.py TASK '{"store": ..., ...}'``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

TIMINGS: dict[str, dict[str, float]] = {}
INFO: dict[str, Any] = {}


def _descendants() -> list[int]:
    """Pids of this process's descendants (the Spark JVM runs as one)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [os.getpid()]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        found += kids
        frontier += kids
    return found


def descendants_usage() -> tuple[float, float]:
    """CPU seconds and summed peak RSS (MB) of the live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu, hwm = 0.0, 0.0
    for pid in _descendants():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm += int(line.split()[1]) / 1024
        except OSError:
            continue
    return cpu, hwm


@contextmanager
def timed(section: str, *, children: bool = False) -> Iterator[None]:
    """Wall and CPU seconds of a section; ``children`` adds the CPU of live child processes."""
    wall, cpu = time.perf_counter(), time.process_time()
    child_cpu = descendants_usage()[0] if children else 0.0
    yield
    extra = descendants_usage()[0] - child_cpu if children else 0.0
    TIMINGS[section] = {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu + extra,
    }


def _store(args: dict[str, Any]):  # type: ignore[no-untyped-def]
    from poolcast.store import open_store

    return open_store(args["store"])


def _as_of(store) -> dt.date:  # type: ignore[no-untyped-def]
    from poolcast.store.queries import latest_data_day

    day = latest_data_day(store)
    assert day is not None, "no data: generate first"
    return day


def _cached_inputs(args: dict[str, Any]) -> tuple[pa.Table, pa.Table, dt.date]:
    cache = Path(args["cache"])
    meta = json.loads((cache / "meta.json").read_text())
    return (
        pq.read_table(cache / "snapshots.parquet"),
        pq.read_table(cache / "market.parquet"),
        dt.date.fromisoformat(meta["as_of"]),
    )


def task_generate(args: dict[str, Any]) -> None:
    from poolcast.ops.generate import generate

    with _store(args) as store:
        store.init_schema()
        with timed("generate"):
            report = generate(store, args["pools"], args["days"], seed=args.get("seed", 0))
    INFO["snapshots"] = report.snapshots


def task_read_raw(args: dict[str, Any]) -> None:
    from poolcast.store.queries import read_market, read_snapshots

    with _store(args) as store:
        as_of = _as_of(store)
        with timed("store_read_raw"):
            snapshots = read_snapshots(store, as_of, 365)
            market = read_market(store, as_of)
    INFO["rows"] = snapshots.num_rows
    if args.get("cache"):
        cache = Path(args["cache"])
        cache.mkdir(parents=True, exist_ok=True)
        pq.write_table(snapshots, cache / "snapshots.parquet")
        pq.write_table(market, cache / "market.parquet")
        (cache / "meta.json").write_text(json.dumps({"as_of": as_of.isoformat()}))


def task_metrics_local(args: dict[str, Any]) -> None:
    from poolcast.engines.local import compute_metrics

    snapshots, market, as_of = _cached_inputs(args)
    with timed("metrics"):
        out = compute_metrics(snapshots, market, as_of)
    INFO["rows"] = out.num_rows


def _every_kth_pool(snapshots: pa.Table, k: int) -> tuple[pa.Table, int, int]:
    """The snapshots of every ``k``-th pool in pool_id order; pools kept, pools in all."""
    import pyarrow.compute as pc

    pools = pc.unique(snapshots.column("pool_id")).sort()
    kept = pools.take(pa.array(range(0, len(pools), k), pa.int64()))
    return snapshots.filter(pc.is_in(snapshots.column("pool_id"), kept)), len(kept), len(pools)


def task_metrics_baseline(args: dict[str, Any]) -> None:
    """The per-pool pandas loop; with ``sample_every`` k > 1 on every k-th pool only (the loop's
    cost is per pool: run.py scales the time by pools in all / pools kept)."""
    import baseline_pandas

    snapshots, market, as_of = _cached_inputs(args)
    k = int(args.get("sample_every", 1))
    kept = total = len(set(snapshots.column("pool_id").unique().to_pylist()))
    if k > 1:
        snapshots, kept, total = _every_kth_pool(snapshots, k)
    with timed("metrics"):
        out = baseline_pandas.compute_metrics(snapshots, market, as_of)
    INFO.update(rows=len(out), pools=kept, pools_total=total)


def task_metrics_spark(args: dict[str, Any]) -> None:
    from poolcast.engines import spark as engine
    from poolcast.engines._spark_session import get_spark_session
    from poolcast.settings import load_settings

    settings = load_settings()
    settings.spark.master = args["master"]
    settings.spark.shuffle_partitions = args.get("partitions", 4)
    cache = Path(args["cache"])
    _, _, as_of = _cached_inputs(args)
    with timed("spark_session_start", children=True):
        session = get_spark_session(settings, "poolcast-bench")
    with timed("metrics", children=True):
        snapshots = session.read.parquet(str(cache / "snapshots.parquet"))
        market = session.read.parquet(str(cache / "market.parquet"))
        out = engine.compute_metrics(session, snapshots, market, as_of)
        out.write.format("noop").mode("overwrite").save()  # every row computed, nothing kept
    # A warm JVM: what a long-lived session pays.
    with timed("metrics_second_run", children=True):
        out = engine.compute_metrics(session, snapshots, market, as_of)
        out.write.format("noop").mode("overwrite").save()
    INFO["jvm_peak_rss_mb"] = descendants_usage()[1]  # not in this process's own RSS
    session.stop()


def task_metrics_write(args: dict[str, Any]) -> None:
    from poolcast.engines.local import compute_metrics
    from poolcast.store.queries import METRIC_KEY, METRIC_UPDATE

    snapshots, market, as_of = _cached_inputs(args)
    metrics = compute_metrics(snapshots, market, as_of)
    with _store(args) as store:
        store.execute("DELETE FROM pool_daily_metrics")
        with timed("store_write_metrics"):
            written = store.merge("pool_daily_metrics", metrics, METRIC_KEY, update=METRIC_UPDATE)
        with timed("store_rewrite_unchanged"):
            rewritten = store.merge("pool_daily_metrics", metrics, METRIC_KEY, update=METRIC_UPDATE)
    INFO.update(rows=metrics.num_rows, written=written, rewritten=rewritten)


def task_forecast(args: dict[str, Any]) -> None:
    """The forecast stage as pipeline.forecast_stage runs it, section by section."""
    from poolcast.engines.local import compute_features
    from poolcast.evaluation.research import ALL_MODELS
    from poolcast.model import Forecaster, ForecastModel, forecast_table
    from poolcast.settings import Settings
    from poolcast.stages import new_run_id
    from poolcast.store.queries import FORECASTS_KEY, read_panel, write_forecasts

    settings = Settings(model_dir=args.get("model_dir", "/tmp/poolcast-bench-models"))
    with _store(args) as store:
        with timed("panel_read"):
            metrics = read_panel(store, settings.train_days, horizon=30)
        with timed("panel_features"):
            panel = compute_features(metrics)
        with timed("train_all_horizons"):
            model = ForecastModel(train_days=settings.train_days, seed=settings.seed).fit(panel)
        with timed("predict"):
            forecasts = forecast_table(model, panel)
            horizons = model.forecasts(panel)
        with timed("store_write_forecasts"), store.transaction():
            write_forecasts(store, forecasts, new_run_id())
            store.merge("forecasts", horizons, FORECASTS_KEY)
        if args.get("plan_model"):
            # The LightGBM target: one next-day model with production tree settings vs the same
            # model with the plan's (800 x 64, 255 bins, sampling, no early stopping); and the
            # plan's own model (L2 on the level, one fit) for reference.
            for name, section in (
                ("production", "train_h1_production"),
                ("plantrees", "train_h1_plantrees"),
                ("plan", "train_h1_plan"),
            ):
                with timed(section):
                    one = Forecaster(
                        name, train_days=settings.train_days, models=ALL_MODELS
                    ).fit(panel)
                INFO[f"{section}_params"] = {
                    k: one.lgb_params().get(k)
                    for k in ("objective", "num_iterations", "num_leaves", "max_bin")
                }
    h1 = model.horizons_[1]
    INFO.update(panel_rows=metrics.num_rows, train_rows=h1.n_train_, horizons=len(model.horizons_))


def task_reset(args: dict[str, Any]) -> None:
    """Empty pool_daily_metrics so that a full run starts from raw tables only (TRUNCATE: a DELETE
    would leave millions of dead index entries on PostgreSQL that a fresh table does not have)."""
    with _store(args) as store:
        store.execute("TRUNCATE pool_daily_metrics")


ADD_DAY_SQL = """
INSERT INTO raw_defillama_pool_history (pool_id, timestamp, raw_json_data)
SELECT pool_id, timestamp + INTERVAL '1 day', raw_json_data
FROM raw_defillama_pool_history
WHERE timestamp >= $1
"""


def task_add_day(args: dict[str, Any]) -> None:
    """One new day of snapshots for every pool that reported on the latest day."""
    with _store(args) as store:
        last = _as_of(store)
        store.execute(ADD_DAY_SQL, [dt.datetime.combine(last, dt.time())])
        INFO["day"] = (last + dt.timedelta(days=1)).isoformat()


TASKS: dict[str, Callable[[dict[str, Any]], None]] = {
    name[len("task_") :]: fn for name, fn in globals().items() if name.startswith("task_")
}

if __name__ == "__main__":
    TASKS[sys.argv[1]](json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
    print(json.dumps({"timings": TIMINGS, "info": INFO}, default=str))
