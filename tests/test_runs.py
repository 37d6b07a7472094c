"""Run records, structured logs, progress and Cloud Monitoring, on both stores.

Monitoring is checked against an in-process fake of the MetricService gRPC API: the real
``MetricServiceClient`` sends real protobuf requests over an insecure channel to a local server.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.metric_service.transports import (
    MetricServiceGrpcTransport,
)
from google.protobuf import empty_pb2
from typer.testing import CliRunner

from poolcast import runs
from poolcast.cli import app
from poolcast.log import Progress, event, setup_logging
from poolcast.runs import RunRecord, observed_stage, recent_runs, scrub, write_record
from poolcast.settings import Settings
from poolcast.stages import StageResult, metrics_stage
from poolcast.store import Store, open_store

PROJECT = "acme-prod"


@pytest.fixture
def logs() -> io.StringIO:
    """poolcast's log lines, as JSON (a StringIO is not a terminal)."""
    stream = io.StringIO()
    setup_logging(stream)
    yield stream
    setup_logging(sys.stderr)


def _events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_successful_stage_is_recorded(sample_store: Store, settings: Settings, logs) -> None:
    result = observed_stage(sample_store, "metrics", settings, metrics_stage, run_id="r1")
    [row] = recent_runs(sample_store)
    assert row["run_id"] == "r1" and row["stage"] == "metrics" and row["status"] == "succeeded"
    assert row["engine"] == "local" and row["version"]
    assert (row["rows_read"], row["rows_written"]) == (result.rows_read, result.rows_written)
    assert row["rows_written"] > 16_000
    assert row["details"]["as_of"] == "2025-11-13"
    assert row["parameters"]["lookback_days"] == 365
    assert row["finished_at"] >= row["started_at"] and row["error"] is None
    names = [e["event"] for e in _events(logs)]
    assert names == ["stage.started", "stage.succeeded"]
    assert _events(logs)[1]["rows_written"] == result.rows_written


def test_details_never_clash_with_the_record(store: Store, settings: Settings, logs) -> None:
    def stage(_store: Store, _settings: Settings) -> StageResult:
        return StageResult("metrics", "local", "x", details={"engine": "odd", "seconds": -1})

    observed_stage(store, "metrics", settings, stage, run_id="r0")
    [line] = [e for e in _events(logs) if e["event"] == "stage.succeeded"]
    assert line["engine"] == "local" and line["seconds"] >= 0
    assert recent_runs(store)[0]["details"]["engine"] == "odd"  # kept in the record's details


def test_failed_stage_is_recorded_after_its_rollback(
    sample_store: Store, settings: Settings, logs
) -> None:
    """The stage's write rolls back; the run record of the failure stays."""
    rows = pa.table({"pool_id": ["p"], "date": pa.array([0], pa.int32()).cast(pa.date32())})

    def broken(store: Store, _settings: Settings) -> StageResult:
        with store.transaction():
            store.merge("pool_daily_metrics", rows, ("pool_id", "date"))
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        observed_stage(sample_store, "metrics", settings, broken, run_id="r2")
    count = sample_store.fetch_arrow("SELECT count(*) AS n FROM pool_daily_metrics")
    assert count.column("n")[0].as_py() == 0
    [row] = recent_runs(sample_store)
    assert row["status"] == "failed" and row["error"] == "RuntimeError: disk on fire"
    assert row["rows_written"] is None and row["seconds"] >= 0
    failed = [e for e in _events(logs) if e["event"] == "stage.failed"]
    assert failed and failed[0]["severity"] == "ERROR" and "disk on fire" in failed[0]["error"]


def test_failed_statement_outside_a_transaction_is_still_recorded(
    sample_store: Store, settings: Settings, logs
) -> None:
    """On PostgreSQL a failed statement leaves the connection's transaction aborted."""

    def bad_sql(store: Store, _settings: Settings) -> StageResult:
        store.fetch_arrow("SELECT * FROM no_such_table")
        raise AssertionError("unreachable")

    with pytest.raises(Exception, match="no_such_table"):
        observed_stage(sample_store, "forecast", settings, bad_sql, run_id="r3")
    [row] = recent_runs(sample_store, stage="forecast")
    assert row["status"] == "failed" and "no_such_table" in row["error"]


def test_cli_records_one_row_per_stage(sample_store: Store, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    url = sample_store.url
    sample_store.close()
    out = runner.invoke(app, ["run", "--store", url])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["metrics", "--store", url])
    assert out.exit_code == 0, out.output
    listed = runner.invoke(app, ["runs", "--store", url, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["stage"], r["status"]) for r in rows] == [
        ("metrics", "succeeded"),
        ("forecast", "succeeded"),
        ("metrics", "succeeded"),
    ]
    assert rows[1]["run_id"] == rows[2]["run_id"] != rows[0]["run_id"]  # one id per invocation
    assert rows[1]["details"]["forecasts"] == 99
    table = runner.invoke(app, ["runs", "--store", url, "--stage", "forecast"])
    assert "forecast" in table.stdout and "(1 row)" in table.stdout


def test_cli_records_a_failed_stage(store: Store, tmp_path: Path, monkeypatch) -> None:
    """An empty store: forecast fails with its clear message, and the failure is recorded."""
    monkeypatch.chdir(tmp_path)
    url = store.url
    store.close()
    runner = CliRunner()
    out = runner.invoke(app, ["forecast", "--store", url])
    assert out.exit_code == 1
    assert "run `poolcast metrics` first" in out.stderr
    rows = json.loads(runner.invoke(app, ["runs", "--store", url, "--json"]).stdout)
    assert [(r["stage"], r["status"]) for r in rows] == [("forecast", "failed")]
    assert "run `poolcast metrics` first" in rows[0]["error"]


def test_cli_ingest_is_recorded_with_its_quarantine(
    store: Store, sample_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "pools.json").write_text((sample_dir / "defillama" / "pools.json").read_text())
    pool = json.loads((bad / "pools.json").read_text())["data"][0]["pool"]
    (bad / f"{pool}.json").write_text(json.dumps({"status": "success", "data": [
        {"timestamp": "2025-01-01T23:00:00.000Z", "apy": 5.0, "tvlUsd": 100.0},
        {"timestamp": "2025-01-02T23:00:00.000Z", "apy": "oops", "tvlUsd": 100.0},
    ]}))
    url = store.url
    store.close()
    runner = CliRunner()
    out = runner.invoke(app, ["ingest", "--store", url, str(bad), "--skip-bad"])
    assert out.exit_code == 0, out.output
    [row] = json.loads(runner.invoke(app, ["runs", "--store", url, "--json"]).stdout)
    assert row["stage"] == "ingest" and row["status"] == "succeeded"
    assert row["details"] == {"files": 2, "quarantined": 1, "revised": 0}
    assert row["rows_written"] == row["rows_read"] > 1

    out = runner.invoke(app, ["ingest", "--store", url, str(bad)])  # without --skip-bad: refused
    assert out.exit_code == 1
    rows = json.loads(runner.invoke(app, ["runs", "--store", url, "--json"]).stdout)
    assert rows[0]["stage"] == "ingest" and rows[0]["status"] == "failed"
    assert "apy" in rows[0]["error"]


def test_password_never_recorded() -> None:
    settings = Settings(db_password="s3cr3t-pw")
    text = "cannot connect to postgresql://app:s3cr3t-pw@db:5432/x (password s3cr3t-pw)"
    assert "s3cr3t-pw" not in scrub(text, settings)
    assert "postgresql://app:***@db:5432/x" in scrub(text, settings)


def test_a_killed_run_shows_as_died(store: Store, settings: Settings) -> None:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    record = RunRecord("r9", "metrics", "local", {}, runs._utcnow(), pid=int(proc.stdout))
    write_record(store, record)
    [row] = recent_runs(store)
    assert row["status"] == "died"


def test_logs_are_json_off_a_terminal_and_text_on_one() -> None:
    stream = io.StringIO()
    setup_logging(stream)
    event("stage.started", run_id="abc", stage="metrics")
    line = json.loads(stream.getvalue())
    assert line["event"] == "stage.started" and line["run_id"] == "abc"
    assert line["severity"] == "INFO" and line["ts"].endswith("Z")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    setup_logging(tty)
    event("stage.started", run_id="abc")
    assert tty.getvalue() == "info: stage.started run_id=abc\n"
    setup_logging(sys.stderr)
    assert len([h for h in logging.getLogger("poolcast").handlers if h.get_name()]) == 1


def test_progress_only_on_a_terminal(monkeypatch) -> None:
    quiet = io.StringIO()
    bar = Progress("ingest", total=4, stream=quiet)
    bar.advance(4)
    bar.close()
    assert quiet.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    outer = Progress("metrics", stream=tty)  # a ticker; an inner bar takes the line over
    bar = Progress("ingest", total=4, stream=tty)
    bar.advance(4)
    bar.close()
    outer.close()
    assert "ingest [" in tty.getvalue()
    assert "   0% 0/4" in tty.getvalue() and "] 100% 4/4" in tty.getvalue()
    assert tty.getvalue().startswith("\r\x1b[2Kmetrics running")
    assert tty.getvalue().endswith("\r\x1b[2K")  # the line is cleared for what follows

    steps = Tty()
    bar = Progress("metrics", total=2, stream=steps, doing="reading")
    bar.advance(doing="merging 5 rows")
    bar.close()
    assert "0% 0/2" in steps.getvalue() and steps.getvalue().count("  reading") == 1
    assert "]  50% 1/2" in steps.getvalue() and "  merging 5 rows" in steps.getvalue()


# -- Cloud Monitoring against a fake MetricService ------------------------------------------------
class FakeMetricService:
    """Records CreateTimeSeries requests; can be told to fail."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[monitoring_v3.CreateTimeSeriesRequest] = []
        self.fail = False

    def CreateTimeSeries(self, request, context):  # noqa: N802 - gRPC method name
        with self.lock:
            self.requests.append(request)
        if self.fail:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "monitoring.timeSeries.create denied")
        return empty_pb2.Empty()


@pytest.fixture
def fake() -> FakeMetricService:
    return FakeMetricService()


@pytest.fixture
def metric_client(fake: FakeMetricService):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(
        fake.CreateTimeSeries,
        request_deserializer=monitoring_v3.CreateTimeSeriesRequest.deserialize,
        response_serializer=empty_pb2.Empty.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(
            "google.monitoring.v3.MetricService", {"CreateTimeSeries": handler}
        ),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))
    channel.close()
    server.stop(grace=None)


def _series(request) -> dict[str, tuple[dict, object]]:
    out = {}
    for ts in request.time_series:
        [point] = ts.points
        value = point.value.double_value if "duration" in ts.metric.type else None
        value = point.value.int64_value if value is None else value
        out[ts.metric.type.rsplit("/", 1)[1]] = (dict(ts.metric.labels), value)
        assert ts.resource.type == "global" and ts.resource.labels["project_id"] == PROJECT
        assert point.interval.end_time.timestamp() > 0
    return out


def test_stage_metrics_reach_cloud_monitoring(
    sample_store: Store, settings: Settings, fake, metric_client, logs
) -> None:
    settings.gcp.project_id = PROJECT
    result = observed_stage(
        sample_store, "metrics", settings, metrics_stage, run_id="m1", metric_client=metric_client
    )
    [request] = fake.requests
    assert request.name == f"projects/{PROJECT}"
    series = _series(request)
    assert set(series) == {"job_duration", "records_processed", "records_written", "job_status"}
    labels, duration = series["job_duration"]
    assert labels == {"job_name": "metrics", "engine": "local", "status": "succeeded"}
    assert duration == pytest.approx(result.seconds)
    assert series["records_processed"][1] == result.rows_read
    assert series["records_written"][1] == result.rows_written
    assert series["job_status"][1] == 1


def test_failed_stage_sends_status_zero(
    store: Store, settings: Settings, fake, metric_client, logs
) -> None:
    settings.gcp.project_id = PROJECT
    with pytest.raises(Exception, match="ingest"):
        observed_stage(store, "metrics", settings, metrics_stage, run_id="m2",
                       metric_client=metric_client)
    series = _series(fake.requests[0])
    assert series["job_status"] == (
        {"job_name": "metrics", "engine": "local", "status": "failed"}, 0
    )


def test_monitoring_failure_never_fails_the_stage(
    sample_store: Store, settings: Settings, fake, metric_client, logs
) -> None:
    settings.gcp.project_id = PROJECT
    fake.fail = True
    observed_stage(
        sample_store, "metrics", settings, metrics_stage, run_id="m3", metric_client=metric_client
    )
    assert len(fake.requests) == 1  # tried once, no retry loop holding up the pipeline
    assert recent_runs(sample_store)[0]["status"] == "succeeded"
    [warning] = [e for e in _events(logs) if e["event"] == "monitoring.failed"]
    assert warning["severity"] == "WARNING" and "denied" in warning["error"]


def test_cli_sends_metrics_when_a_project_is_configured(
    sample_store: Store, tmp_path: Path, monkeypatch, fake, metric_client
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROJECT_ID", PROJECT)
    monkeypatch.setattr(runs, "_metric_client", lambda: metric_client)
    url = sample_store.url
    sample_store.close()
    out = CliRunner().invoke(app, ["metrics", "--store", url])
    assert out.exit_code == 0, out.output
    assert [_series(r)["job_status"][0]["job_name"] for r in fake.requests] == ["metrics"]


def test_no_project_no_monitoring(monkeypatch) -> None:
    monkeypatch.setattr(runs, "_metric_client", lambda: pytest.fail("client created"))
    record = RunRecord("x", "metrics", "local", {}, runs._utcnow(), status="succeeded")
    assert runs.send_metrics(record, None) is False


# -- stopped runs (issue 23) ---------------------------------------------------------------------


@pytest.mark.parametrize("commit_first", [False, True], ids=["before-commit", "after-commit"])
def test_a_stopped_stage_is_recorded_by_what_it_committed(
    store: Store, settings: Settings, commit_first: bool
) -> None:
    import signal

    row = pa.table({"pool_id": ["p"], "date": [pa.scalar(0, pa.date32()).as_py()],
                    "actual_apy": [1.0]})

    def stage(s: Store, _: Settings) -> StageResult:
        if commit_first:
            s.merge("pool_daily_metrics", row, ["pool_id", "date"])
        with s.transaction():
            s.merge("pool_daily_metrics", row.set_column(2, "actual_apy", pa.array([2.0])),
                    ["pool_id", "date"])
            raise runs.Stopped(signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        observed_stage(store, "metrics", settings, stage, run_id="r-stop")
    [record] = recent_runs(store, status="stopped")
    assert record["run_id"] == "r-stop" and record["details"] == {"committed": commit_first}
    assert record["error"] == "stopped by SIGTERM" + (
        " after it committed its writes" if commit_first else "; nothing was committed"
    )
    apy = store.fetch_arrow("SELECT actual_apy FROM pool_daily_metrics").column(0).to_pylist()
    assert apy == ([1.0] if commit_first else [])  # the open transaction rolled back
    assert recent_runs(store, status="died") == [] and recent_runs(store, status="running") == []


def test_unknown_status_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown status 'bogus'"):
        recent_runs(store, status="bogus")


_KILLED_AFTER_COMMIT = """
import os, signal, sys
import pyarrow as pa
from poolcast.runs import observed_stage
from poolcast.settings import Settings
from poolcast.store import open_store

store = open_store(sys.argv[1])
row = pa.table({"pool_id": ["p"], "date": [pa.scalar(0, pa.date32()).as_py()],
                "actual_apy": [1.0]})

def stage(s, settings):
    s.merge("pool_daily_metrics", row, ["pool_id", "date"])
    os.kill(os.getpid(), signal.SIGKILL)  # right after the commit, before the record

observed_stage(store, "metrics", Settings(), stage, run_id="r-killed")
"""


def test_a_run_killed_right_after_its_commit_is_recorded_as_committed(store: Store) -> None:
    url = store.url
    store.close()
    child = subprocess.run([sys.executable, "-c", _KILLED_AFTER_COMMIT, url], timeout=60)
    assert child.returncode == -9
    with open_store(url) as s:
        [record] = recent_runs(s)
        assert record["run_id"] == "r-killed" and record["status"] == "committed"
        assert record["details"] == {"committed": True} and record["finished_at"] is None
        assert s.fetch_arrow("SELECT actual_apy FROM pool_daily_metrics").column(0).to_pylist() == [
            1.0
        ]
