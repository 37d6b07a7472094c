"""Dataproc Serverless batches for the metrics and forecast stages (plan steps 7 and 11).

* :func:`build_batch` makes the request body: runtime 1.2 (Spark 3.5, Scala 2.12), the entry point,
  package and jars of one uploaded version (never Maven Central: workers have internal IPs only),
  the plan's Spark properties with the ERRATA's fixes (the forecast batch runs with dynamic
  allocation off and a fixed executor count, as SynapseML LightGBM needs), the service account, the
  subnetwork and the staging bucket.
* :func:`new_batch_id` gives a valid (4-63 chars of ``[a-z0-9-]``), unique ID; a ``request_id``
  makes a retried ``create`` idempotent, so a lost reply cannot start two batches.
* :func:`wait_for_batch` polls until SUCCEEDED, FAILED or CANCELLED, or a deadline; transient
  ``UNAVAILABLE``/``DEADLINE_EXCEEDED``/``INTERNAL`` errors are retried until that deadline.

Models: the batch driver's disk goes with the batch, so the driver gets ``POOLCAST_MODEL_DIR``
(:func:`model_dir`): ``gs://<project>-poolcast-models/models`` unless the settings already name a
``gs://`` folder. The forecast batch saves its model there, and the daily mode reuses it from there.

Secrets: the DB password never goes into a batch. The batch gets the *name* of a Secret Manager
secret (``DB_PASSWORD_SECRET``) and the job reads it there (:mod:`poolcast.deploy.secrets`); a
property or argument that contains the password makes :func:`build_batch` refuse.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from poolcast.deploy import batch_spec
from poolcast.deploy.gcs import Manifest, default_model_dir

if TYPE_CHECKING:  # pragma: no cover
    from google.cloud.dataproc_v1 import Batch, BatchControllerClient

    from poolcast.settings import Settings

KINDS = ("metrics", "forecast")

#: Dataproc's rule for batch IDs; we also keep the ends alphanumeric.
BATCH_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,61}[a-z0-9]$")

#: Re-exported: the batch definition lives in :mod:`poolcast.deploy.batch_spec`.
BASE_PROPERTIES = batch_spec.BASE_PROPERTIES
METRICS_PROPERTIES = batch_spec.METRICS_PROPERTIES


class BatchError(RuntimeError):
    """A batch did not succeed; ``batch`` is its last known state (``None`` if never created)."""

    def __init__(self, message: str, batch: Batch | None = None) -> None:
        super().__init__(message)
        self.batch = batch


class BatchFailed(BatchError):
    """The batch ended FAILED or CANCELLED."""


class BatchTimeout(BatchError):
    """The batch was still running at the deadline (it keeps running; see the message)."""


def parent(project_id: str, region: str) -> str:
    return f"projects/{project_id}/locations/{region}"


def batch_name(project_id: str, region: str, batch_id: str) -> str:
    return f"{parent(project_id, region)}/batches/{batch_id}"


def new_batch_id(kind: str, *, now: dt.datetime | None = None, prefix: str = "poolcast") -> str:
    """``poolcast-<kind>-<UTC yyyymmdd-hhmmss>-<8 random hex>``: sortable, and two submits in
    the same second still differ (the plan's ``name + unix seconds`` did not)."""
    now = now or dt.datetime.now(dt.UTC)
    batch_id = f"{prefix}-{kind}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}".lower()
    return validate_batch_id(batch_id)


def validate_batch_id(batch_id: str) -> str:
    if not BATCH_ID_RE.fullmatch(batch_id):
        raise ValueError(
            f"invalid batch ID {batch_id!r}: 4-63 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )
    return batch_id


def new_request_id() -> str:
    """A request ID (at most 40 chars of ``[A-Za-z0-9_-]``): the same one on every retry."""
    return uuid.uuid4().hex


def service_account(settings: Settings) -> str:
    gcp = settings.gcp
    return gcp.service_account or f"dataproc-spark-sa@{gcp.project_id}.iam.gserviceaccount.com"


def subnetwork_uri(settings: Settings) -> str:
    gcp = settings.gcp
    if "/" in gcp.subnetwork:
        return gcp.subnetwork
    return f"projects/{gcp.project_id}/regions/{gcp.region}/subnetworks/{gcp.subnetwork}"


def model_dir(settings: Settings) -> str:
    """Where a batch saves and looks for forecast models: ``settings.model_dir`` when it is a
    ``gs://`` folder, else the models bucket's ``gs://<project>-poolcast-models/models`` (a local
    folder would be on the driver's disk, which is gone when the batch ends)."""
    configured = str(settings.model_dir or "").strip()
    if configured.startswith("gs://") and len(configured) > len("gs://"):
        return configured.rstrip("/")
    if not settings.gcp.project_id:
        raise ValueError("no GCP project: pass --project or set PROJECT_ID")
    return default_model_dir(settings.gcp.project_id)


def db_sslmode(settings: Settings) -> str:
    """The batch's ``DB_SSLMODE``: the settings' if it encrypts, else ``require``; a mode that
    may send the connection in clear (``disable``, ``allow``, ``prefer``) is refused."""
    mode = settings.db_sslmode or batch_spec.DEFAULT_DB_SSLMODE
    if mode not in batch_spec.ENCRYPTED_SSLMODES:
        raise ValueError(
            f"DB_SSLMODE={mode} would let a batch talk to the database unencrypted: use one of "
            + ", ".join(batch_spec.ENCRYPTED_SSLMODES)
        )
    return mode


def job_environment(settings: Settings, manifest: Manifest) -> dict[str, str]:
    """Environment of the batch driver: where the store is, which code, where the password is,
    where the models are kept (``POOLCAST_MODEL_DIR``, read by ``Settings.model_dir``), and the
    project (``PROJECT_ID``: Cloud Monitoring and the gs:// staging default need it)."""
    env = {
        "SPARK_ENVIRONMENT": "dataproc",
        "POOLCAST_CODE_VERSION": manifest.version,
        "PROJECT_ID": str(settings.gcp.project_id),
    }
    for name, attribute in batch_spec.CONFIGURED_ENV.items():
        value = getattr(settings, attribute)
        if value is not None:
            env[name] = str(value)
    env["DB_SSLMODE"] = db_sslmode(settings)
    if settings.gcp.db_password_secret:
        env["DB_PASSWORD_SECRET"] = secret_version_name(settings)
    env["POOLCAST_MODEL_DIR"] = model_dir(settings)
    return env


def secret_version_name(settings: Settings) -> str:
    """``projects/P/secrets/NAME/versions/latest`` from a bare name or a full resource name."""
    name = settings.gcp.db_password_secret or ""
    if name.startswith("projects/"):
        return name if "/versions/" in name else f"{name}/versions/latest"
    return f"projects/{settings.gcp.project_id}/secrets/{name}/versions/latest"


def batch_properties(
    settings: Settings,
    kind: str,
    manifest: Manifest,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``runtimeConfig.properties``: the Spark engine's batch properties plus deployment ones."""
    from poolcast.engines._spark_session import batch_properties as engine_properties

    if kind not in KINDS:
        raise ValueError(f"unknown batch kind {kind!r}: one of {', '.join(KINDS)}")
    training = kind == "forecast"
    props = dict(batch_spec.BASE_PROPERTIES)
    if not training:
        props.update(batch_spec.METRICS_PROPERTIES)
    # The engine's own rules win over our defaults (dynamic allocation off for training).
    props.update(engine_properties(settings, training=training))
    for key, value in job_environment(settings, manifest).items():
        props[f"spark.dataproc.driverEnv.{key}"] = value
    # Always: a missing ./pydeps on the path is harmless, and the workflow sets it the same way.
    props.update(batch_spec.PYDEPS_PROPERTIES)
    props.update(extra or {})
    if training and props.get("spark.dynamicAllocation.enabled", "").lower() != "false":
        raise ValueError(
            "the forecast batch must run with spark.dynamicAllocation.enabled=false "
            "(SynapseML LightGBM hangs under dynamic allocation)"
        )
    return props


def _refuse_secrets(settings: Settings, props: Mapping[str, str], args: Sequence[str]) -> None:
    for key in props:
        upper = key.upper()
        if "PASSWORD" in upper and not upper.endswith("PASSWORD_SECRET"):
            raise ValueError(f"refusing to put {key} in batch properties: use DB_PASSWORD_SECRET")
    if settings.db_password is None:
        return
    secret = settings.db_password.get_secret_value()
    if secret and (any(secret in v for v in props.values()) or any(secret in a for a in args)):
        raise ValueError(
            "the DB password would end up in the batch request: it must come from Secret Manager"
        )


def build_batch(
    settings: Settings,
    kind: str,
    manifest: Manifest,
    *,
    args: Sequence[str] = (),
    properties: Mapping[str, str] | None = None,
    ttl_s: int = batch_spec.BATCH_TTL_S,
    labels: Mapping[str, str] | None = None,
) -> Batch:
    """The ``Batch`` body for one stage of one uploaded version."""
    from google.cloud import dataproc_v1
    from google.protobuf import duration_pb2

    gcp = settings.gcp
    if not gcp.project_id:
        raise ValueError("no GCP project: pass --project or set PROJECT_ID")
    props = batch_properties(settings, kind, manifest, properties)
    _refuse_secrets(settings, props, args)
    return dataproc_v1.Batch(
        pyspark_batch=dataproc_v1.PySparkBatch(
            main_python_file_uri=manifest.main_uri(kind),
            python_file_uris=manifest.uris("python"),
            jar_file_uris=manifest.uris("jar"),
            archive_uris=[f"{u}#pydeps" for u in manifest.uris("archive")],
            args=list(args),
        ),
        runtime_config=dataproc_v1.RuntimeConfig(version=gcp.runtime_version, properties=props),
        environment_config=dataproc_v1.EnvironmentConfig(
            execution_config=dataproc_v1.ExecutionConfig(
                service_account=service_account(settings),
                subnetwork_uri=subnetwork_uri(settings),
                staging_bucket=f"{gcp.project_id}-spark-staging",
                ttl=duration_pb2.Duration(seconds=ttl_s),
                network_tags=[batch_spec.NETWORK_TAG],
            )
        ),
        labels={**batch_spec.labels(kind, manifest.version), **(labels or {})},
    )


def make_client(region: str) -> BatchControllerClient:
    """A client for the regional Dataproc endpoint (batches live in a region)."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import dataproc_v1

    return dataproc_v1.BatchControllerClient(
        client_options=ClientOptions(api_endpoint=f"{region}-dataproc.googleapis.com:443")
    )


def _transient() -> tuple[type[Exception], ...]:
    from google.api_core import exceptions as gexc

    return (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError)


def submit_batch(
    client: BatchControllerClient,
    *,
    project_id: str,
    region: str,
    batch: Batch,
    batch_id: str,
    request_id: str,
    attempts: int = 5,
    backoff_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    report: Callable[[str], None] = lambda _msg: None,
) -> str:
    """Create the batch; retry transient errors with the *same* request ID. Returns its name.

    If a retried create finds the batch already there (the first attempt did reach Dataproc),
    that batch is ours: the ID is random, so we carry on with it instead of failing.
    """
    from google.api_core import exceptions as gexc
    from google.cloud import dataproc_v1

    validate_batch_id(batch_id)
    request = dataproc_v1.CreateBatchRequest(
        parent=parent(project_id, region), batch=batch, batch_id=batch_id, request_id=request_id
    )
    name = batch_name(project_id, region, batch_id)
    for attempt in range(1, attempts + 1):
        try:
            client.create_batch(request=request, retry=None)
            return name
        except gexc.AlreadyExists as exc:
            if attempt == 1:
                raise BatchError(f"could not create {name}: it already exists") from exc
            return name
        except _transient() as exc:
            if attempt == attempts:
                raise BatchError(f"could not create {name}: {exc}") from exc
            report(f"create {batch_id}: {exc.__class__.__name__}, retrying ({attempt}/{attempts})")
            sleep(backoff_s * attempt)
        except gexc.GoogleAPICallError as exc:  # permission, invalid argument, quota: final
            raise BatchError(f"could not create {name}: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def log_hints(batch_name_: str, batch: Batch | None = None) -> str:
    """Where to look: driver output in GCS, Cloud Logging, and the console page."""
    parts = batch_name_.split("/")
    project, region, batch_id = parts[1], parts[3], parts[5]
    lines = []
    if batch is not None and batch.runtime_info.output_uri:
        lines.append(f"  driver output: {batch.runtime_info.output_uri}")
    lines.append(
        '  logs: gcloud logging read \'resource.type="cloud_dataproc_batch" AND '
        f'resource.labels.batch_id="{batch_id}"\' --project {project}'
    )
    lines.append(
        f"  console: https://console.cloud.google.com/dataproc/batches/{region}/{batch_id}"
        f"?project={project}"
    )
    return "\n".join(lines)


def wait_for_batch(
    client: BatchControllerClient,
    name: str,
    *,
    timeout_s: float,
    poll_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    report: Callable[[str], None] = lambda _msg: None,
) -> Batch:
    """Poll ``name`` until a final state; return it on SUCCEEDED, raise otherwise."""
    from google.api_core import exceptions as gexc
    from google.cloud import dataproc_v1

    State = dataproc_v1.Batch.State
    deadline = clock() + timeout_s
    last_state = None
    batch = None
    while True:
        try:
            batch = client.get_batch(name=name, retry=None, timeout=max(5.0, min(60.0, poll_s)))
        except _transient() as exc:
            report(f"{name.rsplit('/', 1)[-1]}: {exc.__class__.__name__} from Dataproc, retrying")
        except gexc.GoogleAPICallError as exc:  # not found, permission denied: no use waiting
            raise BatchError(f"cannot follow {name}: {exc}", batch) from exc
        else:
            if batch.state != last_state:
                last_state = batch.state
                message = f" ({batch.state_message})" if batch.state_message else ""
                report(f"{name.rsplit('/', 1)[-1]}: {batch.state.name}{message}")
            if batch.state == State.SUCCEEDED:
                return batch
            if batch.state in (State.FAILED, State.CANCELLED):
                raise BatchFailed(
                    f"Dataproc batch {name} ended {batch.state.name}: "
                    f"{batch.state_message or 'no state message'}\n{log_hints(name, batch)}",
                    batch,
                )
        if clock() >= deadline:
            state = batch.state.name if batch is not None else "unknown"
            batch_id, region = name.rsplit("/", 1)[-1], name.split("/")[3]
            raise BatchTimeout(
                f"Dataproc batch {name} is still {state} after {timeout_s:.0f} s; it keeps "
                f"running (its ttl ends it). Cancel it with: gcloud dataproc batches cancel "
                f"{batch_id} --region {region}\n{log_hints(name, batch)}",
                batch,
            )
        sleep(min(poll_s, max(0.0, deadline - clock())))


def cancel_batch(client: BatchControllerClient, name: str) -> None:
    """Ask Dataproc to cancel the batch (through its long-running operation)."""
    from google.longrunning import operations_pb2

    batch = client.get_batch(name=name)
    if not batch.operation:
        raise BatchError(f"{name} has no operation to cancel", batch)
    client.cancel_operation(request=operations_pb2.CancelOperationRequest(name=batch.operation))
