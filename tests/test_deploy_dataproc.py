"""Dataproc batches against an in-process fake of the Dataproc gRPC API.

The real ``BatchControllerClient`` talks over an insecure channel to a local ``grpc.server`` that
serves ``google.cloud.dataproc.v1.BatchController`` and ``google.longrunning.Operations`` with the
real protobuf messages, so what is asserted here is the request as it arrives on the wire.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections import defaultdict
from concurrent import futures

import pytest

grpc = pytest.importorskip("grpc")
dataproc_v1 = pytest.importorskip("google.cloud.dataproc_v1")

from google.cloud.dataproc_v1.services.batch_controller.transports import (  # noqa: E402
    BatchControllerGrpcTransport,
)
from google.longrunning import operations_pb2  # noqa: E402
from google.protobuf import any_pb2, empty_pb2  # noqa: E402

from poolcast.deploy import dataproc  # noqa: E402
from poolcast.deploy.gcs import Manifest, ManifestFile  # noqa: E402
from poolcast.settings import load_settings  # noqa: E402

State = dataproc_v1.Batch.State
PROJECT, REGION, SHA = "acme-prod", "europe-west1", "0123456789abcdef0123456789abcdef01234567"
BUCKET = f"{PROJECT}-spark-code"
PASSWORD = "pa55-w0rd-xyz"
JARS = [
    "synapseml-lightgbm_2.12-1.1.3.jar",
    "synapseml-core_2.12-1.1.3.jar",
    "lightgbmlib-3.3.510.jar",
    "postgresql-42.7.4.jar",
]


class FakeDataproc:
    """Just enough of Dataproc: batches keyed by name, operations, request-ID idempotency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: dict[str, dataproc_v1.Batch] = {}
        self.operations: dict[str, operations_pb2.Operation] = {}
        self.by_request_id: dict[str, operations_pb2.Operation] = {}
        self.create_requests: list[dataproc_v1.CreateBatchRequest] = []
        self.get_calls = 0
        self.cancelled: list[str] = []
        self.op_gets: list[str] = []
        # scripted behaviour
        self.states: dict[str, list[tuple[int, str]]] = {}
        self.default_states = [(State.PENDING, ""), (State.RUNNING, ""), (State.SUCCEEDED, "")]
        self.faults: dict[str, list[str]] = defaultdict(list)

    # --- BatchController -------------------------------------------------------------------
    def CreateBatch(self, request, context):  # noqa: N802 - gRPC method name
        with self.lock:
            self.create_requests.append(request)
            fault = self.faults["CreateBatch"].pop(0) if self.faults["CreateBatch"] else None
            if fault == "unavailable":
                context.abort(grpc.StatusCode.UNAVAILABLE, "backend unavailable")
            if request.request_id and request.request_id in self.by_request_id:
                return self.by_request_id[request.request_id]
            name = f"{request.parent}/batches/{request.batch_id}"
            if name in self.batches:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{name} already exists")
            op_name = f"projects/{PROJECT}/regions/{REGION}/operations/{uuid.uuid4()}"
            batch = dataproc_v1.Batch(request.batch)
            batch.name = name
            batch.uuid = str(uuid.uuid4())
            batch.operation = op_name
            batch.state = State.PENDING
            self.batches[name] = batch
            meta = dataproc_v1.BatchOperationMetadata(batch=name, batch_uuid=batch.uuid)
            packed = any_pb2.Any()
            packed.Pack(dataproc_v1.BatchOperationMetadata.pb(meta))
            op = operations_pb2.Operation(name=op_name, metadata=packed, done=False)
            self.operations[op_name] = op
            if request.request_id:
                self.by_request_id[request.request_id] = op
        if fault == "unavailable-after-commit":  # the batch exists, the reply is lost
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        return op

    def GetBatch(self, request, context):  # noqa: N802
        with self.lock:
            self.get_calls += 1
            fault = self.faults["GetBatch"].pop(0) if self.faults["GetBatch"] else None
            if fault == "unavailable":
                context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
            batch = self.batches.get(request.name)
            if batch is None:
                context.abort(grpc.StatusCode.NOT_FOUND, request.name)
            script = self.states.setdefault(request.name, list(self.default_states))
            state, message = script.pop(0) if len(script) > 1 else script[0]
            batch.state = state
            batch.state_message = message
            batch.runtime_info.output_uri = f"gs://{PROJECT}-spark-staging/out/{batch.uuid}"
            return batch

    # --- google.longrunning.Operations ---------------------------------------------------------
    def GetOperation(self, request, context):  # noqa: N802
        self.op_gets.append(request.name)
        op = self.operations.get(request.name)
        if op is None:
            context.abort(grpc.StatusCode.NOT_FOUND, request.name)
        return op

    def CancelOperation(self, request, context):  # noqa: N802
        self.cancelled.append(request.name)
        for batch in self.batches.values():
            if batch.operation == request.name:
                self.states[batch.name] = [(State.CANCELLING, ""), (State.CANCELLED, "cancelled")]
        return empty_pb2.Empty()


def _handler(fn, request_type, response_serializer):
    deserialize = getattr(request_type, "deserialize", None) or request_type.FromString
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=deserialize, response_serializer=response_serializer
    )


@pytest.fixture
def fake():
    return FakeDataproc()


@pytest.fixture
def client(fake):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    op_ser = operations_pb2.Operation.SerializeToString
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "google.cloud.dataproc.v1.BatchController",
                {
                    "CreateBatch": _handler(
                        fake.CreateBatch, dataproc_v1.CreateBatchRequest, op_ser
                    ),
                    "GetBatch": _handler(
                        fake.GetBatch, dataproc_v1.GetBatchRequest, dataproc_v1.Batch.serialize
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                "google.longrunning.Operations",
                {
                    "GetOperation": _handler(
                        fake.GetOperation, operations_pb2.GetOperationRequest, op_ser
                    ),
                    "CancelOperation": _handler(
                        fake.CancelOperation,
                        operations_pb2.CancelOperationRequest,
                        empty_pb2.Empty.SerializeToString,
                    ),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield dataproc_v1.BatchControllerClient(transport=BatchControllerGrpcTransport(channel=channel))
    channel.close()
    server.stop(grace=None)


def _manifest(with_pydeps: bool = False) -> Manifest:
    files = [
        ManifestFile("jobs/metrics_job.py", "main:metrics", "m1", 10),
        ManifestFile("jobs/forecast_job.py", "main:forecast", "m2", 10),
        ManifestFile("poolcast-0.1.0.zip", "python", "m3", 100),
        *[ManifestFile(f"jars/{j}", "jar", f"j{i}", 1000) for i, j in enumerate(JARS)],
    ]
    if with_pydeps:
        files.append(ManifestFile("pydeps.zip", "archive", "m4", 100))
    return Manifest(
        version=SHA,
        bucket=BUCKET,
        created="2026-11-26T09:00:00Z",
        package_version="0.1.0",
        files=files,
    )


@pytest.fixture
def settings(monkeypatch):
    for var in (
        "PROJECT_ID",
        "GOOGLE_CLOUD_PROJECT",
        "REGION",
        "SPARK_ENVIRONMENT",
        "POOLCAST_MODEL_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DB_HOST", "10.1.2.3")
    monkeypatch.setenv("DB_PASSWORD", PASSWORD)
    s = load_settings()
    s.gcp.project_id = PROJECT
    s.gcp.region = REGION
    s.gcp.db_password_secret = "poolcast-db-password"
    return s


def _submit(client, settings, kind, manifest=None, **kw):
    batch = dataproc.build_batch(settings, kind, manifest or _manifest(), **kw)
    batch_id = dataproc.new_batch_id(kind)
    request_id = dataproc.new_request_id()
    name = dataproc.submit_batch(
        client,
        project_id=PROJECT,
        region=REGION,
        batch=batch,
        batch_id=batch_id,
        request_id=request_id,
        sleep=lambda _s: None,
    )
    return name, batch_id, request_id


# --- the request that arrives ---


def test_driver_gets_project_id_for_monitoring_and_staging(fake, client, settings):
    """Issue 22 item 4: without PROJECT_ID the driver never writes Cloud Monitoring and the
    Spark engine has no gs:// staging default."""
    for kind in ("metrics", "forecast"):
        _submit(client, settings, kind)
    for req in fake.create_requests:
        props = dict(req.batch.runtime_config.properties)
        assert props["spark.dataproc.driverEnv.PROJECT_ID"] == PROJECT


def test_driver_env_uses_the_names_settings_reads(fake, client, settings, monkeypatch):
    """Every driverEnv variable a batch gets is one the driver's load_settings() reads back to
    the value submit had (the seed is POOLCAST_SEED; a bare SEED was ignored)."""
    settings.seed = 7
    settings.train_days = 45
    _submit(client, settings, "forecast")
    props = dict(fake.create_requests[0].batch.runtime_config.properties)
    prefix = "spark.dataproc.driverEnv."
    env = {k[len(prefix) :]: v for k, v in props.items() if k.startswith(prefix)}
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    driver = load_settings()
    assert (driver.seed, driver.train_days, driver.db_host) == (7, 45, "10.1.2.3")
    assert driver.gcp.project_id == PROJECT and driver.db_sslmode == "require"
    assert driver.model_dir == f"gs://{PROJECT}-poolcast-models/models"


@pytest.mark.parametrize("mode", [None, "require", "verify-full"])
def test_batch_database_connection_is_always_encrypted(fake, client, settings, mode):
    """Issue 22 item 5: DB_SSLMODE is always sent (require unless the settings ask for more)."""
    settings.db_sslmode = mode
    _submit(client, settings, "metrics")
    props = dict(fake.create_requests[0].batch.runtime_config.properties)
    assert props["spark.dataproc.driverEnv.DB_SSLMODE"] == (mode or "require")


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer"])
def test_batch_refuses_an_sslmode_that_may_not_encrypt(settings, mode):
    settings.db_sslmode = mode
    with pytest.raises(ValueError, match="unencrypted"):
        dataproc.build_batch(settings, "metrics", _manifest())


def test_metrics_request_arrives_with_runtime_files_jars_properties_and_ids(fake, client, settings):
    name, batch_id, request_id = _submit(client, settings, "metrics")
    assert len(fake.create_requests) == 1
    req = fake.create_requests[0]
    assert req.parent == f"projects/{PROJECT}/locations/{REGION}"
    assert req.batch_id == batch_id and req.request_id == request_id
    assert name == f"{req.parent}/batches/{batch_id}"
    assert re.fullmatch(r"[a-z0-9-]{4,63}", req.batch_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", req.request_id)

    batch = req.batch
    base = f"gs://{BUCKET}/versions/{SHA}/"
    assert batch.runtime_config.version == "1.2"
    assert batch.pyspark_batch.main_python_file_uri == base + "jobs/metrics_job.py"
    assert list(batch.pyspark_batch.python_file_uris) == [base + "poolcast-0.1.0.zip"]
    assert list(batch.pyspark_batch.jar_file_uris) == [base + "jars/" + j for j in JARS]
    assert not list(batch.pyspark_batch.archive_uris)

    props = dict(batch.runtime_config.properties)
    assert "spark.jars.packages" not in props  # no Maven Central from serverless workers
    assert props["spark.dynamicAllocation.enabled"] == "true"
    assert props["spark.dynamicAllocation.maxExecutors"] == "20"
    assert props["spark.executor.cores"] in {"4", "8", "16"}
    assert props["spark.sql.session.timeZone"] == "UTC"
    assert props["spark.dataproc.driverEnv.SPARK_ENVIRONMENT"] == "dataproc"
    assert props["spark.dataproc.driverEnv.POOLCAST_CODE_VERSION"] == SHA
    assert props["spark.dataproc.driverEnv.DB_HOST"] == "10.1.2.3"
    assert props["spark.dataproc.driverEnv.DB_PASSWORD_SECRET"] == (
        f"projects/{PROJECT}/secrets/poolcast-db-password/versions/latest"
    )

    execution = batch.environment_config.execution_config
    assert execution.service_account == f"dataproc-spark-sa@{PROJECT}.iam.gserviceaccount.com"
    assert execution.subnetwork_uri == (
        f"projects/{PROJECT}/regions/{REGION}/subnetworks/dataproc-subnet"
    )
    assert execution.staging_bucket == f"{PROJECT}-spark-staging"
    assert execution.ttl.total_seconds() == 3 * 3600  # batch_spec.BATCH_TTL_S, as the workflow
    assert list(execution.network_tags) == ["poolcast-dataproc"]  # the firewall rule's tag
    assert batch.labels["stage"] == "metrics" and batch.labels["code-version"] == SHA

    # the password never travels: not in properties, args, or anywhere in the request bytes
    assert PASSWORD.encode() not in dataproc_v1.CreateBatchRequest.serialize(req)


def test_forecast_request_has_dynamic_allocation_off_and_fixed_executors(fake, client, settings):
    settings.spark.executor_instances = 6
    _submit(client, settings, "forecast", _manifest(with_pydeps=True), args=["--train-days", "60"])
    batch = fake.create_requests[0].batch
    props = dict(batch.runtime_config.properties)
    assert batch.pyspark_batch.main_python_file_uri.endswith(
        f"/versions/{SHA}/jobs/forecast_job.py"
    )
    assert props["spark.dynamicAllocation.enabled"] == "false"
    assert props["spark.executor.instances"] == "6"
    assert not any(k.startswith("spark.dynamicAllocation.m") for k in props)
    assert list(batch.pyspark_batch.args) == ["--train-days", "60"]
    assert list(batch.pyspark_batch.archive_uris) == [
        f"gs://{BUCKET}/versions/{SHA}/pydeps.zip#pydeps"
    ]
    assert props["spark.executorEnv.PYTHONPATH"] == "./pydeps"


MODEL_DIR_KEY = "spark.dataproc.driverEnv.POOLCAST_MODEL_DIR"


@pytest.mark.parametrize("kind", ["forecast", "metrics"])
def test_batches_keep_models_in_the_models_bucket_by_default(fake, client, settings, kind):
    """A local model dir (the default `models`) would be the driver's disk, gone with the batch."""
    assert not settings.model_dir.startswith("gs://")  # a local folder by default
    _submit(client, settings, kind)
    props = dict(fake.create_requests[0].batch.runtime_config.properties)
    assert props[MODEL_DIR_KEY] == f"gs://{PROJECT}-poolcast-models/models"


def test_forecast_batch_uses_a_gs_model_dir_from_the_settings(fake, client, settings, monkeypatch):
    monkeypatch.setenv("POOLCAST_MODEL_DIR", "gs://acme-ml/poolcast/models/")
    mine = load_settings()
    mine.gcp = settings.gcp
    _submit(client, mine, "forecast")
    props = dict(fake.create_requests[0].batch.runtime_config.properties)
    assert props[MODEL_DIR_KEY] == "gs://acme-ml/poolcast/models"
    # a local folder from the submitting machine's environment is not sent: the default is
    settings.model_dir = "/home/me/models"
    assert dataproc.model_dir(settings) == f"gs://{PROJECT}-poolcast-models/models"


def test_forecast_refuses_dynamic_allocation_and_secrets(settings):
    with pytest.raises(ValueError, match="dynamicAllocation"):
        dataproc.build_batch(
            settings,
            "forecast",
            _manifest(),
            properties={"spark.dynamicAllocation.enabled": "true"},
        )
    with pytest.raises(ValueError, match="Secret Manager"):
        dataproc.build_batch(settings, "metrics", _manifest(), args=["--password", PASSWORD])
    with pytest.raises(ValueError, match="DB_PASSWORD_SECRET"):
        dataproc.build_batch(
            settings,
            "metrics",
            _manifest(),
            properties={"spark.dataproc.driverEnv.DB_PASSWORD": "x"},
        )


def test_batch_ids_are_valid_and_unique_within_one_second():
    import datetime as dt

    now = dt.datetime(2026, 11, 26, 9, 30, 0, tzinfo=dt.UTC)
    ids = {dataproc.new_batch_id("forecast", now=now) for _ in range(2000)}
    assert len(ids) == 2000
    assert all(dataproc.BATCH_ID_RE.fullmatch(i) and len(i) <= 63 for i in ids)
    for bad in ("abc", "Upper-case", "under_score", "-lead", "trail-", "x" * 64):
        with pytest.raises(ValueError):
            dataproc.validate_batch_id(bad)


def test_create_retried_after_lost_reply_starts_one_batch(fake, client, settings):
    fake.faults["CreateBatch"] = ["unavailable-after-commit", "unavailable"]
    name, _, request_id = _submit(client, settings, "metrics")
    assert len(fake.create_requests) == 3
    assert {r.request_id for r in fake.create_requests} == {request_id}
    assert list(fake.batches) == [name]


def test_create_of_an_existing_id_is_an_error_on_first_attempt(fake, client, settings):
    batch = dataproc.build_batch(settings, "metrics", _manifest())
    kw = dict(project_id=PROJECT, region=REGION, batch=batch, batch_id="poolcast-dup-1")
    dataproc.submit_batch(client, request_id="r1", **kw)
    with pytest.raises(dataproc.BatchError, match="already exists"):
        dataproc.submit_batch(client, request_id="r2", **kw)


# --- the wait loop ---


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _wait(client, name, clock=None, timeout_s=3600.0):
    clock = clock or FakeClock()
    lines: list[str] = []
    batch = dataproc.wait_for_batch(
        client,
        name,
        timeout_s=timeout_s,
        poll_s=30,
        clock=clock,
        sleep=clock.sleep,
        report=lines.append,
    )
    return batch, lines


def test_wait_pending_running_succeeded(fake, client, settings):
    name, batch_id, _ = _submit(client, settings, "metrics")
    batch, lines = _wait(client, name)
    assert batch.state == State.SUCCEEDED
    assert lines == [f"{batch_id}: PENDING", f"{batch_id}: RUNNING", f"{batch_id}: SUCCEEDED"]


@pytest.mark.parametrize(
    ("final", "message"),
    [(State.FAILED, "Job failed with message [ValueError: bad pool]"), (State.CANCELLED, "")],
)
def test_wait_failed_and_cancelled_raise_with_state_message_and_logs(
    fake, client, settings, final, message
):
    name, batch_id, _ = _submit(client, settings, "forecast")
    fake.states[name] = [(State.PENDING, ""), (State.RUNNING, ""), (final, message)]
    with pytest.raises(dataproc.BatchFailed) as info:
        _wait(client, name)
    text = str(info.value)
    assert f"ended {final.name}" in text
    assert (message or "no state message") in text
    assert f"gs://{PROJECT}-spark-staging/out/" in text  # driver output
    assert f'resource.labels.batch_id="{batch_id}"' in text  # Cloud Logging query
    assert info.value.batch.state == final


def test_wait_times_out_with_a_clear_message(fake, client, settings):
    name, batch_id, _ = _submit(client, settings, "metrics")
    fake.states[name] = [(State.PENDING, ""), (State.RUNNING, "")]
    clock = FakeClock()
    with pytest.raises(dataproc.BatchTimeout, match="still RUNNING after 300 s") as info:
        _wait(client, name, clock=clock, timeout_s=300)
    assert f"gcloud dataproc batches cancel {batch_id} --region {REGION}" in str(info.value)
    assert clock.now == pytest.approx(300)
    assert fake.get_calls == 11  # t=0, 30, ..., 300: bounded


def test_wait_retries_transient_unavailable(fake, client, settings):
    name, _, _ = _submit(client, settings, "metrics")
    fake.faults["GetBatch"] = ["unavailable", "unavailable"]
    batch, lines = _wait(client, name)
    assert batch.state == State.SUCCEEDED
    assert sum("ServiceUnavailable" in line for line in lines) == 2


def test_wait_on_an_unknown_batch_is_a_clear_error(client):
    name = dataproc.batch_name(PROJECT, REGION, "poolcast-nope-1")
    with pytest.raises(dataproc.BatchError, match="cannot follow .*poolcast-nope-1"):
        _wait(client, name)


def test_operations_are_served_and_cancel_goes_through_the_batch_operation(fake, client, settings):
    batch = dataproc.build_batch(settings, "metrics", _manifest())
    op = client.create_batch(
        parent=dataproc.parent(PROJECT, REGION), batch=batch, batch_id="poolcast-op-test"
    )
    assert op.metadata.batch.endswith("/batches/poolcast-op-test")
    assert op.done() is False  # polled through google.longrunning.Operations/GetOperation
    assert fake.op_gets == [op.operation.name]
    name = op.metadata.batch
    dataproc.cancel_batch(client, name)
    assert fake.cancelled == [op.operation.name]
    with pytest.raises(dataproc.BatchFailed, match="ended CANCELLED"):
        _wait(client, name)


def test_ctrl_c_offers_to_cancel(fake, client, settings, monkeypatch):
    import typer

    from poolcast.deploy import cli

    name, _, _ = _submit(client, settings, "metrics")

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataproc, "wait_for_batch", interrupted)
    monkeypatch.setattr(cli.sys.stdin, "isatty", lambda: True, raising=False)
    asked = []
    monkeypatch.setattr(typer, "confirm", lambda text, default: asked.append(text) or True)
    with pytest.raises(typer.Exit) as info:
        cli.run_and_report(client, name, timeout_s=60, poll_s=1)
    assert info.value.exit_code == 130
    assert asked and fake.cancelled == [fake.batches[name].operation]


# --- the CLI ---


@pytest.fixture
def cli_env(fake, client, monkeypatch):
    from poolcast.deploy import gcs

    monkeypatch.setattr(dataproc, "make_client", lambda region: client)
    monkeypatch.setattr(gcs, "make_client", lambda project: None)
    monkeypatch.setattr(gcs, "latest", lambda _client, bucket: _manifest())
    for var in ("GOOGLE_CLOUD_PROJECT", "REGION", "SPARK_ENVIRONMENT", "DB_PASSWORD_SECRET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PROJECT_ID", PROJECT)
    monkeypatch.setenv("DB_PASSWORD", PASSWORD)


def _invoke(*args):
    from typer.testing import CliRunner

    from poolcast.deploy import cli

    return CliRunner().invoke(cli.submit_app, list(args))


def test_cli_submit_forecast_waits_and_exits_0_on_success(fake, cli_env):
    res = _invoke(
        "forecast",
        "--region",
        REGION,
        "--poll",
        "0",
        "--executor-instances",
        "5",
        "--db-password-secret",
        "poolcast-db-password",
    )
    assert res.exit_code == 0, res.output
    assert "RUNNING" in res.output and "SUCCEEDED after" in res.output
    assert PASSWORD not in res.output
    props = dict(fake.create_requests[0].batch.runtime_config.properties)
    assert props["spark.executor.instances"] == "5"
    assert props["spark.dynamicAllocation.enabled"] == "false"
    assert fake.create_requests[0].parent == f"projects/{PROJECT}/locations/{REGION}"


def test_cli_submit_timeout_is_the_batch_ttl_as_in_the_workflow(fake, cli_env):
    """Issue 22 item 7: the workflow's BATCH_TIMEOUT_SECONDS is both its wait and the ttl;
    submit's --timeout is the same (default 3 h: batch_spec.BATCH_TTL_S)."""
    common = ["--region", REGION, "--poll", "0", "--db-password-secret", "poolcast-db-password"]
    assert _invoke("metrics", *common).exit_code == 0
    assert _invoke("metrics", *common, "--timeout", "7200").exit_code == 0
    ttls = [r.batch.environment_config.execution_config.ttl for r in fake.create_requests]
    assert [t.total_seconds() for t in ttls] == [10800, 7200]


def test_cli_submit_model_dir(fake, cli_env, monkeypatch):
    monkeypatch.delenv("POOLCAST_MODEL_DIR", raising=False)
    res = _invoke("forecast", "--region", REGION, "--no-wait")
    assert res.exit_code == 0, res.output
    res = _invoke("forecast", "--region", REGION, "--no-wait", "--model-dir", "gs://acme-ml/m")
    assert res.exit_code == 0, res.output
    dirs = [dict(r.batch.runtime_config.properties)[MODEL_DIR_KEY] for r in fake.create_requests]
    assert dirs == [f"gs://{PROJECT}-poolcast-models/models", "gs://acme-ml/m"]
    res = _invoke("forecast", "--region", REGION, "--no-wait", "--model-dir", "models")
    assert res.exit_code == 1 and "must be a gs:// folder" in res.output
    assert len(fake.create_requests) == 2


def test_cli_submit_exits_1_with_the_state_message_on_failure(fake, cli_env):
    fake.default_states = [(State.RUNNING, ""), (State.FAILED, "Job failed: no pools")]
    res = _invoke("metrics", "--region", REGION, "--poll", "0")
    assert res.exit_code == 1
    assert "ended FAILED: Job failed: no pools" in res.output
    assert "resource.labels.batch_id" in res.output


def test_cli_submit_without_password_secret_warns_and_never_sends_the_password(fake, cli_env):
    res = _invoke("metrics", "--region", REGION, "--no-wait")
    assert res.exit_code == 0, res.output
    assert "never sent to a batch" in res.output
    raw = dataproc_v1.CreateBatchRequest.serialize(fake.create_requests[0])
    assert PASSWORD.encode() not in raw and b"DB_PASSWORD_SECRET" not in raw
