"""PostgreSQL, the store of record: Arrow in and out through ADBC (binary COPY), not row by row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import pyarrow as pa

from poolcast.log import first_line
from poolcast.store._base import Store, StoreError, StoreUnavailable

# Connect failures that no retry fixes: the server answered and said no.
_PERMANENT = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "invalid",
    "sslmode",
    "SSL is not enabled",
    "does not support SSL",
    "certificate",
)


# Roles whose rights a query could use to reach the server's files or programs, or (through
# set_config('role', ...)) a superuser's: `poolcast sql` does not run for their members.
_PRIVILEGED_SQL = """
SELECT r.rolname FROM pg_roles AS r
WHERE pg_has_role(session_user, r.oid, 'MEMBER')
  AND (r.rolsuper OR r.rolname IN
       ('pg_read_server_files', 'pg_write_server_files', 'pg_execute_server_program'))
ORDER BY r.rolsuper DESC, r.rolname
LIMIT 1
"""


def _server_message(exc: BaseException) -> str:
    """The server's own words from an ADBC error, without the driver's prefix."""
    reason = first_line(exc)
    return reason.split("ERROR:", 1)[1].strip() if "ERROR:" in reason else reason


class PostgresStore(Store):
    """``read_only``: every transaction of the session is read-only (the commands that only
    read open it so)."""

    dialect = "postgres"

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        super().__init__()
        self.url = url
        self.read_only = read_only
        self._con = self._connect()

    def _connect(self) -> pg.Connection:
        try:
            con = pg.connect(self.url)
        except Exception as exc:  # noqa: BLE001 - ADBC raises its own hierarchy
            reason = first_line(exc)
            kind = StoreError if any(p in reason for p in _PERMANENT) else StoreUnavailable
            raise kind(
                f"cannot connect to PostgreSQL at {self.safe_url()}: {reason}. "
                "Check DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD or --store."
            ) from None
        with con.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            if self.read_only:
                cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        con.commit()
        return con

    def reconnect(self) -> None:
        self.close()
        self._depth = 0
        self._con = self._connect()

    def _cursor(self) -> pg.Cursor:
        return self._con.cursor()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        counted = bool(params) and sql.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE")
        if counted:
            # libpq reports no row count for prepared statements with parameters.
            sql = f"WITH _changed AS ({sql} RETURNING 1) SELECT count(*) FROM _changed"
        with self._cursor() as cur:
            cur.execute(sql, parameters=list(params) if params else None)
            count = cur.fetchone()[0] if counted else cur.rowcount
        if not self._depth:
            self._con.commit()
        return int(count) if count is not None else -1

    def fetch_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        with self._cursor() as cur:
            cur.execute(sql, parameters=list(params) if params else None)
            table = cur.fetch_arrow_table()
        if not self._depth:
            self._con.commit()
        return table

    def _stage(self, name: str, data: pa.Table) -> None:
        with self._cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
            cur.adbc_ingest(name, data, mode="create", temporary=True)

    def _drop_stage(self, name: str) -> None:
        with self._cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")

    def _begin(self) -> None:
        # ADBC runs every statement inside a transaction until commit(): nothing to start.
        self._con.commit()

    def _commit(self) -> None:
        self._con.commit()
        self.commits += 1

    def _rollback(self) -> None:
        self._con.rollback()

    def close(self) -> None:
        try:
            self._con.close()
        except Exception:  # noqa: BLE001
            pass

    def readonly_query(self, sql: str, timeout_s: float | None = None) -> pa.Table:
        privileged = self.fetch_arrow(_PRIVILEGED_SQL).to_pylist()
        if privileged:
            raise StoreError(
                f"`poolcast sql` does not run as {privileged[0]['rolname']!r} at "
                f"{self.safe_url()}: a superuser (or a member of pg_read_server_files and the "
                "like) could read the server's files or take a superuser's rights from inside "
                "a query. Connect as a role without them, e.g. one made by "
                "`poolcast db grant ROLE --create`"
            )
        try:
            with self._cursor() as cur:
                cur.execute("SET TRANSACTION READ ONLY")
                millis = int(timeout_s * 1000) if timeout_s else 0
                cur.execute(f"SET LOCAL statement_timeout = {millis}")
                cur.execute(f"SET LOCAL lock_timeout = {millis}")
                # As a subquery only a query fits: no COPY, no DDL, no data-modifying WITH
                # (PostgreSQL allows those at the top level only), and one statement.
                body = sql.strip().rstrip(";")
                cur.execute(f"SELECT * FROM (\n{body}\n) AS poolcast_sql")  # noqa: S608
                return cur.fetch_arrow_table()
        except Exception as exc:  # noqa: BLE001 - ADBC raises its own hierarchy
            reason = _server_message(exc)
            if "statement timeout" in reason or "lock timeout" in reason:
                raise StoreError(
                    f"the query ran longer than {timeout_s:g} s and was stopped: narrow it "
                    "(WHERE, LIMIT) or raise --timeout"
                ) from None
            raise StoreError(reason) from None
        finally:
            self._con.rollback()


__all__ = ["PostgresStore", "StoreError"]
