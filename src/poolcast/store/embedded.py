"""The embedded default: one DuckDB file, no server, same schema and SQL as PostgreSQL."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from poolcast.store._base import Store, StoreError

_WRITES = re.compile(r"INSERT|DELETE|UPDATE|CREATE|DROP|ALTER|COPY|ATTACH|DETACH|EXPORT|MERGE")


def _plan_operators(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _plan_operators(item)
    elif isinstance(node, dict):
        yield str(node.get("name", ""))
        yield from _plan_operators(node.get("children", []))


class DuckDBStore(Store):
    dialect = "duckdb"

    def __init__(self, path: str, *, read_only: bool = False, wait: bool = False) -> None:
        super().__init__()
        self.url = path
        if path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._con = self._connect(path, read_only, wait)
        self._con.execute("SET TimeZone = 'UTC'")

    @staticmethod
    def _connect(path: str, read_only: bool, wait: bool) -> duckdb.DuckDBPyConnection:
        """DuckDB's file lock lets one process write the file: the second waits or stops here."""
        pause, announced = 0.05, False
        while True:
            try:
                return duckdb.connect(path, read_only=read_only)
            except duckdb.IOException as exc:
                locked = "lock" in str(exc).lower()
                if not (wait and locked):
                    hint = (
                        "Another poolcast process is writing it; wait for it to finish, or set "
                        "POOLCAST_LOCK_WAIT=true to queue behind it."
                        if locked
                        else "Is it a poolcast store (a DuckDB file)?"
                    )
                    raise StoreError(
                        f"cannot open the embedded store {path!r}: {exc}. {hint}"
                    ) from exc
            if not announced:
                import logging

                from poolcast.log import event

                event("lock.waiting", logging.WARNING, store=path, lock="duckdb file")
                announced = True
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        result = self._con.execute(sql, list(params) if params else None)
        try:
            row = result.fetchone()
        except duckdb.Error:
            return -1
        return int(row[0]) if row and isinstance(row[0], int) else -1

    def fetch_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        return self._con.sql(sql, params=list(params) if params else None).to_arrow_table()

    def _stage(self, name: str, data: pa.Table) -> None:
        self._con.register(name, data)

    def _drop_stage(self, name: str) -> None:
        self._con.unregister(name)

    def _begin(self) -> None:
        self._con.execute("BEGIN TRANSACTION")

    def _commit(self) -> None:
        self._con.execute("COMMIT")

    def _rollback(self) -> None:
        self._con.execute("ROLLBACK")

    def close(self) -> None:
        self._con.close()

    def readonly_query(self, sql: str) -> pa.Table:
        statements = duckdb.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise StoreError("`poolcast sql` runs one read-only SELECT statement")
        # A SELECT may still write (WITH d AS (DELETE ... RETURNING *) SELECT ...): refuse any
        # plan with a writing operator; the rollback below is the second line of defence.
        plan = self._con.execute(f"EXPLAIN (FORMAT json) {sql}").fetchall()
        writes = sorted(n for n in _plan_operators(json.loads(plan[0][1])) if _WRITES.search(n))
        if writes:
            raise StoreError(f"`poolcast sql` runs read-only queries; this one would {writes}")
        self._begin()
        try:
            return self._con.sql(sql).to_arrow_table()
        finally:
            self._rollback()
