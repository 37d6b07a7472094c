"""Both stores: schema migrations, staged merges, read-only queries."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from readers import reader_url

from poolcast.settings import Settings
from poolcast.store import Store, StoreError, ident, open_store
from poolcast.store._schema import latest_version


def _rows(store: Store) -> list[dict]:
    return store.fetch_arrow(
        "SELECT pool_id, date, actual_apy, forecasted_apy FROM pool_daily_metrics ORDER BY pool_id"
    ).to_pylist()


def test_init_is_idempotent_and_versioned(store: Store) -> None:
    assert store.init_schema() == []
    assert store.schema_version() == latest_version()


def test_merge_updates_only_changed_rows_and_keeps_other_columns(store: Store) -> None:
    day = dt.date(2024, 1, 1)
    first = pa.table({"pool_id": ["a", "b"], "date": [day, day], "actual_apy": [1.0, 2.0]})
    assert store.merge("pool_daily_metrics", first, ["pool_id", "date"]) == 2
    forecast = pa.table({"pool_id": ["a"], "date": [day], "forecasted_apy": [9.0]})
    assert store.merge("pool_daily_metrics", forecast, ["pool_id", "date"]) == 1
    # the same data again changes nothing
    assert store.merge("pool_daily_metrics", first, ["pool_id", "date"]) == 0
    second = pa.table({"pool_id": ["a", "b"], "date": [day, day], "actual_apy": [1.0, 3.0]})
    assert store.merge("pool_daily_metrics", second, ["pool_id", "date"]) == 1
    assert _rows(store) == [
        {"pool_id": "a", "date": day, "actual_apy": 1.0, "forecasted_apy": 9.0},
        {"pool_id": "b", "date": day, "actual_apy": 3.0, "forecasted_apy": None},
    ]


def test_failed_transaction_writes_nothing(store: Store) -> None:
    day = dt.date(2024, 1, 1)
    good = pa.table({"pool_id": ["a"], "date": [day], "actual_apy": [1.0]})
    with pytest.raises(RuntimeError), store.transaction():
        store.merge("pool_daily_metrics", good, ["pool_id", "date"])
        raise RuntimeError("killed half way")
    assert _rows(store) == []


def test_readonly_query_refuses_writes(store: Store) -> None:
    url = reader_url(store.url) if store.dialect == "postgres" else store.url
    if store.dialect == "duckdb":
        store.close()  # the sandbox will not share the file with an unconfined connection
    with open_store(url, sandbox=True) as reader:
        assert reader.readonly_query("SELECT count(*) AS n FROM pools").to_pylist() == [{"n": 0}]
        with pytest.raises(StoreError):
            reader.readonly_query("DELETE FROM pools")
        with pytest.raises(StoreError):
            reader.readonly_query("SELECT 1; DROP TABLE pools")
    with open_store(store.url) as again:
        assert again.fetch_arrow("SELECT count(*) AS n FROM pools").to_pylist() == [{"n": 0}]


@pytest.mark.parametrize("bad", ["pools; DROP TABLE x", "Pools", "a b", "", "x" * 64, "1abc"])
def test_identifiers_are_validated(bad: str) -> None:
    with pytest.raises(StoreError):
        ident(bad)


def test_store_without_schema_says_what_to_do(store_url: str) -> None:
    from poolcast.store import open_store

    with open_store(store_url) as s, pytest.raises(StoreError, match="poolcast db init"):
        s.require_schema()


# -- opening: only the commands that make a store create one; readers open it read-only ----------


def test_a_missing_store_is_not_created_unless_asked(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "x.duckdb"
    for kwargs in ({"create": False}, {"read_only": True}, {"sandbox": True}):
        with pytest.raises(StoreError, match="no poolcast store at .*db init"):
            open_store(str(target), **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "nope").exists()
    with open_store(str(target)) as made:  # create=True: db init, ingest, generate
        made.init_schema()
    assert target.exists()


def test_a_directory_or_a_foreign_file_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory, not a poolcast store"):
        open_store(str(tmp_path))
    foreign = tmp_path / "notes.duckdb"
    foreign.write_text("hello")
    with pytest.raises(StoreError, match="Is it a poolcast store"):
        open_store(str(foreign), read_only=True)
    assert foreign.read_text() == "hello"


def test_read_only_opens_share_the_file_and_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    with open_store(str(path)) as s:
        s.init_schema()
    before = path.read_bytes()
    # Another process holds the file read-only for a while: a reader here still opens it.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], "
         "read_only=True); print('open', flush=True); time.sleep(30)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with open_store(str(path), read_only=True, create=False) as reader:
            assert reader.schema_version() == latest_version()
            with pytest.raises(Exception, match="read-only"):
                reader.execute("DELETE FROM pools")
    finally:
        holder.kill()
        holder.wait()
    assert path.read_bytes() == before


@pytest.mark.postgres
def test_read_only_postgres_sessions_refuse_writes(store: Store) -> None:
    if store.dialect != "postgres":
        pytest.skip("the embedded case is test_read_only_opens_share_the_file_and_write_nothing")
    with open_store(store.url, read_only=True) as reader:
        assert reader.fetch_arrow("SELECT count(*) AS n FROM pools").to_pylist() == [{"n": 0}]
        with pytest.raises(Exception, match="read-only transaction"):
            reader.execute("INSERT INTO pools (pool_id) VALUES ('x')")


def test_the_database_url_carries_the_servers_ca_to_both_clients() -> None:
    """DB_SSLMODE=verify-full with DB_SSLROOTCERT: psycopg and Spark's JDBC both get the CA file
    (encrypted and the server proven, on the scheduled path as on a laptop)."""
    from poolcast.settings import Settings
    from poolcast.store.spark_io import JdbcTarget

    settings = Settings(db_host="10.0.0.3", db_sslmode="verify-full", db_sslrootcert="/ca/s.pem")
    url = settings.store_url()
    assert url.endswith("?sslmode=verify-full&sslrootcert=/ca/s.pem")
    jdbc = JdbcTarget.from_url(url).url
    assert "sslmode=verify-full" in jdbc and "sslrootcert=%2Fca%2Fs.pem" in jdbc
    assert "?" not in Settings(db_host="10.0.0.3").store_url()


@pytest.mark.parametrize("size", [7, 40])
def test_each_statement_read_in_pool_batches_reads_the_rows_of_one_read(
    demo_store: tuple[Store, Settings], size: int
) -> None:
    """The batch limit sits inside each statement's per-pool groups (``statement``): the batches
    together read exactly the rows, catch-up flags included, of one read of every pool."""
    from poolcast.store import queries as q

    store, settings = demo_store
    # five pools without metrics rows: the daily read takes their whole history (catch-up)
    store.execute(
        "DELETE FROM pool_daily_metrics WHERE pool_id IN "
        "(SELECT pool_id FROM pools ORDER BY pool_id DESC LIMIT 5)"
    )
    as_of = q.latest_data_day(store)
    assert as_of is not None
    window = q.RecomputeWindow(as_of - dt.timedelta(days=3), as_of - dt.timedelta(days=40))
    lookback = settings.lookback_days

    def window_read(b: q.PoolBatch) -> pa.Table:
        rows, catch_up = q.read_window_snapshots(store, window, as_of, lookback, b)
        return rows.append_column("catch_up", pc.is_in(rows["pool_id"], catch_up))

    reads = {
        "snapshots": (lambda b: q.read_snapshots(store, as_of, lookback, b), "timestamp"),
        "window": (window_read, "timestamp"),
        "panel": (lambda b: q.read_panel(store, settings.train_days, 30, b), "date"),
    }
    batches = q.pool_batches(store, size)
    assert len(batches) == -(-99 // size)
    for name, (read, day) in reads.items():
        whole = read(None)
        parts = pa.concat_tables([read(b) for b in batches])
        keys = [("pool_id", "ascending"), (day, "ascending")]
        assert whole.num_rows > 0, name
        assert parts.sort_by(keys).equals(whole.sort_by(keys)), name
        if name == "window":
            assert pc.sum(whole["catch_up"]).as_py() > 0
    for sql in (q.SNAPSHOTS_SQL, q.WINDOW_SNAPSHOTS_SQL, q.PANEL_SQL):
        assert "{batch" in sql and "{batch" not in q.statement(sql, [])[0]
