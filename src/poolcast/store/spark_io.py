"""Moving tables between a store and Spark, in bulk (plan Task 2.1, with the ERRATA's fixes).

PostgreSQL (``postgresql://...``): JDBC with the driver from Maven Central.

* Reads are partitioned by a hash of ``pool_id`` (``predicates``): N parallel connections, each
  reading whole pools, never one connection for everything, never a partition per row range
  that splits a pool's history.
* Writes never touch a table users read: Spark appends in batches (``batchsize``, with the
  driver's ``reWriteBatchedInserts``) into a fresh, run-unique staging table; then one
  transaction on the store's own connection merges the stage into the target with the store's
  merge SQL (``INSERT ... ON CONFLICT DO UPDATE ... WHERE IS DISTINCT FROM``) and drops the
  stage. A JDBC failure part way leaves the target as it was (the stage is dropped).

Embedded DuckDB (a path): Spark and DuckDB exchange Parquet files in a temporary folder: DuckDB
runs the input query and writes Parquet, Spark reads it; Spark writes its result as Parquet and
the store merges it like any other Arrow table. Measured against the alternatives in
``docs/spark.md``.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from poolcast.log import first_line
from poolcast.store._base import Store, StoreError, ident

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

# libpq URL parameters that have a JDBC equivalent under the same name.
_PASS_THROUGH = {"sslmode", "sslrootcert", "sslcert", "sslkey", "options", "application_name"}


class SparkIOError(StoreError):
    """Moving data between Spark and the store failed; the target tables are unchanged."""


@dataclass(frozen=True)
class JdbcTarget:
    """A PostgreSQL URL turned into what Spark's JDBC source wants (password kept out of URL)."""

    url: str
    properties: dict[str, str] = field(repr=False)

    @classmethod
    def from_url(cls, url: str, *, batch_size: int = 10_000) -> JdbcTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise SparkIOError(f"not a PostgreSQL URL: {parts.scheme}://...")
        host = parts.hostname or "localhost"
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        port = parts.port or 5432
        database = unquote(parts.path.lstrip("/")) or "postgres"
        query = dict(parse_qsl(parts.query))
        jdbc_query = {k: v for k, v in query.items() if k in _PASS_THROUGH}
        jdbc_query["reWriteBatchedInserts"] = "true"
        jdbc_query.setdefault("ApplicationName", "poolcast-spark")
        props = {
            "driver": "org.postgresql.Driver",
            "user": unquote(parts.username or query.get("user", "postgres")),
            "connectTimeout": "30",
            "socketTimeout": "600",
            "batchsize": str(batch_size),
            "fetchsize": str(batch_size),
            "sessionInitStatement": "SET TIME ZONE 'UTC'",
        }
        password = parts.password or query.get("password")
        if password:
            props["password"] = unquote(password)
        jdbc_url = f"jdbc:postgresql://{host}:{port}/{database}?{urlencode(jdbc_query)}"
        return cls(jdbc_url, props)


def pool_hash_predicates(partitions: int, column: str = "pool_id") -> list[str]:
    """One WHERE clause per read partition: pools spread by PostgreSQL's ``hashtext``."""
    if partitions < 1:
        raise SparkIOError("jdbc_partitions must be at least 1")
    column = ident(column)
    # hashtext() is a signed int4; shift it to be non-negative before the modulo.
    expr = f"mod(hashtext({column})::bigint + 2147483648, {partitions})"
    return [f"{expr} = {i}" for i in range(partitions)]


def executors_share_driver_disk(spark: SparkSession) -> bool:
    """True when the executors run on the driver's machine (``local[...]``, or
    ``local-cluster[...]``: separate JVMs, one disk), so a folder there is theirs too. Not on
    Dataproc or any other cluster: executors are other machines; stage in a bucket there."""
    return str(spark.sparkContext.master).startswith("local")


def is_postgres(store: Store) -> bool:
    return store.dialect == "postgres"


class SparkExchange:
    """Reads inputs into Spark and merges Spark results into one store.

    Use as a context manager: temporary Parquet files and staging tables are removed on exit,
    whatever happened.
    """

    def __init__(
        self,
        spark: SparkSession,
        store: Store,
        *,
        jdbc_partitions: int = 8,
        batch_size: int = 10_000,
        workdir: str | None = None,
        via_files: bool | None = None,
    ) -> None:
        """``workdir``: where Parquet is staged, a local folder or a URI every executor reads
        (``gs://bucket/prefix`` on Dataproc); a fresh run-unique folder is made under it.
        ``via_files``: stage through it (default: when ``workdir`` is given, or the executors
        share the driver's disk), else Arrow batches through the driver."""
        from pyarrow import fs as pafs

        self.spark = spark
        self.store = store
        if via_files is None:
            via_files = workdir is not None or executors_share_driver_disk(spark)
        self.via_files = via_files
        self.jdbc_partitions = jdbc_partitions
        self.batch_size = batch_size
        run = f"poolcast-spark-{uuid.uuid4().hex[:12]}"
        if workdir and "://" in workdir:
            self._fs, root = pafs.FileSystem.from_uri(workdir.rstrip("/"))
            self._tmp_uri = f"{workdir.rstrip('/')}/{run}"
            self._tmp_path = f"{root}/{run}"
            self._fs.create_dir(self._tmp_path)
        else:
            local = tempfile.mkdtemp(prefix=f"{run}-", dir=workdir)
            self._fs, self._tmp_path, self._tmp_uri = pafs.LocalFileSystem(), local, local
        self._jdbc = (
            JdbcTarget.from_url(store.url, batch_size=batch_size) if is_postgres(store) else None
        )
        self.timings: dict[str, float] = {}

    # -- lifecycle -----
    def __enter__(self) -> SparkExchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._fs.delete_dir(self._tmp_path)

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    # -- reads -----
    def read_query(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        name: str,
        partition_by_pool: bool = False,
    ) -> DataFrame:
        """The result of ``sql`` (a SELECT in the store's dialect) as a Spark DataFrame.

        PostgreSQL: JDBC, ``partition_by_pool`` spreads whole pools over ``jdbc_partitions``
        connections (the query must have a ``pool_id`` column). Parameters are bound by the
        store (never formatted into SQL): for JDBC they must be literals we render ourselves, so
        only ints, floats, dates and validated identifiers are accepted.
        DuckDB: the store runs the query and writes Parquet that Spark reads.
        """
        name = ident(name)
        if self._jdbc is not None:
            rendered = _render_params(sql, params)
            with self._timed(f"read:{name}"):
                reader = self.spark.read
                subquery = f"({rendered}) AS {name}"
                if partition_by_pool and self.jdbc_partitions > 1:
                    return reader.jdbc(
                        self._jdbc.url,
                        subquery,
                        predicates=pool_hash_predicates(self.jdbc_partitions),
                        properties=self._jdbc.properties,
                    )
                return reader.jdbc(self._jdbc.url, subquery, properties=self._jdbc.properties)
        with self._timed(f"read:{name}"):
            table = self.store.fetch_arrow(sql, params)
            return self.arrow_to_spark(table, name)

    def arrow_to_spark(self, table: pa.Table, name: str) -> DataFrame:
        """Hand an Arrow table to Spark: through a Parquet file where the executors share the
        driver's disk (local mode; measured fastest, docs/spark.md), else through the driver's
        memory in Arrow batches (a cluster: a file on the driver's disk is not on theirs)."""
        if not self.via_files:
            return _arrow_batches_to_spark(self.spark, table)
        name = f"in-{ident(name)}-{uuid.uuid4().hex[:8]}.parquet"
        pq.write_table(table, f"{self._tmp_path}/{name}", filesystem=self._fs)
        return self.spark.read.parquet(f"{self._tmp_uri}/{name}")

    def spark_to_arrow(self, df: DataFrame, name: str) -> pa.Table:
        """Collect a Spark result as Arrow (no row-by-row Python): Parquet files where the
        executors write to the driver's disk, else Arrow batches collected by the driver."""
        if not self.via_files:
            from pyspark.sql.pandas.types import to_arrow_schema

            self._arrow_batches_on()
            # toPandas()'s own Arrow collection, without the pandas step (pyspark 3.5 API).
            batches = df._collect_as_arrow()
            if not batches:
                return to_arrow_schema(df.schema).empty_table()
            return pa.Table.from_batches(batches).combine_chunks()
        from pyarrow import fs as pafs
        from pyspark.sql import functions as F

        folder = f"out-{ident(name)}-{uuid.uuid4().hex[:8]}"
        df = df.cache()
        try:
            # Rows per partition (a few numbers): what the driver must find in the part files.
            expected: dict[int, int] = dict(df.groupBy(F.spark_partition_id()).count().collect())
            df.write.mode("errorifexists").parquet(f"{self._tmp_uri}/{folder}")
        finally:
            df.unpersist()
        infos = self._fs.get_file_info(pafs.FileSelector(f"{self._tmp_path}/{folder}"))
        files = sorted(i.path for i in infos if i.path.endswith(".parquet"))
        found: dict[int, int] = {}
        for f in files:
            part = int(f.rsplit("/", 1)[-1].split("-")[1])
            found[part] = found.get(part, 0) + pq.read_metadata(f, filesystem=self._fs).num_rows
        missing = sorted(p for p, n in expected.items() if n and found.get(p) != n)
        if missing:
            first = missing[0]
            raise SparkIOError(
                f"part-{first:05d} of {name} ({expected[first]} rows; {len(missing)} part(s) in "
                f"all) is not in {self._tmp_uri}/{folder}: the executors wrote where the driver "
                "cannot read. Set POOLCAST_SPARK_STAGING to a folder or bucket both reach; "
                "nothing was merged"
            )
        if not files:
            return pa.table({c: pa.array([], type=pa.null()) for c in df.columns})
        tables = [pq.read_table(f, filesystem=self._fs) for f in files]
        return pa.concat_tables(tables).combine_chunks()

    def _arrow_batches_on(self) -> None:
        # Arrow for pandas <-> Spark, and a failure instead of a silent row-by-row fallback.
        self.spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
        self.spark.conf.set("spark.sql.execution.arrow.pyspark.fallback.enabled", "false")

    # -- writes -----
    def merge(
        self,
        target: str,
        df: DataFrame,
        key: Sequence[str],
        *,
        update: Sequence[str] | None = None,
        casts: dict[str, str] | None = None,
    ) -> int:
        """Merge ``df`` into ``target`` through a staging table, in one transaction.

        The target is touched only by the final merge statement: if the Spark job, the JDBC
        write or the merge fails, the target is as it was and the error says which step failed.
        """
        target = ident(target)
        if self._jdbc is None:
            with self._timed(f"write:{target}"):
                try:
                    table = self.spark_to_arrow(df, target)
                except Exception as exc:
                    raise SparkIOError(
                        f"Spark could not compute the rows for {target}: {first_line(exc)}; "
                        f"{target} is unchanged"
                    ) from exc
            with self._timed(f"merge:{target}"):
                return self.store.merge(target, table, key, update=update, casts=casts)
        return self._merge_jdbc(target, df, key, update=update, casts=casts)

    @contextlib.contextmanager
    def staged(self, like: str, df: DataFrame) -> Iterator[str | pa.Table]:
        """``df`` staged for a merge the caller runs in its own transaction: on PostgreSQL an
        UNLOGGED table shaped like ``like``, written by the executors over JDBC (its name is
        yielded, the table dropped after); on the embedded store, the rows as Arrow."""
        like = ident(like)
        if self._jdbc is None:
            yield self.spark_to_arrow(df, like)
            return
        stage = ident(f"_spark_stage_{like}_{uuid.uuid4().hex[:10]}"[:63])
        columns = [ident(c) for c in df.columns]
        # An UNLOGGED table with the target's column types; no constraints, nobody reads it.
        self.store.execute(
            f"CREATE UNLOGGED TABLE {stage} AS SELECT {', '.join(columns)} "  # noqa: S608
            f"FROM {like} WITH NO DATA"
        )
        try:
            try:
                self.append_jdbc(stage, df, label=like)
            except Exception as exc:
                raise SparkIOError(
                    f"writing {like} over JDBC failed: {first_line(exc)}; {like} is unchanged"
                ) from exc
            yield stage
        finally:
            with contextlib.suppress(Exception):
                self.store.execute(f"DROP TABLE IF EXISTS {stage}")

    def append_jdbc(self, table: str, df: DataFrame, *, label: str | None = None) -> None:
        """Append ``df`` to an existing PostgreSQL table in JDBC batches (staging tables only)."""
        assert self._jdbc is not None, "append_jdbc needs a PostgreSQL store"
        table = ident(table)
        with self._timed(f"write:{label or table}"):
            (
                df.write.mode("append")
                .option("batchsize", str(self.batch_size))
                .option("isolationLevel", "READ_COMMITTED")
                .jdbc(self._jdbc.url, table, properties=self._jdbc.properties)
            )

    def _merge_jdbc(
        self,
        target: str,
        df: DataFrame,
        key: Sequence[str],
        *,
        update: Sequence[str] | None,
        casts: dict[str, str] | None,
    ) -> int:
        with self.staged(target, df) as stage, self._timed(f"merge:{target}"):
            columns = [ident(c) for c in df.columns]
            return self.store.merge_from(
                target, str(stage), columns, key, update=update, casts=casts
            )


def _arrow_batches_to_spark(spark: SparkSession, table: pa.Table) -> DataFrame:
    """``createDataFrame`` from Arrow batches as pyspark 3.5 does for pandas, minus pandas (which
    would turn NaN into NULL): the batches stream to the JVM, which builds the DataFrame. Uses
    pyspark 3.5's internals (pinned; ``tests/test_spark_engine.py`` checks the round trip)."""
    from pyspark.sql import DataFrame
    from pyspark.sql.pandas.serializers import ArrowStreamSerializer
    from pyspark.sql.pandas.types import from_arrow_schema

    schema = from_arrow_schema(table.schema)
    step = spark._jconf.arrowMaxRecordsPerBatch()
    batches = table.combine_chunks().to_batches(max_chunksize=step if step > 0 else None)
    jvm = spark._jvm
    assert jvm is not None

    def read_file(path: str) -> Any:
        return jvm.PythonSQLUtils.readArrowStreamFromFile(path)

    def iterator_server() -> Any:
        return jvm.ArrowIteratorServer()

    stream = spark.sparkContext._serialize_to_jvm(
        batches, ArrowStreamSerializer(), read_file, iterator_server
    )
    jdf = jvm.PythonSQLUtils.toDataFrame(stream, schema.json(), spark._jsparkSession)
    return DataFrame(jdf, spark)


def _render_params(sql: str, params: Sequence[Any] | None) -> str:
    """Inline ``$n`` parameters for a JDBC subquery, accepting only self-rendering types."""
    import datetime as dt

    if not params:
        return sql
    rendered = sql
    # Replace from the highest index down so $1 does not clobber $10.
    for index in range(len(params), 0, -1):
        value = params[index - 1]
        if isinstance(value, bool):
            literal = "TRUE" if value else "FALSE"
        elif isinstance(value, int | float):
            literal = repr(value)
        elif isinstance(value, dt.datetime):
            literal = f"TIMESTAMP '{value.isoformat(sep=' ')}'"
        elif isinstance(value, dt.date):
            literal = f"DATE '{value.isoformat()}'"
        else:
            raise SparkIOError(
                f"parameter ${index} of a JDBC read has type {type(value).__name__}: only numbers "
                "and dates are inlined, never text"
            )
        rendered = rendered.replace(f"${index}", literal)
    return rendered
