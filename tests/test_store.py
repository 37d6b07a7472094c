"""Both stores: schema migrations, staged merges, read-only queries."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from poolcast.store import Store, StoreError, ident
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
    assert store.readonly_query("SELECT count(*) AS n FROM pools").to_pylist() == [{"n": 0}]
    with pytest.raises(Exception):  # noqa: B017 - each database raises its own error class
        store.readonly_query("DELETE FROM pools")
    with pytest.raises(Exception):  # noqa: B017
        store.readonly_query("SELECT 1; DROP TABLE pools")
    assert store.fetch_arrow("SELECT count(*) AS n FROM pools").to_pylist() == [{"n": 0}]


@pytest.mark.parametrize("bad", ["pools; DROP TABLE x", "Pools", "a b", "", "x" * 64, "1abc"])
def test_identifiers_are_validated(bad: str) -> None:
    with pytest.raises(StoreError):
        ident(bad)


def test_store_without_schema_says_what_to_do(store_url: str) -> None:
    from poolcast.store import open_store

    with open_store(store_url) as s, pytest.raises(StoreError, match="poolcast db init"):
        s.require_schema()
