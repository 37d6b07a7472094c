"""Run records (``pipeline_runs``) and Cloud Monitoring metrics for each stage.

Observing a run must never change its outcome: a run record or a metric that cannot be written is
logged, and the stage's own result (or its exception) goes on unchanged. A failed stage is recorded
after its own transaction has rolled back, so the record survives the rollback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from poolcast import __version__
from poolcast.log import event, first_line, progress, redact_url

if TYPE_CHECKING:
    from poolcast.settings import Settings
    from poolcast.stages import StageResult
    from poolcast.store import Store

RUNS_TABLE = "pipeline_runs"
RUN_KEY = ("run_id", "stage")
# The plan's custom metrics (Task 5.1), one time series each per stage, engine and status.
METRIC_PREFIX = "custom.googleapis.com/dataproc/"
MONITORING_TIMEOUT_S = 10.0

_RUN_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("stage", pa.string()),
        ("engine", pa.string()),
        ("version", pa.string()),
        ("parameters", pa.string()),
        ("started_at", pa.timestamp("us")),
        ("finished_at", pa.timestamp("us")),
        ("seconds", pa.float64()),
        ("rows_read", pa.int64()),
        ("rows_written", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("details", pa.string()),
        ("host", pa.string()),
        ("pid", pa.int32()),
    ]
)
_JSON_COLUMNS = ("parameters", "details")
# What `poolcast runs --status` can select: the stored statuses and `died` (a `running` record
# whose process is gone). `committed`: the stage's writes committed, with this record in their
# transaction, and the process ended before it could record more (SIGKILL right after a commit).
STATUSES = ("running", "committed", "succeeded", "failed", "stopped", "died")
STAGES = ("ingest", "metrics", "forecast")


class Stopped(KeyboardInterrupt):
    """A signal (SIGTERM, SIGINT) stopped the run: like Ctrl-C, it unwinds every transaction."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def signal_name(exc: BaseException) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


_received: list[int] = []  # the signal that is stopping this process, once one came


def _importing(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def stop_signal() -> int | None:
    """The signal that asked this process to stop (under :func:`signals_stop_runs`), if any:
    a database interrupted by it may raise its own error ("Query interrupted") instead."""
    return _received[0] if _received else None


@contextmanager
def signals_stop_runs() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Stopped` in the main thread: transactions roll back,
    progress lines are cleared, the run record says `stopped`. A second signal while stopping
    is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        if _received:
            return
        if _importing(frame):  # an exception inside a C extension's import aborts the process
            threading.Timer(0.1, os.kill, (os.getpid(), signum)).start()
            return
        _received.append(signum)
        raise Stopped(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        _received.clear()


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (a run record is written whole); in the
    main thread only, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- run records ----------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One row of ``pipeline_runs``: a stage run, from start to success or failure."""

    run_id: str
    stage: str
    engine: str
    parameters: dict[str, Any]
    started_at: dt.datetime
    version: str = __version__
    finished_at: dt.datetime | None = None
    seconds: float | None = None
    rows_read: int | None = None
    rows_written: int | None = None
    status: str = "running"
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        for name in _JSON_COLUMNS:
            out[name] = json.dumps(out[name], default=str, sort_keys=True)
        return out


def run_parameters(settings: Settings, safe_store_url: str) -> dict[str, Any]:
    """The settings that decide a stage's result (never a password)."""
    return {
        "store": safe_store_url,
        "engine": settings.engine,
        "as_of": settings.as_of.isoformat() if settings.as_of else None,
        "lookback_days": settings.lookback_days,
        "train_days": settings.train_days,
        "seed": settings.seed,
        "model_dir": settings.model_dir,
        "model_path": settings.model_path,
        "incremental": settings.incremental,
    }


def scrub(text: str, settings: Settings | None = None) -> str:
    """Mask passwords in URLs and the configured DB password: error text goes to logs and tables."""
    text = redact_url(text)
    secret = settings.db_password.get_secret_value() if settings and settings.db_password else ""
    return text.replace(secret, "***") if secret else text


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def write_record(store: Store, record: RunRecord) -> None:
    """Upsert one run record in its own transaction."""
    json_type = "JSONB" if store.dialect == "postgres" else "JSON"
    data = pa.Table.from_pylist([record.row()], schema=_RUN_SCHEMA)
    store.merge(RUNS_TABLE, data, RUN_KEY, casts=dict.fromkeys(_JSON_COLUMNS, json_type))


def _write_safely(store: Store, record: RunRecord) -> bool:
    """Write the record on ``store``; after a failure (an aborted transaction, a dropped
    connection) on a fresh connection; if that fails too, the log line keeps the record."""
    from poolcast.store import open_store

    try:
        write_record(store, record)
        return True
    except Exception as first:  # noqa: BLE001 - observing must not fail the run
        store._rollback_quietly()
        try:
            with open_store(store.url) as fresh:
                write_record(fresh, record)
            return True
        except Exception as second:  # noqa: BLE001
            event(
                "run_record.lost",
                logging.WARNING,
                error=scrub(f"{type(first).__name__}: {first}; then {second}").splitlines()[0],
                record=record.row(),
            )
            return False


def observed_stage(
    store: Store,
    stage: str,
    settings: Settings,
    fn: Callable[[Store, Settings], StageResult],
    *,
    run_id: str,
    metric_client: Any = None,
) -> StageResult:
    """Run ``fn`` with a ``pipeline_runs`` row (``running``, then ``succeeded``/``failed``),
    structured log lines and, where a GCP project is configured, Cloud Monitoring metrics."""
    record = RunRecord(
        run_id=run_id,
        stage=stage,
        engine=settings.engine,
        parameters=run_parameters(settings, store.safe_url()),
        started_at=_utcnow(),
    )
    with signals_held():
        _write_safely(store, record)
    event("stage.started", run_id=run_id, stage=stage, engine=settings.engine)
    started = time.perf_counter()
    commits = store.commits
    mark = _committed_marker(store, record)
    store.before_commit.append(mark)
    try:
        with progress(stage):
            result = fn(store, settings)
    except BaseException as exc:
        store.before_commit.remove(mark)
        with signals_held():
            _record_end(store, record, settings, exc, started, store.commits > commits)
        send_metrics(record, settings.gcp.project_id, metric_client)
        received = stop_signal()
        if received is not None and not isinstance(exc, KeyboardInterrupt):
            raise Stopped(received) from exc  # the database's "interrupted" is the signal
        raise
    store.before_commit.remove(mark)
    with signals_held():  # a signal now waits until the record says what was committed
        _record_success(store, record, result, started, run_id)
    fields = {
        **result.details,  # the record's own fields win over a detail of the same name
        "run_id": run_id, "stage": stage, "engine": result.engine,
        "seconds": round(record.seconds or 0.0, 3), "rows_read": result.rows_read,
        "rows_written": result.rows_written,
    }
    event("stage.succeeded", **fields)
    send_metrics(record, settings.gcp.project_id, metric_client)
    return result


def _committed_marker(store: Store, record: RunRecord) -> Callable[[], None]:
    """Inside the stage's own transaction, just before it commits: the record says `committed`,
    so a process killed right after the commit is not taken for one that wrote nothing. On
    PostgreSQL a savepoint keeps a failed record write from failing the stage."""

    def mark() -> None:
        committed = replace(record, status="committed", details={**record.details,
                                                                   "committed": True})
        savepoint = store.dialect == "postgres"
        try:
            if savepoint:
                store.execute("SAVEPOINT poolcast_run_record")
            write_record(store, committed)
            if savepoint:
                store.execute("RELEASE SAVEPOINT poolcast_run_record")
        except Exception as exc:  # noqa: BLE001 - observing must not fail the run
            if not savepoint:
                raise  # DuckDB has no savepoints: its transaction cannot go on
            store.execute("ROLLBACK TO SAVEPOINT poolcast_run_record")
            event("run_record.unmarked", logging.WARNING, error=first_line(exc, typed=True))

    return mark


def _record_end(
    store: Store, record: RunRecord, settings: Settings, exc: BaseException, started: float,
    committed: bool,
) -> None:
    """A failed or stopped run's record; a stopped one says whether it had committed."""
    record.finished_at = _utcnow()
    record.seconds = time.perf_counter() - started
    received = stop_signal()
    if isinstance(exc, KeyboardInterrupt) or received is not None:
        name = signal.Signals(received).name if received is not None else signal_name(exc)
        record.status = "stopped"
        record.error = f"stopped by {name}" + (
            " after it committed its writes" if committed else "; nothing was committed"
        )
        record.details = {**record.details, "committed": committed}
    else:
        record.status = "failed"
        record.error = scrub(f"{type(exc).__name__}: {exc}", settings)[:4000]
    _write_safely(store, record)
    event(
        f"stage.{record.status}", logging.ERROR, run_id=record.run_id, stage=record.stage,
        engine=settings.engine, seconds=round(record.seconds, 3), error=record.error,
    )


def _record_success(
    store: Store, record: RunRecord, result: StageResult, started: float, run_id: str
) -> None:
    record.status = "succeeded"
    record.engine = result.engine
    record.finished_at = _utcnow()
    record.seconds = result.seconds or time.perf_counter() - started
    record.rows_read, record.rows_written = result.rows_read, result.rows_written
    record.details = dict(result.details)
    if result.run_id != run_id:
        record.details["stage_run_id"] = result.run_id
    _write_safely(store, record)


_RUNS_SQL = f"""
SELECT run_id, stage, engine, version, CAST(parameters AS TEXT) AS parameters, started_at,
       finished_at, seconds, rows_read, rows_written, status, error,
       CAST(details AS TEXT) AS details, host, pid
FROM {RUNS_TABLE}
"""  # noqa: S608 - constant table name


def recent_runs(
    store: Store, limit: int = 20, *, stage: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """The latest run records, newest first, with JSON columns decoded.

    ``status`` ``died`` selects the ``running`` records whose process is gone, and ``running``
    the others."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}: choose from {', '.join(STATUSES)}")
    stored = "running" if status == "died" else status
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("stage", stage), ("status", stored)):
        if value is not None:
            params.append(value)
            where.append(f"{column} = ${len(params)}")
    sql = _RUNS_SQL + (f" WHERE {' AND '.join(where)}" if where else "")
    params.append(int(limit))
    sql += " ORDER BY started_at DESC, stage DESC"
    if status not in ("running", "died"):  # those two are told apart after the query
        sql += f" LIMIT ${len(params)}"
    else:
        params.pop()
    rows = store.fetch_arrow(sql, params).to_pylist()
    for row in rows:
        for name in _JSON_COLUMNS:
            row[name] = json.loads(row[name]) if row[name] else {}
        if row["status"] == "running" and _dead(row["host"], row["pid"]):
            row["status"] = "died"  # its process is gone: killed before it could record the end
    if status in ("running", "died"):
        rows = [r for r in rows if r["status"] == status][: int(limit)]
    return rows


def runs_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The columns a person scans in ``poolcast runs``."""
    return pa.table(
        {
            "started_at": [r["started_at"].strftime("%Y-%m-%d %H:%M:%S") for r in rows],
            "run_id": [r["run_id"] for r in rows],
            "stage": [r["stage"] for r in rows],
            "engine": [r["engine"] for r in rows],
            "status": [r["status"] for r in rows],
            "seconds": [round(r["seconds"], 2) if r["seconds"] is not None else None for r in rows],
            "rows_read": pa.array([r["rows_read"] for r in rows], pa.int64()),
            "rows_written": pa.array([r["rows_written"] for r in rows], pa.int64()),
            "error": [(r["error"] or "")[:80] for r in rows],
        }
    )


def _dead(host: str | None, pid: int | None) -> bool:
    if host != socket.gethostname() or not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# -- Cloud Monitoring -----------------------------------------------------------------------------
def _metric_client() -> Any:
    from google.cloud import monitoring_v3

    return monitoring_v3.MetricServiceClient()


def time_series(record: RunRecord, project_id: str) -> list[Any]:
    """The plan's job_duration and records_processed, plus job_status (1 succeeded, 0 failed)."""
    from google.cloud import monitoring_v3

    now = time.time()
    end = {"seconds": int(now), "nanos": int((now - int(now)) * 1e9)}
    labels = {"job_name": record.stage, "engine": record.engine, "status": record.status}
    values: list[tuple[str, dict[str, Any]]] = [
        ("job_duration", {"double_value": float(record.seconds or 0.0)}),
        ("records_processed", {"int64_value": int(record.rows_read or 0)}),
        ("records_written", {"int64_value": int(record.rows_written or 0)}),
        ("job_status", {"int64_value": 1 if record.status == "succeeded" else 0}),
    ]
    series = []
    for name, value in values:
        ts = monitoring_v3.TimeSeries()
        ts.metric.type = METRIC_PREFIX + name
        ts.metric.labels.update(labels)
        ts.resource.type = "global"
        ts.resource.labels["project_id"] = project_id
        ts.points = [monitoring_v3.Point({"interval": {"end_time": end}, "value": value})]
        series.append(ts)
    return series


def send_metrics(record: RunRecord, project_id: str | None, client: Any = None) -> bool:
    """Send the run's metrics when a project is configured; a failure is logged, never raised."""
    if not project_id:
        return False
    try:
        client = client or _metric_client()
        client.create_time_series(
            name=f"projects/{project_id}",
            time_series=time_series(record, project_id),
            timeout=MONITORING_TIMEOUT_S,
            retry=None,
        )
    except Exception as exc:  # noqa: BLE001 - monitoring must never fail the pipeline
        event(
            "monitoring.failed", logging.WARNING, run_id=record.run_id, stage=record.stage,
            project_id=project_id, error=first_line(exc, typed=True),
        )
        return False
    event("monitoring.sent", logging.DEBUG, run_id=record.run_id, stage=record.stage)
    return True
