"""The embedded default: one DuckDB file, no server, same schema and SQL as PostgreSQL."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from poolcast.store._base import Store, StoreError, no_store_message

_WRITES = re.compile(r"INSERT|DELETE|UPDATE|CREATE|DROP|ALTER|COPY|ATTACH|DETACH|EXPORT|MERGE")
# `poolcast sql` on DuckDB: the file only, read-only; no file, network or extension access, and
# no way to change that from the query (the configuration is locked after these are set).
SANDBOX_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def _plan_operators(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _plan_operators(item)
    elif isinstance(node, dict):
        yield str(node.get("name", ""))
        yield from _plan_operators(node.get("children", []))


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class DuckDBStore(Store):
    """``read_only``: opened read-only (readers share the file, a writer waits for them);
    ``create``: a missing file is created (only `db init`, `ingest`, `generate` do that);
    ``sandbox``: read-only and confined for `poolcast sql` (see ``SANDBOX_CONFIG``)."""

    dialect = "duckdb"

    def __init__(
        self,
        path: str,
        *,
        read_only: bool = False,
        wait: bool = False,
        create: bool = True,
        sandbox: bool = False,
        memory_limit: str | None = None,
    ) -> None:
        super().__init__()
        self.url = path
        self.sandbox = sandbox
        read_only = read_only or sandbox
        if path != ":memory:":
            target = Path(path).expanduser()
            if target.is_dir():
                raise StoreError(
                    f"{path!r} is a directory, not a poolcast store: give --store a file path "
                    "(e.g. poolcast.duckdb) or a postgresql:// URL"
                )
            if not target.exists():
                if not create or read_only:
                    raise StoreError(no_store_message(path))
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(
                        f"cannot create the embedded store {path!r}: {exc.strerror or exc}: "
                        "choose a writable folder for --store"
                    ) from None
        self.read_only = read_only
        self._con = self._open(path, read_only, wait, sandbox)
        if memory_limit and not sandbox:  # the sandbox's configuration is locked
            try:
                self._con.execute("SET memory_limit = ?", [memory_limit])
            except duckdb.Error as exc:
                self._con.close()
                raise StoreError(
                    f"POOLCAST_DUCKDB_MEMORY={memory_limit!r} is not a memory size DuckDB "
                    f"takes ({_first(exc)}): give e.g. 2GB or 512MB"
                ) from None

    def _open(
        self, path: str, read_only: bool, wait: bool, sandbox: bool
    ) -> duckdb.DuckDBPyConnection:
        config = dict(SANDBOX_CONFIG) if sandbox else {}
        try:
            con = self._connect(path, read_only, wait, config)
        except duckdb.ConnectionException as exc:
            # This process has the file open already with another configuration (a test, or a
            # library user holding a writable store): share that instance, except for the
            # sandbox, which must not run on an unconfined one.
            if "different configuration" not in str(exc) or sandbox:
                raise StoreError(
                    f"cannot open the embedded store {path!r}: {_first(exc)}"
                    + (". Close the other connection to it in this process first." if sandbox
                       else "")
                ) from None
            con = self._connect(path, False, wait, {})
            self.read_only = False
        con.execute("SET TimeZone = 'UTC'")
        if sandbox:
            con.execute("SET lock_configuration = true")
        return con

    @staticmethod
    def _connect(
        path: str, read_only: bool, wait: bool, config: dict[str, Any]
    ) -> duckdb.DuckDBPyConnection:
        """DuckDB's file lock lets one process write the file (or several read it): the next one
        waits or stops here."""
        pause, announced = 0.05, False
        while True:
            try:
                return duckdb.connect(path, read_only=read_only, config=config)
            except duckdb.IOException as exc:
                locked = "lock" in str(exc).lower()
                if not (wait and locked):
                    denied = any(
                        w in str(exc) for w in ("not permitted", "denied", "Read-only")
                    )
                    hint = (
                        "Another poolcast process has it open (a run writing it, or a command "
                        "reading it); wait for it to finish, or set POOLCAST_LOCK_WAIT=true to "
                        "queue behind it."
                        if locked
                        else "It cannot be written here (a read-only file, folder or mount?); "
                        "the commands that only read it (runs, sql, validate, report, "
                        "backtest) still work."
                        if denied and not read_only
                        else "Is it a poolcast store (a DuckDB file) that this account may "
                        "read?"
                    )
                    raise StoreError(
                        f"cannot open the embedded store {path!r}: {_first(exc)}. {hint}"
                    ) from None
            except duckdb.ConnectionException:
                raise
            except duckdb.Error as exc:  # not a DuckDB file, a newer format, corrupt
                raise StoreError(
                    f"cannot open the embedded store {path!r}: {_first(exc)}. Is it a poolcast "
                    "store (a DuckDB file)? Check --store"
                ) from None
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
        # DuckDB holds a registered table until the transaction ends, unregistered or not: every
        # batch of a stage's merge would stay in memory. A reader (the stage is read once) is
        # let go as soon as it has been read.
        self._con.register(name, pa.RecordBatchReader.from_batches(data.schema, _batches(data)))

    def _drop_stage(self, name: str) -> None:
        self._con.unregister(name)

    def _begin(self) -> None:
        self._con.execute("BEGIN TRANSACTION")

    def _commit(self) -> None:
        self._con.execute("COMMIT")
        self.commits += 1

    def _rollback(self) -> None:
        self._con.execute("ROLLBACK")

    def close(self) -> None:
        self._con.close()

    def readonly_query(self, sql: str, timeout_s: float | None = None) -> pa.Table:
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise StoreError(f"the query does not parse: {_first(exc)}") from None
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise StoreError("`poolcast sql` runs one read-only SELECT statement")
        timer = threading.Timer(timeout_s, self._con.interrupt) if timeout_s else None
        try:
            # A SELECT may still write (WITH d AS (DELETE ... RETURNING *) SELECT ...): refuse
            # any plan with a writing operator; read-only mode and the rollback stop the rest.
            plan = self._con.execute(f"EXPLAIN (FORMAT json) {sql}").fetchall()
            ops = _plan_operators(json.loads(plan[0][1]))
            writes = sorted(n for n in ops if _WRITES.search(n))
            if writes:
                raise StoreError(f"`poolcast sql` runs read-only queries; this one would {writes}")
            self._begin()
            if timer:
                timer.start()
            try:
                return self._con.sql(sql).to_arrow_table()
            finally:
                self._rollback()
        except duckdb.InterruptException:
            raise StoreError(
                f"the query ran longer than {timeout_s:g} s and was stopped: narrow it (WHERE, "
                "LIMIT) or raise --timeout"
            ) from None
        except duckdb.PermissionException as exc:
            raise StoreError(
                "`poolcast sql` reads the store only (no files, network or extensions): "
                f"{_first(exc)}"
            ) from None
        except duckdb.Error as exc:
            raise StoreError(_first(exc)) from None
        finally:
            if timer:
                timer.cancel()


def _batches(table: pa.Table) -> Iterator[pa.RecordBatch]:
    yield from table.to_batches()
