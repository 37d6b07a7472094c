"""A PostgreSQL role without superuser rights, for `poolcast sql` (which refuses superusers)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

READER = "poolcast_sql_reader"


def reader_url(url: str) -> str:
    """``url`` (a superuser's, with its schema in search_path) as a read-only LOGIN role that may
    read that schema's tables (the test server trusts local connections: no password)."""
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(url) as con, con.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM pg_roles WHERE rolname = '{READER}'")
        if not cur.fetchone()[0]:
            cur.execute(f"CREATE ROLE {READER} LOGIN NOSUPERUSER")
        cur.execute("SELECT current_schema()")
        schema = cur.fetchone()[0]
        cur.execute(f"GRANT USAGE ON SCHEMA {schema} TO {READER}")
        cur.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {READER}")
        con.commit()
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{READER}@{parts.hostname}:{parts.port}"))
