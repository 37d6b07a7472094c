"""Shared fixtures: both stores (a real PostgreSQL server from `make test`), the sample data."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from poolcast.ingest import ingest
from poolcast.settings import Settings
from poolcast.store import Store, open_store

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The throwaway server that `make test` (scripts/with-postgres.sh) started."""
    url = os.environ.get("POOLCAST_TEST_PG_URL")
    if not url:
        pytest.fail(
            "POOLCAST_TEST_PG_URL is not set: run the suite with `make test`, which starts a "
            "throwaway PostgreSQL server (or scripts/with-postgres.sh pytest ...)"
        )
    return url


def fresh_pg_schema_url(base: str) -> str:
    """A URL whose search_path is a new, empty schema: each test gets its own tables."""
    import adbc_driver_postgresql.dbapi as pg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg.connect(base) as con, con.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
        con.commit()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(params=["duckdb", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store of each kind (parametrized: every test using it runs on both)."""
    if request.param == "duckdb":
        return str(tmp_path / "poolcast.duckdb")
    return fresh_pg_schema_url(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    s.init_schema()
    yield s
    s.close()


@pytest.fixture
def sample_store(store: Store) -> Store:
    """A store of each kind with the shipped sample data ingested."""
    ingest(store, [SAMPLE])
    return store


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(model_dir=str(tmp_path / "models"))
