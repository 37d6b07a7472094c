"""How should Spark and the embedded DuckDB store exchange tables? Measured, not guessed.

Moves a table shaped like ``pool_daily_metrics`` (pool_id, date, 14 doubles) between a DuckDB
file and a local Spark session, both ways, by each candidate route, and prints seconds (best of
``--repeat``). Run: ``python bench/spark_exchange.py --rows 36000``.
Routes:
  parquet  DuckDB -> Arrow -> Parquet file -> spark.read.parquet;  Spark -> Parquet -> Arrow
  pandas   DuckDB -> Arrow -> pandas -> spark.createDataFrame (Arrow enabled);  toPandas -> Arrow
  jdbc     Spark reads the DuckDB file through org.duckdb:duckdb_jdbc (the Python handle must
           be closed first: DuckDB allows one writer process and locks the file)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def make_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    pools = np.array([f"pool-{i:04d}" for i in range(max(1, rows // 365))])
    pool_ids = np.resize(pools, rows)
    dates = np.datetime64("2024-06-01") + (np.arange(rows) // len(pools)).astype("timedelta64[D]")
    cols: dict[str, object] = {"pool_id": pool_ids, "date": dates.astype("datetime64[D]")}
    for i in range(14):
        values = rng.normal(5, 2, rows)
        values[rng.random(rows) < 0.05] = np.nan
        cols[f"m{i}"] = pa.array(values, from_pandas=True)
    return pa.table(cols)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=36_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jdbc", action="store_true", help="also try org.duckdb:duckdb_jdbc")
    args = ap.parse_args()

    from poolcast.engines._spark_session import get_spark_session
    from poolcast.settings import load_settings

    settings = load_settings()
    if args.jdbc:
        settings.spark.packages = [*settings.spark.packages, "org.duckdb:duckdb_jdbc:2.0.0.1"]
    t0 = time.perf_counter()
    spark = get_spark_session(settings, "bench-exchange")
    results: dict[str, float] = {"session_start_s": time.perf_counter() - t0}
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")

    table = make_table(args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="bench-exchange-"))
    db = tmp / "bench.duckdb"
    con = duckdb.connect(str(db))
    con.register("t", table)
    con.execute("CREATE TABLE metrics AS SELECT * FROM t")
    con.unregister("t")

    def consume(frame) -> None:  # read every column of every row, not just a count
        from pyspark.sql import functions as F

        frame.select(F.sum(F.hash(*frame.columns))).collect()

    def to_spark_parquet() -> None:
        arrow = con.execute("SELECT * FROM metrics").to_arrow_table()
        path = tmp / f"in-{time.perf_counter_ns()}.parquet"
        pq.write_table(arrow, path)
        consume(spark.read.parquet(str(path)))

    def to_spark_pandas() -> None:
        arrow = con.execute("SELECT * FROM metrics").to_arrow_table()
        consume(spark.createDataFrame(arrow.to_pandas()))

    pq.write_table(table, tmp / "seed.parquet")
    df = spark.read.parquet(str(tmp / "seed.parquet")).cache()
    df.count()

    def from_spark_parquet() -> None:
        path = tmp / f"out-{time.perf_counter_ns()}"
        df.write.parquet(str(path))
        arrow = pa.concat_tables([pq.read_table(f) for f in sorted(path.glob("*.parquet"))])
        con.register("s", arrow)
        con.execute("CREATE OR REPLACE TEMP TABLE back AS SELECT * FROM s")
        con.unregister("s")

    def from_spark_pandas() -> None:
        arrow = pa.Table.from_pandas(df.toPandas(), preserve_index=False)
        con.register("s", arrow)
        con.execute("CREATE OR REPLACE TEMP TABLE back AS SELECT * FROM s")
        con.unregister("s")

    results["to_spark_parquet_s"] = best(to_spark_parquet, args.repeat)
    results["to_spark_pandas_s"] = best(to_spark_pandas, args.repeat)
    results["from_spark_parquet_s"] = best(from_spark_parquet, args.repeat)
    results["from_spark_pandas_s"] = best(from_spark_pandas, args.repeat)

    if args.jdbc:
        con.close()

        def to_spark_jdbc() -> None:
            consume(
                spark.read.format("jdbc")
                .option("url", f"jdbc:duckdb:{db}")
                .option("driver", "org.duckdb.DuckDBDriver")
                .option("dbtable", "metrics")
                .load()
            )

        def from_spark_jdbc() -> None:
            (
                df.write.format("jdbc")
                .option("url", f"jdbc:duckdb:{db}")
                .option("driver", "org.duckdb.DuckDBDriver")
                .option("dbtable", f"back_{time.perf_counter_ns()}")
                .option("batchsize", "10000")
                .mode("errorifexists")
                .save()
            )

        try:
            results["to_spark_jdbc_s"] = best(to_spark_jdbc, args.repeat)
            results["from_spark_jdbc_s"] = best(from_spark_jdbc, 1)
        except Exception as exc:  # noqa: BLE001 - report, do not hide
            lines = [line for line in str(exc).splitlines() if "Exception" in line]
            results["to_spark_jdbc_error"] = " | ".join(lines)[:300]  # type: ignore[assignment]
    results["rows"] = args.rows
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in results.items()}))
    spark.stop()


if __name__ == "__main__":
    main()
