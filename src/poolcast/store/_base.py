"""What every store does: schema, bulk Arrow reads, staged merges in one transaction.

A store moves tables; it never computes metrics.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import pyarrow as pa

from poolcast.log import redact_url
from poolcast.store._schema import MIGRATIONS

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class StoreError(RuntimeError):
    """A store operation failed; the message says which and what to do."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (down, restarting, network): worth a bounded retry."""


def no_store_message(url: str) -> str:
    """What to say when a command that needs an existing store is pointed at nothing."""
    return (
        f"no poolcast store at {redact_url(url)}: check --store (or POOLCAST_STORE); "
        f"`poolcast db init --store {redact_url(url)}` creates one, as do `poolcast ingest` and "
        "`poolcast generate`"
    )


def ident(name: str) -> str:
    """A validated SQL identifier: we never build SQL from unchecked names."""
    if not _IDENT.match(name):
        raise StoreError(f"invalid SQL identifier {name!r}: use lower-case letters, digits and _")
    return name


class Store(ABC):
    """A connection to the store of record (DuckDB file or PostgreSQL)."""

    dialect: str
    url: str

    def __init__(self) -> None:
        self._depth = 0
        self.commits = 0  # transactions committed: tells a stopped run whether it wrote
        # Called inside each outermost transaction just before it commits (the run record says
        # "committed" atomically with the stage's writes).
        self.before_commit: list[Callable[[], None]] = []

    # -- connection primitives, one per backend ------------------------------------------------
    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        """Run one statement (``$1`` placeholders); returns the affected row count or -1."""

    @abstractmethod
    def fetch_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run one query (``$1`` placeholders) and return the result as Arrow."""

    @abstractmethod
    def _stage(self, name: str, data: pa.Table) -> None:
        """Load ``data`` into a session-private staging table ``name``."""

    @abstractmethod
    def _drop_stage(self, name: str) -> None: ...

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def reconnect(self) -> None:  # noqa: B027 - an embedded file has no connection to lose
        """Replace a broken connection with a fresh one (a server store after a restart)."""

    @abstractmethod
    def readonly_query(self, sql: str, timeout_s: float | None = None) -> pa.Table:
        """Run a user's query in a read-only transaction, stopped after ``timeout_s``."""

    # -- shared behaviour -------------------------------------------------------------------------
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; nested uses join the outer one, so a stage commits all or nothing."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._begin()
        self._depth = 1
        try:
            yield
            for hook in list(self.before_commit):
                hook()
        except BaseException:
            self._depth = 0
            self._rollback()
            raise
        self._depth = 0
        self._commit()

    def schema_version(self) -> int:
        try:
            table = self.fetch_arrow("SELECT max(version) AS v FROM schema_migrations")
        except Exception:  # noqa: BLE001 - no table yet means version 0
            self._rollback_quietly()
            return 0
        value = table.column("v")[0].as_py()
        return int(value or 0)

    def _rollback_quietly(self) -> None:
        if not self._depth:
            try:
                self._rollback()
            except Exception:  # noqa: BLE001
                pass

    def init_schema(self) -> list[int]:
        """Create or upgrade the schema; returns the versions applied (empty when up to date)."""
        applied: list[int] = []
        with self.transaction():
            self.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                "applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            done = {
                r["version"]
                for r in self.fetch_arrow("SELECT version FROM schema_migrations").to_pylist()
            }
            for migration in sorted(MIGRATIONS, key=lambda m: m.version):
                if migration.version in done:
                    continue
                for statement in migration.render(self.dialect):
                    self.execute(statement)
                self.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
                    [migration.version, migration.description],
                )
                applied.append(migration.version)
        return applied

    def require_schema(self) -> None:
        from poolcast.store._schema import latest_version

        version = self.schema_version()
        if version < latest_version():
            raise StoreError(
                f"the store {self.safe_url()} has schema version {version}, "
                f"poolcast needs {latest_version()}: run `poolcast db init`"
            )

    def safe_url(self) -> str:
        """The URL with any password masked, for messages and logs."""
        return redact_url(self.url)

    def merge(
        self,
        target: str,
        data: pa.Table,
        key: Sequence[str],
        *,
        update: Sequence[str] | None = None,
        on_conflict: Literal["update", "ignore"] = "update",
        casts: dict[str, str] | None = None,
    ) -> int:
        """Upsert ``data`` into ``target`` through a staging table, in one transaction.

        Only rows whose values differ are updated, so a rerun on the same data changes nothing.
        Columns not in ``update`` (e.g. forecasts when merging metrics) are left as they are.
        An empty ``key`` appends. Returns the number of rows inserted or changed.
        """
        stage = ident(f"_stage_{ident(target)}"[:63])
        with self.transaction():
            self._stage(stage, data)
            count = self.merge_from(
                target,
                stage,
                data.column_names,
                key,
                update=update,
                on_conflict=on_conflict,
                casts=casts,
            )
            self._drop_stage(stage)
        return count

    def merge_from(
        self,
        target: str,
        source: str,
        columns: Sequence[str],
        key: Sequence[str],
        *,
        update: Sequence[str] | None = None,
        on_conflict: Literal["update", "ignore"] = "update",
        casts: dict[str, str] | None = None,
        where: str | None = None,
        params: Sequence[Any] | None = None,
    ) -> int:
        """``INSERT INTO target SELECT columns FROM source [WHERE where] ON CONFLICT ...``.

        ``where`` is SQL written by poolcast with ``$n`` placeholders for ``params``, not user text.
        """
        target, source = ident(target), ident(source)
        columns = [ident(c) for c in columns]
        key = [ident(k) for k in key]
        casts = casts or {}
        update_cols = [
            ident(c) for c in (update if update is not None else columns) if c not in key
        ]
        select = ", ".join(
            f"CAST(s.{c} AS {casts[c]})" if c in casts else f"s.{c}" for c in columns
        )
        sql = f"INSERT INTO {target} ({', '.join(columns)}) SELECT {select} FROM {source} AS s"  # noqa: S608
        if where:
            sql += f" WHERE {where}"
        if not key:
            pass
        elif on_conflict == "ignore" or not update_cols:
            sql += f" ON CONFLICT ({', '.join(key)}) DO NOTHING"
        else:
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in update_cols)
            changed = " OR ".join(
                f"{target}.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in update_cols
            )
            sql += f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets} WHERE {changed}"
        with self.transaction():
            return self.execute(sql, params)
