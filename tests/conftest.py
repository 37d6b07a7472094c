"""Shared fixtures: both stores (a real PostgreSQL server from `make test`), the sample data."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from poolcast.settings import Settings
from poolcast.stages.ingest import ingest
from poolcast.store import Store, open_store

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``pytest -n`` (``make test``), the tests that share the in-process Spark session
    (the ``spark`` fixture) run on one worker, one after another: one JVM with the jars per
    worker. The cluster tests start their own executor JVMs through ``spark-submit`` and need no
    session, so they form a second group that another worker runs beside the first."""
    for item in items:
        if item.get_closest_marker("spark") is None and "spark" not in getattr(
            item, "fixturenames", ()
        ):
            continue
        cluster = item.nodeid.startswith("tests/test_spark_cluster.py")
        item.add_marker(pytest.mark.xdist_group("spark-cluster" if cluster else "spark"))


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


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


def _demo_run(url: str, settings: Settings, as_ofs: tuple[dt.date | None, ...]) -> None:
    """Ingest the sample, then `poolcast run` once per as-of (None: the latest data day), with
    run records, as the CLI does."""
    from poolcast.runs import observed_stage
    from poolcast.stages import forecast_stage, metrics_stage, new_run_id

    with open_store(url) as s:
        s.init_schema()
        ingest(s, [SAMPLE])
        for as_of in as_ofs:
            run = settings.model_copy(update={"as_of": as_of})
            run_id = new_run_id()
            observed_stage(s, "metrics", run, metrics_stage, run_id=run_id)
            observed_stage(s, "forecast", run, forecast_stage, run_id=run_id)


@pytest.fixture(scope="session", params=["duckdb", "postgres"])
def demo_template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, Settings]]:
    """The sample after `make demo` ("demo": one run) and after two daily runs ("daily": as of
    2025-06-04 then 2025-06-05, when most sample pools still report, so the second day scores the
    first day's forecasts), built once per store kind. Tests use copies (`demo_store`,
    `daily_store`)."""
    root = tmp_path_factory.mktemp(f"demo-{request.param}")
    out: dict[str, tuple[str, Settings]] = {}
    daily = (dt.date(2025, 6, 4), dt.date(2025, 6, 5))
    for name, days in (("demo", (None,)), ("daily", daily)):
        settings = Settings(model_dir=str(root / f"models-{name}"))
        if request.param == "duckdb":
            url = str(root / f"{name}.duckdb")
        else:
            import adbc_driver_postgresql.dbapi as pg

            schema = f"tpl_{name}_{uuid.uuid4().hex[:8]}"
            with pg.connect(request.getfixturevalue("pg_url")) as con, con.cursor() as cur:
                cur.execute(f"CREATE SCHEMA {schema}")
                con.commit()
            url = _pg_schema_url(request.getfixturevalue("pg_url"), schema)
        _demo_run(url, settings, days)
        out[name] = (url, settings)
    return out


def _copy_store(url: str, tmp_path: Path, pg_base: str | None) -> str:
    """A private copy of a template store: a file copy, or every table into a new schema."""
    import shutil
    from urllib.parse import unquote

    if not url.startswith("postgresql://"):
        target = tmp_path / "copy.duckdb"
        shutil.copyfile(url, target)
        return str(target)
    import adbc_driver_postgresql.dbapi as pg

    assert pg_base is not None
    source = unquote(url).rsplit("search_path=", 1)[1]
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg.connect(pg_base) as con, con.cursor() as cur:
        cur.execute(
            "SELECT table_name FROM information_schema.tables "
            f"WHERE table_schema = '{source}' AND table_type = 'BASE TABLE'"
        )
        tables = [r[0] for r in cur.fetchall()]
        cur.execute(f"CREATE SCHEMA {schema}")
        for table in tables:
            cur.execute(f"CREATE TABLE {schema}.{table} (LIKE {source}.{table} INCLUDING ALL)")
            cur.execute(f"INSERT INTO {schema}.{table} SELECT * FROM {source}.{table}")
        con.commit()
    return _pg_schema_url(pg_base, schema)


def _template_copy(
    request: pytest.FixtureRequest, template: dict[str, tuple[str, Settings]], name: str,
    tmp_path: Path,
) -> Iterator[tuple[Store, Settings]]:
    url, settings = template[name]
    pg_base = request.getfixturevalue("pg_url") if url.startswith("postgresql://") else None
    s = open_store(_copy_store(url, tmp_path, pg_base))
    yield s, settings
    s.close()


@pytest.fixture
def demo_store(
    request: pytest.FixtureRequest, demo_template: dict[str, tuple[str, Settings]], tmp_path: Path
) -> Iterator[tuple[Store, Settings]]:
    """A private copy of the store `make demo` leaves, of each kind, with its settings."""
    yield from _template_copy(request, demo_template, "demo", tmp_path)


@pytest.fixture
def daily_store(
    request: pytest.FixtureRequest, demo_template: dict[str, tuple[str, Settings]], tmp_path: Path
) -> Iterator[tuple[Store, Settings]]:
    """A private copy of the store after two daily runs (yesterday's forecasts scored)."""
    yield from _template_copy(request, demo_template, "daily", tmp_path)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """``gcp-storage-emulator`` in this process on a free port: the GCS JSON API that the real
    google-cloud-storage client talks to (``STORAGE_EMULATOR_HOST``). Yields its URL."""
    import socket

    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
