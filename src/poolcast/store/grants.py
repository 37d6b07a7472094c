"""A least-privilege PostgreSQL role for the pipeline job (`poolcast db grant`).

The job reads the raw tables and writes only its own: it cannot change what it was given, create
or drop tables, or touch another schema. Ingest is a separate duty (``ingest=True``): it may also
write the raw tables and the quarantine. Tables are found in the store's schema at grant time,
so rerun the grant after `poolcast db init` adds tables.
"""

from __future__ import annotations

from poolcast.store import Store, StoreError, ident

#: What the job reads and never writes: the inputs, the schema version, ingest's own quarantine.
READ_ONLY_TABLES: tuple[str, ...] = (
    "pools",
    "raw_defillama_pool_history",
    "raw_coinmarketcap_ohlcv",
    "gas_fees_daily",
    "ingest_quarantine",
    "raw_snapshot_revisions",
    "schema_migrations",
)
#: What an ingest role writes on top of the job's rights.
INGEST_TABLES: tuple[str, ...] = READ_ONLY_TABLES[:6]


NO_ROLES = (
    "roles exist only on PostgreSQL; the embedded file is protected by its file permissions "
    "(chmod 600, owned by the account that runs the job)"
)


def quote_ident(name: str) -> str:
    """A PostgreSQL quoted identifier, for names the server gave us (schema, database)."""
    if "\x00" in name:
        raise StoreError("identifier contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


def _tables(store: Store) -> list[str]:
    rows = store.fetch_arrow(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
    )
    return [str(t) for t in rows.column("table_name").to_pylist()]


def grant_statements(
    store: Store, role: str, *, ingest: bool = False, spark: bool = False
) -> list[str]:
    """The GRANT statements for ``role`` on the store's current schema.

    ``spark``: the Spark engine stages JDBC writes in tables it creates and drops in the schema
    (executors write on their own connections, so temporary tables cannot serve); the role then
    needs CREATE on the schema. It owns, and can drop, only the tables it creates.
    """
    if store.dialect != "postgres":
        raise StoreError(NO_ROLES)
    role = ident(role)
    info = store.fetch_arrow("SELECT current_schema() AS s, current_database() AS d").to_pylist()[0]
    if info["s"] is None:
        raise StoreError("the connection has no current schema: check search_path")
    schema, database = quote_ident(info["s"]), quote_ident(info["d"])
    tables = _tables(store)
    missing = [t for t in READ_ONLY_TABLES if t not in tables]
    if missing:
        raise StoreError(f"tables {missing} are missing: run `poolcast db init` first")
    own = [t for t in tables if t not in READ_ONLY_TABLES]
    writes = own + (list(INGEST_TABLES) if ingest else [])
    reads = [t for t in READ_ONLY_TABLES if t not in writes]

    def names(ts: list[str]) -> str:
        return ", ".join(f"{schema}.{ident(t)}" for t in ts)

    statements = [
        f"GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT ON {names(reads)} TO {role}",
    ]
    if writes:
        statements.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {names(writes)} TO {role}")
    if spark:
        statements.append(f"GRANT CREATE ON SCHEMA {schema} TO {role}")
    return statements


def grant_job_role(
    store: Store, role: str, *, create: bool = False, ingest: bool = False, spark: bool = False
) -> list[str]:
    """Grant ``role`` the job's rights (creating it as a LOGIN role without a password when asked:
    the DBA sets one with ``\\password``, so it never passes through poolcast)."""
    role = ident(role)
    statements = grant_statements(store, role, ingest=ingest, spark=spark)
    exists = store.fetch_arrow(
        "SELECT count(*) AS n FROM pg_roles WHERE rolname = $1", [role]
    ).column("n")[0].as_py()
    if not exists:
        if not create:
            raise StoreError(f"role {role} does not exist: create it, or pass --create")
        statements.insert(0, f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    with store.transaction():
        for statement in statements:
            store.execute(statement)
    return statements
