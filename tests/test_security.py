"""Nobody gets in who should not: injection strings through every option of the CLI, `poolcast sql`
stays read-only, the DB password appears nowhere we write, the job's role has least privilege,
and TLS to PostgreSQL works as configured."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import typer
from fault_inputs import POOLS, pools_file, small_history, snap, write
from readers import reader_url
from typer.testing import CliRunner

from poolcast.cli import app
from poolcast.settings import Settings
from poolcast.stages import forecast_stage, metrics_stage
from poolcast.stages.ingest import ingest
from poolcast.store import Store, StoreError, open_store, redact_url
from poolcast.store.checksums import DATA_TABLES, row_count, store_checksums

from conftest import fresh_pg_schema_url

INJECTIONS = (
    "x'; DROP TABLE pools; --",
    "1); DELETE FROM raw_defillama_pool_history; --",
    "$1 OR 1=1",
)
RAW_TABLES = ("pools", "raw_defillama_pool_history", "raw_coinmarketcap_ohlcv", "gas_fees_daily")
# GCP commands build API requests, never SQL (their inputs are tested against fakes in
# test_deploy_*); parity starts Spark, generate writes synthetic raw data by design.
NOT_SWEPT = {"deploy", "submit", "parity", "generate"}
# Arguments a command needs before its options are tried.
ARGUMENTS = {("sql",): ["SELECT count(*) AS n FROM pools"], ("db", "grant"): ["poolcast_job"]}

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_stale_log_handler() -> Iterator[None]:
    """The CLI binds its log handler to the stderr CliRunner captured; drop it after the test."""
    yield
    import logging

    logger = logging.getLogger("poolcast")
    for handler in [h for h in logger.handlers if h.get_name() == "poolcast"]:
        logger.removeHandler(handler)


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _sweep_cases() -> list[tuple[tuple[str, ...], str | None]]:
    """Every (command, option) that takes a value; None: the command's own argument."""
    cases: list[tuple[tuple[str, ...], str | None]] = []
    for path, command in _commands(typer.main.get_group(app)):
        if path[0] in NOT_SWEPT:
            continue
        for param in command.params:
            if param.param_type_name == "argument":
                cases.append((path, None))
            elif not getattr(param, "is_flag", False) and param.opts[0].startswith("--"):
                cases.append((path, param.opts[0]))
    return cases


@pytest.fixture
def small_store(store: Store, tmp_path: Path, settings: Settings) -> Store:
    ingest(store, [small_history(tmp_path / "in")])
    metrics_stage(store, settings)
    return store


def test_the_sweep_covers_the_options_users_have() -> None:
    cases = set(_sweep_cases())
    for expected in [
        (("sql",), "--store"),
        (("metrics",), "--as-of"),
        (("ingest",), None),
        (("runs",), "--stage"),
        (("forecast",), "--train-days"),
        (("sql",), None),
    ]:
        assert expected in cases


def test_injection_strings_through_every_cli_option(
    small_store: Store, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # an injected --store or --output lands here as a file name
    monkeypatch.setenv("POOLCAST_MODEL_DIR", str(tmp_path / "models"))
    before = store_checksums(small_store, RAW_TABLES)
    outcomes: dict[int, int] = {}
    for path, option in _sweep_cases():
        for text in (INJECTIONS[0], INJECTIONS[2]):
            args = [*path, *ARGUMENTS.get(path, [])]
            if option is None:
                args = [*path, text]
            if option != "--store":
                args += ["--store", store_url]
            if option is not None:
                args += [option, text]
            result = runner.invoke(app, args)
            assert result.exit_code in (0, 1, 2), (args, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                args,
                repr(result.exception),
            )
            outcomes[result.exit_code] = outcomes.get(result.exit_code, 0) + 1
    assert store_checksums(small_store, RAW_TABLES) == before
    store_checksums(small_store, DATA_TABLES)  # every table is still there
    assert outcomes.get(1, 0) + outcomes.get(2, 0) > 0


def test_injection_strings_in_file_names_pool_ids_and_symbols(
    store: Store, tmp_path: Path, settings: Settings
) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    evil = INJECTIONS[0]
    pools_file(folder, (*POOLS, evil))
    for pool in (*POOLS, evil):
        write(folder, f"{pool}.json", [snap(d, apy=4.0 + d % 3) for d in range(70)])
    quotes = [{"time_open": "2024-06-01T00:00:00Z", "quote": {"USD": {"close": 1.0}}}]
    (folder / "cmc.json").write_text(
        json.dumps({"data": {"symbol": INJECTIONS[1], "quotes": quotes}})
    )
    ingest(store, [folder])
    metrics_stage(store, settings)
    forecast_stage(store, settings)
    pools = store.fetch_arrow("SELECT pool_id FROM pools ORDER BY pool_id").column(0).to_pylist()
    assert evil in pools and len(pools) == 3
    assert store.fetch_arrow("SELECT symbol FROM raw_coinmarketcap_ohlcv").column(
        0
    ).to_pylist() == [INJECTIONS[1]]
    assert row_count(store, "raw_defillama_pool_history") == 210
    forecast_for_evil = (
        store.fetch_arrow(
            "SELECT count(*) AS n FROM pool_daily_metrics "
            "WHERE pool_id = $1 AND forecasted_apy IS NOT NULL",
            [evil],
        )
        .column("n")[0]
        .as_py()
    )
    assert forecast_for_evil == 1


WRITES = [
    "DROP TABLE pools",
    "SELECT 1; DROP TABLE pools",
    "COMMIT; DROP TABLE pools",
    "DELETE FROM pools",
    "WITH d AS (DELETE FROM pools RETURNING *) SELECT * FROM d",
    "INSERT INTO pools (pool_id) VALUES ('x') RETURNING pool_id",
    "UPDATE pools SET is_active = FALSE RETURNING pool_id",
    "CREATE TABLE evil AS SELECT * FROM pools",
    "SELECT * FROM pools; COMMIT; DELETE FROM pools",
    "COPY pools TO '/tmp/poolcast-evil.csv'",
    "ATTACH '/tmp/poolcast-evil.duckdb'",
    "SELECT * FROM query('DROP TABLE pools')",
    "SET default_transaction_read_only = off",
    "SELECT set_config('transaction_read_only', 'off', true), lo_import('/etc/hostname')",
]


def _sql_url(store: Store) -> str:
    """Where `poolcast sql` may run: a role without superuser rights on PostgreSQL; the file,
    closed here first (the sandbox does not share a file with an unconfined connection)."""
    if store.dialect == "postgres":
        return reader_url(store.url)
    store.close()
    return store.url


@pytest.mark.parametrize("statement", WRITES)
def test_sql_command_stays_read_only(small_store: Store, store_url: str, statement: str) -> None:
    before = store_checksums(small_store)
    tables = row_count(small_store, "pools")
    result = runner.invoke(app, ["sql", statement, "--store", _sql_url(small_store)])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    with open_store(store_url) as after:
        assert store_checksums(after) == before and row_count(after, "pools") == tables
        with pytest.raises(Exception):  # noqa: B017 - either store's own "no such table" error
            after.fetch_arrow("SELECT * FROM evil")


# What issue 23 reached from `poolcast sql` on the embedded store: the host's files, the network,
# extension installs, a checkpoint.
HOST_READS = [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM glob('/root/**')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "SELECT * FROM sqlite_scan('/tmp/x.db', 't')",
    "SELECT * FROM read_json_auto('/etc/passwd')",
    "INSTALL httpfs",
    "SELECT * FROM checkpoint()",
    "SELECT current_setting('enable_external_access') AS v, * FROM read_text('/etc/hostname')",
]


@pytest.mark.parametrize("statement", HOST_READS)
def test_sql_on_the_embedded_store_reaches_nothing_but_the_store(
    small_store: Store, statement: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if small_store.dialect != "duckdb":
        pytest.skip("DuckDB's table functions; PostgreSQL's are test_sql_on_postgres_*")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where an extension install would go
    url = _sql_url(small_store)
    before = Path(url).read_bytes()
    result = runner.invoke(app, ["sql", statement, "--store", url])
    if "checkpoint" in statement:  # runs, but a read-only database has nothing to write
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1, result.output
        assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert "root:" not in result.output
    assert not (tmp_path / "home").exists()
    assert Path(url).read_bytes() == before


def test_sql_stops_at_its_timeout(small_store: Store) -> None:
    query = (
        "SELECT count(*) AS n FROM range(1000000000000)"
        if small_store.dialect == "duckdb"
        # set_config cannot lift the timeout of the statement already running
        else "SELECT set_config('statement_timeout', '0', true), pg_sleep(30)"
    )
    url = _sql_url(small_store)
    started = time.monotonic()
    result = runner.invoke(app, ["sql", query, "--store", url, "--timeout", "0.5"])
    assert time.monotonic() - started < 10
    assert result.exit_code == 1, result.output
    assert "ran longer than 0.5 s and was stopped" in result.output
    ok = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM pools", "--store", url])
    assert ok.exit_code == 0 and "(1 row)" in ok.output


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT pg_read_file('/etc/hostname')",
        "SELECT * FROM pg_ls_dir('.')",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
        "SELECT lo_import('/etc/hostname')",
        "SELECT set_config('role', 'postgres', true), "
        "query_to_xml('SELECT pg_read_file(''/etc/hostname'')', true, false, '')",
    ],
)
def test_sql_on_postgres_reaches_no_files_and_no_sessions(pg_url: str, statement: str) -> None:
    url = reader_url(fresh_pg_schema_url(pg_url))
    result = runner.invoke(app, ["sql", statement, "--store", url])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output


@pytest.mark.postgres
def test_sql_refuses_to_run_as_a_superuser(pg_url: str) -> None:
    url = fresh_pg_schema_url(pg_url)  # the test server's superuser
    result = runner.invoke(app, ["sql", "SELECT pg_read_file('/etc/hostname')", "--store", url])
    assert result.exit_code == 1
    assert "does not run as 'postgres'" in result.output and "db grant" in result.output


# -- the password ------------------------------------------------------------------------------


def _with_password(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI in-process (its JSON logs go to the captured stderr); all it printed."""
    result = runner.invoke(app, args, env={"POOLCAST_LOG_FORMAT": "json", **env})
    text = result.stdout + result.stderr + repr(result.exception)
    return result.exit_code, text


@pytest.mark.postgres
def test_password_never_in_output_logs_run_records_or_models(pg_url: str, tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    schema_url = fresh_pg_schema_url(pg_url)
    url = _with_password(schema_url, "postgres", password)  # trust auth: accepted, never needed
    query_url = schema_url + "&password=" + password
    bad_port = _with_password(pg_url, "postgres", password).replace(
        f":{urlsplit(pg_url).port}/", ":1/"
    )
    models = tmp_path / "models"
    env = {"POOLCAST_MODEL_DIR": str(models), "POOLCAST_DB_RETRY_BACKOFF_S": "0.01"}
    data = small_history(tmp_path / "in")
    bad = tmp_path / "bad"
    bad.mkdir()
    write(bad, "pool-a.json", [snap(90, apy="oops")])
    outputs = []
    for args in (
        ["db", "init", "--store", url],
        ["ingest", str(data), "--store", url],
        ["ingest", str(bad), "--skip-bad", "--store", url],
        ["run", "--store", url],
        ["metrics", "--store", query_url],
        ["runs", "--store", url, "--json"],
        ["validate", "--store", url],
        ["sql", "SELECT no_such_column FROM pools", "--store", url],
        ["sql", "SELECT 1 AS one", "--store", query_url],
        ["metrics", "--store", bad_port],
        ["metrics", "--store", "postgresql://127.0.0.1:1/x?password=" + password],
    ):
        code, text = _cli(args, env)
        outputs.append((args[0], code, text))
    # The environment-variable route: DB_HOST/.../DB_PASSWORD.
    parts = urlsplit(pg_url)
    code, text = _cli(
        ["metrics"],
        {
            **env,
            "DB_HOST": str(parts.hostname),
            "DB_PORT": "1",
            "DB_NAME": "x",
            "DB_USER": "postgres",
            "DB_PASSWORD": password,
        },
    )
    outputs.append(("env", code, text))
    assert [code for name, code, _ in outputs[:4]] == [0, 0, 0, 0], outputs
    for name, _, text in outputs:
        assert password not in text, (name, text)
    assert any("***" in text for _, _, text in outputs)  # the URL was shown, masked
    assert any('"event": "stage.succeeded"' in text for _, _, text in outputs)  # logs grepped too
    with open_store(schema_url) as s:
        runs = s.fetch_arrow(
            "SELECT CAST(parameters AS TEXT) AS p, coalesce(error, '') AS e, "
            "CAST(details AS TEXT) AS d FROM pipeline_runs"
        ).to_pylist()
        quarantine = s.fetch_arrow("SELECT * FROM ingest_quarantine").to_pylist()
    assert len(runs) >= 2 and quarantine
    assert password not in json.dumps(runs) and password not in json.dumps(quarantine, default=str)
    files = [p for p in models.rglob("*") if p.is_file()]
    assert files and not any(password in p.read_text(errors="replace") for p in files)


def test_password_never_in_spark_properties_or_batch_requests() -> None:
    from poolcast.deploy import dataproc
    from poolcast.deploy.gcs import Manifest, ManifestFile
    from poolcast.engines._spark_session import batch_properties, session_conf

    password = f"pw-{uuid.uuid4().hex}"
    settings = Settings(
        db_host="db.internal",
        db_password=password,
        db_sslmode="verify-full",
        store=f"postgresql://job:{password}@db.internal/pools",
    )
    settings.gcp.project_id = "proj"
    settings.gcp.db_password_secret = "db-password"
    manifest = Manifest(
        version="abc123",
        bucket="proj-spark-code",
        created="2026-11-26T09:00:00Z",
        package_version="0.1.0",
        files=[
            ManifestFile("jobs/metrics_job.py", "main:metrics", "m1", 10),
            ManifestFile("jobs/forecast_job.py", "main:forecast", "m2", 10),
            ManifestFile("poolcast-0.1.0.zip", "python", "m3", 100),
        ],
    )
    for kind in ("metrics", "forecast"):
        batch = dataproc.build_batch(settings, kind, manifest, args=["--as-of", "2024-06-01"])
        serialized = type(batch).serialize(batch)
        assert password.encode() not in serialized
        assert "DB_PASSWORD_SECRET" in str(batch.runtime_config.properties)
        props = batch_properties(settings, training=kind == "forecast")
        assert password not in json.dumps(props)
        with pytest.raises(ValueError, match="password"):
            dataproc.build_batch(settings, kind, manifest, args=[f"--store={settings.store}"])
    assert password not in json.dumps(session_conf(settings), default=str)
    assert password not in repr(settings) and password not in str(settings)


def test_redact_url_masks_every_password_form() -> None:
    for url in (
        "postgresql://u:p%40ss@h:5432/db",
        "postgresql://u:secret@h/db?sslmode=require",
        "postgresql://u@h/db?password=secret&sslmode=require",
        "postgresql://h/db?sslmode=require&PASSWORD=secret",
    ):
        masked = redact_url(url)
        assert "secret" not in masked and "p%40ss" not in masked and "***" in masked


# -- least privilege ------------------------------------------------------------------------------


@pytest.fixture
def job_role(pg_url: str) -> Iterator[str]:
    role = f"poolcast_job_{uuid.uuid4().hex[:8]}"
    yield role
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(pg_url) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = $1", parameters=[role])
        if cur.fetchone()[0]:
            cur.execute(f"DROP OWNED BY {role}")
            cur.execute(f"DROP ROLE {role}")
        con.commit()


def _as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))


@pytest.mark.postgres
def test_db_grant_gives_the_job_least_privilege(
    pg_url: str, tmp_path: Path, settings: Settings, job_role: str
) -> None:
    owner_url = fresh_pg_schema_url(pg_url)
    with open_store(owner_url) as owner:
        owner.init_schema()
        ingest(owner, [small_history(tmp_path / "in")])
    result = runner.invoke(app, ["db", "grant", job_role, "--create", "--store", owner_url])
    assert result.exit_code == 0, result.output
    assert "GRANT SELECT ON" in result.output and "CREATE ROLE" in result.output
    # Rerunning is harmless; an injected role name is refused before any SQL.
    assert runner.invoke(app, ["db", "grant", job_role, "--store", owner_url]).exit_code == 0
    refused = runner.invoke(app, ["db", "grant", "x; DROP TABLE pools", "--store", owner_url])
    assert refused.exit_code == 1 and "invalid SQL identifier" in refused.output

    job_url = _as_role(owner_url, job_role)
    with open_store(job_url) as job:
        # The job's own work succeeds: metrics, forecast (staging + merge), run records.
        assert metrics_stage(job, settings).rows_written > 0
        assert forecast_stage(job, settings).rows_written > 0
        from poolcast import runs

        runs.observed_stage(job, "metrics", settings, metrics_stage, run_id="as-job")
        before = store_checksums(job, RAW_TABLES)
        for statement in (
            "INSERT INTO pools (pool_id) VALUES ('evil')",
            "DELETE FROM raw_defillama_pool_history",
            "UPDATE gas_fees_daily SET actual_avg_gas_gwei = 0",
            "DROP TABLE pool_daily_metrics",
            "CREATE TABLE evil (x INTEGER)",
            "TRUNCATE pools",
            "ALTER TABLE pool_daily_metrics ADD COLUMN evil INTEGER",
            "INSERT INTO schema_migrations (version, description) VALUES (99, 'evil')",
        ):
            with pytest.raises(Exception, match="permission denied|must be owner"):
                job.execute(statement)
            job._rollback_quietly()
        with pytest.raises(Exception, match="permission denied"):
            ingest(job, [small_history(tmp_path / "more", days=45)])
        job._rollback_quietly()
        assert store_checksums(job, RAW_TABLES) == before

    # An ingest role may also load raw data.
    assert (
        runner.invoke(app, ["db", "grant", job_role, "--ingest", "--store", owner_url]).exit_code
        == 0
    )
    with open_store(job_url) as job:
        report = ingest(job, [small_history(tmp_path / "more", days=45)])
        assert report.written["raw_defillama_pool_history"] == 10

    # The Spark engine's role may create (and drop) its own staging tables, nothing more.
    assert (
        runner.invoke(app, ["db", "grant", job_role, "--spark", "--store", owner_url]).exit_code
        == 0
    )
    with open_store(job_url) as job:
        job.execute("CREATE UNLOGGED TABLE _spark_stage_x AS SELECT * FROM pools WITH NO DATA")
        job.execute("DROP TABLE _spark_stage_x")
        with pytest.raises(Exception, match="must be owner"):
            job.execute("DROP TABLE pool_daily_metrics")


def test_db_grant_on_the_embedded_store_says_why_not(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["db", "grant", "poolcast_job", "--store", str(tmp_path / "x.duckdb")]
    )
    assert result.exit_code == 1 and "only on PostgreSQL" in result.output


# -- TLS -----------------------------------------------------------------------------------------


def _self_signed(cert: Path, key: Path, common_name: str, *extensions: str) -> None:
    """A throwaway one-day self-signed certificate and its unencrypted key."""
    extra = [arg for ext in extensions for arg in ("-addext", ext)]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={common_name}",
            *extra,
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def tls_server(pg_url: str, tmp_path: Path) -> Iterator[Path]:
    """Turn TLS on for the test server with a throwaway CA-less self-signed certificate."""
    data = Path(os.environ.get("POOLCAST_TEST_PG_DATA", ""))
    if not data.is_dir():
        pytest.fail("POOLCAST_TEST_PG_DATA unset: run under scripts/with-postgres.sh")
    cert, key = data / "poolcast-test.crt", data / "poolcast-test.key"
    _self_signed(cert, key, "127.0.0.1", "subjectAltName=IP:127.0.0.1")
    key.chmod(0o600)
    if os.geteuid() == 0:
        import shutil

        shutil.chown(cert, "postgres")
        shutil.chown(key, "postgres")
    client_ca = tmp_path / "ca.crt"
    client_ca.write_bytes(cert.read_bytes())
    _reload_with(
        pg_url,
        [
            f"ALTER SYSTEM SET ssl_cert_file = '{cert}'",
            f"ALTER SYSTEM SET ssl_key_file = '{key}'",
            "ALTER SYSTEM SET ssl = on",
        ],
    )
    yield client_ca
    _reload_with(
        pg_url,
        [
            "ALTER SYSTEM RESET ssl",
            "ALTER SYSTEM RESET ssl_cert_file",
            "ALTER SYSTEM RESET ssl_key_file",
        ],
    )


def _reload_with(pg_url: str, statements: list[str]) -> None:
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(pg_url, autocommit=True) as con, con.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
        cur.execute("SELECT pg_reload_conf()")


@pytest.mark.postgres
def test_sslmode_is_honoured(pg_url: str, tls_server: Path, tmp_path: Path) -> None:
    def uses_tls(url: str) -> bool:
        with open_store(url) as s:
            return bool(
                s.fetch_arrow("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .column(0)[0]
                .as_py()
            )

    parts = urlsplit(pg_url)
    base = Settings(
        db_host=parts.hostname,
        db_port=parts.port,
        db_name=parts.path.lstrip("/"),
        db_user=parts.username or "postgres",
    )
    assert uses_tls(base.model_copy(update={"db_sslmode": "require"}).store_url())
    assert not uses_tls(base.model_copy(update={"db_sslmode": "disable"}).store_url())
    verified = f"{pg_url}?sslmode=verify-full&sslrootcert={tls_server}"
    assert uses_tls(verified)
    # A certificate we do not trust is refused at once (no retry: it will not get better).
    other = tmp_path / "other"
    other.mkdir()
    _self_signed(other / "c", other / "k", "someone-else")
    with pytest.raises(StoreError, match="certificate") as err:
        open_store(f"{pg_url}?sslmode=verify-full&sslrootcert={other / 'c'}")
    assert type(err.value) is StoreError
