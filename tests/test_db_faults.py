"""PostgreSQL restarted or unreachable in the middle of a stage: a bounded retry on a fresh
connection, then a clean failure recorded as failed; never half-written metrics or forecasts.

The fault is injected at the worst moment: inside the stage's write transaction, just before the
merge into pool_daily_metrics (after the forecasts were staged).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_inputs import small_history

from poolcast import log, runs
from poolcast.settings import Settings
from poolcast.stages import forecast_stage, metrics_stage
from poolcast.stages.ingest import ingest
from poolcast.stages.retry import is_transient
from poolcast.store import Store, StoreUnavailable, open_store
from poolcast.store.checksums import row_count, store_checksums, table_checksum
from poolcast.store.postgres import PostgresStore

from conftest import fresh_pg_schema_url

pytestmark = pytest.mark.postgres


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _pg_ctl(*args: str) -> None:
    ctl, data = os.environ.get("POOLCAST_TEST_PG_CTL"), os.environ.get("POOLCAST_TEST_PG_DATA")
    if not ctl or not data:
        pytest.fail("POOLCAST_TEST_PG_CTL/_DATA unset: run under scripts/with-postgres.sh")
    # The server must not inherit a pipe of ours: its output goes to the server log.
    subprocess.run(
        _as_postgres([ctl, "-D", data, *args]),
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A server of this module's own (the same binaries as scripts/with-postgres.sh): the faults
    below restart and stop it, which on the shared server would cut the connections of the tests
    that another pytest worker runs meanwhile."""
    ctl = os.environ.get("POOLCAST_TEST_PG_CTL")
    if not ctl:
        pytest.fail("POOLCAST_TEST_PG_CTL unset: run under scripts/with-postgres.sh")
    bindir = Path(ctl).parent
    root = Path(tempfile.mkdtemp(prefix="poolcast-pg-faults."))  # not under pytest's 0700 dirs
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data = root / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    quiet = {"check": True, "stdin": subprocess.DEVNULL, "capture_output": True, "timeout": 120}
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                      "--no-sync", "-E", "UTF8"]),
        **quiet,  # type: ignore[call-overload]
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("POOLCAST_TEST_PG_DATA", str(data))
        pg_start(shlex.split(options))
        try:
            subprocess.run(
                [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                 "-qc", "CREATE DATABASE poolcast_test"],
                **quiet,  # type: ignore[call-overload]
            )
            yield f"postgresql://postgres@127.0.0.1:{port}/poolcast_test"
        finally:
            subprocess.run(
                _as_postgres([ctl, "-D", str(data), "-m", "immediate", "stop"]),
                stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
            )
            shutil.rmtree(root, ignore_errors=True)


def _server_log() -> str:
    return str(Path(os.environ["POOLCAST_TEST_PG_DATA"]).parent / "server.log")


def pg_restart() -> None:
    _pg_ctl("restart", "-m", "fast", "-w", "-l", _server_log())


def pg_stop() -> list[str]:
    """Stop the server; returns the options it ran with, for :func:`pg_start`."""
    data = Path(os.environ["POOLCAST_TEST_PG_DATA"])
    argv = shlex.split((data / "postmaster.opts").read_text())
    _pg_ctl("stop", "-m", "fast", "-w")
    return argv[1:]


def pg_start(argv: list[str]) -> None:
    options = [a for i, a in enumerate(argv) if a != "-D" and (i == 0 or argv[i - 1] != "-D")]
    _pg_ctl("start", "-w", "-l", _server_log(), "-o", shlex.join(options))


@pytest.fixture
def pg_store(pg_url: str, tmp_path: Path) -> Iterator[Store]:
    store = open_store(fresh_pg_schema_url(pg_url))
    store.init_schema()
    ingest(store, [small_history(tmp_path / "in", days=60)])
    yield store
    store.close()


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"db_retry_attempts": 3, "db_retry_backoff_s": 0.05, "train_days": 14}
    )


def _fault_before_merge(
    monkeypatch: pytest.MonkeyPatch, fault: Callable[[], Any], times: int, source: str
) -> list[int]:
    """Run ``fault`` before the first ``times`` merges from ``source`` into pool_daily_metrics."""
    calls: list[int] = []
    real = PostgresStore.merge_from

    def merge_from(self: PostgresStore, target: str, src: str, *args: Any, **kw: Any) -> int:
        if target == "pool_daily_metrics" and src.startswith(source) and len(calls) < times:
            calls.append(1)
            fault()
        return real(self, target, src, *args, **kw)

    monkeypatch.setattr(PostgresStore, "merge_from", merge_from)
    return calls


def _record(store: Store, run_id: str) -> dict[str, Any]:
    rows = store.fetch_arrow(
        "SELECT status, error FROM pipeline_runs WHERE run_id = $1", [run_id]
    ).to_pylist()
    assert len(rows) == 1
    return rows[0]


def test_restart_mid_merge_is_retried_and_completes(
    pg_store: Store, fast: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fault_before_merge(monkeypatch, pg_restart, times=1, source="_stage_")
    result = runs.observed_stage(pg_store, "metrics", fast, metrics_stage, run_id="restart1")
    assert calls == [1] and result.rows_written > 0
    assert _record(pg_store, "restart1")["status"] == "succeeded"
    # The retried run wrote the whole result: a clean rerun changes nothing.
    monkeypatch.undo()
    done = table_checksum(pg_store, "pool_daily_metrics")
    assert metrics_stage(pg_store, fast).rows_written == 0
    assert table_checksum(pg_store, "pool_daily_metrics") == done


def test_restart_on_every_attempt_fails_cleanly_without_half_written_forecasts(
    pg_store: Store, fast: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_stage(pg_store, fast)
    before = store_checksums(pg_store)
    calls = _fault_before_merge(monkeypatch, pg_restart, times=99, source="pool_forecasts_staging")
    with pytest.raises(StoreUnavailable, match=r"unreachable on 3 attempt\(s\).*Nothing"):
        runs.observed_stage(pg_store, "forecast", fast, forecast_stage, run_id="restart3")
    assert len(calls) == 3
    monkeypatch.undo()
    pg_store.reconnect()
    assert store_checksums(pg_store) == before  # no forecast, nothing left in staging
    record = _record(pg_store, "restart3")
    assert record["status"] == "failed" and "unreachable on 3 attempt(s)" in record["error"]
    # The next run completes.
    assert forecast_stage(pg_store, fast).rows_written > 0
    assert row_count(pg_store, "pool_forecasts_staging") == 0


def test_server_down_mid_run_gives_a_clean_failure(
    pg_store: Store, fast: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = store_checksums(pg_store)
    stopped: list[list[str]] = []
    _fault_before_merge(monkeypatch, lambda: stopped.append(pg_stop()), times=1, source="_stage_")
    try:
        with pytest.raises(StoreUnavailable) as err:
            metrics_stage(pg_store, fast)
    finally:
        if stopped:
            pg_start(stopped[0])
    assert stopped and is_transient(err.value)
    assert "Connection refused" in str(err.value) or "connect" in str(err.value)
    monkeypatch.undo()
    pg_store.reconnect()
    assert store_checksums(pg_store) == before
    assert metrics_stage(pg_store, fast).rows_written > 0


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(log._JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_unreachable_at_start_is_retried_then_reported(fast: Settings) -> None:
    from poolcast.store import open_configured

    dead = fast.model_copy(update={"store": "postgresql://nobody:s3cret-pw@127.0.0.1:1/none"})
    logger, lines = logging.getLogger("poolcast"), _Lines()
    logger.addHandler(lines)
    try:
        with pytest.raises(StoreUnavailable, match="cannot connect") as err:
            open_configured(dead)
    finally:
        logger.removeHandler(lines)
    assert "s3cret-pw" not in str(err.value) and "nobody:***@" in str(err.value)
    retries = [r for r in lines.records if r.getMessage() == "db.retry"]
    assert len(retries) == fast.db_retry_attempts - 1
    assert not any("s3cret-pw" in lines.format(r) for r in lines.records)


def test_bad_sql_is_not_retried(pg_store: Store, fast: Settings) -> None:
    calls: list[int] = []

    def broken(store: Store, settings: Settings) -> None:
        calls.append(1)
        store.fetch_arrow("SELECT no_such_column FROM pools")

    from poolcast.stages.retry import call_with_retry

    with pytest.raises(Exception, match="no_such_column") as err:
        call_with_retry(broken, pg_store, fast)
    assert calls == [1] and not is_transient(err.value)
