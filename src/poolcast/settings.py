"""One typed settings object: environment variables as the plan names them, CLI flags on top."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal
from urllib.parse import quote

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE = "poolcast.duckdb"

Engine = Literal["local", "spark"]
# libpq's sslmode values; verify-full checks the server certificate and its host name.
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class SparkSettings(BaseModel):
    """The plan's `config_spark` values (Task 2.4), with the ERRATA's versions."""

    environment: Literal["local", "dataproc"] | None = None
    # Where a session started by poolcast runs: `local[N]`, `local-cluster[N,cores,MB]`,
    # `spark://host:7077`, ... (--spark-master, POOLCAST_SPARK_MASTER). A process started by
    # spark-submit (Dataproc) keeps the master it was submitted with.
    master: str = "local[2]"
    # None: 4g under `local[N]`, where the driver JVM also runs every task, and 1g where executors
    # run them (`local-cluster`, a standalone master): there the driver holds no table, only
    # counts, small aggregates and the boosters, and a larger heap just fills with garbage.
    driver_memory: str | None = None
    # None: twice the cores the session has (at least 8), with AQE coalescing small partitions.
    shuffle_partitions: int | None = None
    packages: list[str] = [
        "com.microsoft.azure:synapseml-lightgbm_2.12:1.1.3",
        "org.postgresql:postgresql:42.7.4",
    ]
    jars: list[str] = []  # jar URIs staged in the code bucket (Dataproc: no internet)
    jdbc_partitions: int = 8
    jdbc_batch_size: int = 10_000
    executor_instances: int = 2
    # How Arrow tables reach Spark and back: staged Parquet ("files", fastest; in `staging_dir`,
    # which every executor must read), Arrow batches through the driver ("driver"), or "auto":
    # files where a staging folder is set or the executors share the driver's disk (local modes),
    # else the driver. POOLCAST_SPARK_EXCHANGE.
    exchange: Literal["auto", "files", "driver"] = "auto"
    # Where "files" stages Parquet: a folder (local modes: the executors share the driver's disk)
    # or a bucket every executor reads (Dataproc: gs://<project>-spark-staging/exchange, the
    # plan's staging bucket, used by "auto" there). POOLCAST_SPARK_STAGING.
    staging_dir: str | None = None


class GcpSettings(BaseModel):
    """Where the Dataproc Serverless batches run (plan Phase 1)."""

    project_id: str | None = None
    region: str = "us-central1"
    runtime_version: str = "1.2"  # Spark 3.5 / Scala 2.12 (ERRATA: not 2.1)
    service_account: str | None = None
    subnetwork: str = "dataproc-subnet"
    db_password_secret: str | None = None


class Settings(BaseSettings):
    """Every knob of poolcast in one place.

    Environment variables use the plan's names (``DB_HOST``, ``TRAIN_DAYS``, ``SPARK_ENVIRONMENT``,
    ``PROJECT_ID``) or ``POOLCAST_*``; CLI flags override them.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    store: str | None = Field(
        default=None, validation_alias=AliasChoices("store", "POOLCAST_STORE")
    )
    db_host: str | None = Field(default=None, validation_alias=AliasChoices("db_host", "DB_HOST"))
    db_port: int = Field(default=5432, validation_alias=AliasChoices("db_port", "DB_PORT"))
    db_name: str = Field(
        default="defiyieldopt_db", validation_alias=AliasChoices("db_name", "DB_NAME")
    )
    db_user: str = Field(
        default="defiyieldopt_user", validation_alias=AliasChoices("db_user", "DB_USER")
    )
    db_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("db_password", "DB_PASSWORD")
    )
    db_sslmode: SslMode | None = Field(
        default=None, validation_alias=AliasChoices("db_sslmode", "DB_SSLMODE", "PGSSLMODE")
    )
    # The CA that signed the server's certificate (a file on every machine that connects): with
    # sslmode=verify-full the connection is encrypted and the server proven.
    db_sslrootcert: str | None = Field(
        default=None,
        validation_alias=AliasChoices("db_sslrootcert", "DB_SSLROOTCERT", "PGSSLROOTCERT"),
    )

    engine: Engine = Field(
        default="local", validation_alias=AliasChoices("engine", "POOLCAST_ENGINE")
    )
    lookback_days: int = Field(
        default=365, ge=1, validation_alias=AliasChoices("lookback_days", "LOOKBACK_DAYS")
    )
    as_of: dt.date | None = Field(default=None, validation_alias=AliasChoices("as_of", "AS_OF"))
    train_days: int = Field(
        default=60, ge=7, le=3650, validation_alias=AliasChoices("train_days", "TRAIN_DAYS")
    )
    seed: int = Field(default=42, validation_alias=AliasChoices("seed", "POOLCAST_SEED"))
    # The embedded store's own memory (DuckDB's memory_limit): above it DuckDB writes to a file
    # beside the store. A stage's uncommitted merge is held there until its one commit.
    duckdb_memory: str = Field(
        default="2GB", validation_alias=AliasChoices("duckdb_memory", "POOLCAST_DUCKDB_MEMORY")
    )
    # The local engine reads, computes and merges metrics, and builds the forecast panel, this
    # many pools at a time: its memory then follows the batch, not the number of pools.
    batch_pools: int = Field(
        default=10_000, ge=1, validation_alias=AliasChoices("batch_pools", "POOLCAST_BATCH_POOLS")
    )
    apy_ceiling: float = Field(
        default=10_000.0, gt=0, validation_alias=AliasChoices("apy_ceiling", "POOLCAST_APY_CEILING")
    )
    # Where forecast models are saved and looked for (a folder or gs://...). Settings() keeps
    # "models"; load_settings() (every command) puts it next to the store when not given, so
    # every command finds the same models from any directory (default_model_dir).
    model_dir: str = Field(
        default="models", validation_alias=AliasChoices("model_dir", "POOLCAST_MODEL_DIR")
    )
    # A saved forecast model (folder or gs:// path) to forecast with instead of training one.
    model_path: str | None = Field(
        default=None, validation_alias=AliasChoices("model_path", "POOLCAST_MODEL")
    )
    # The daily (--incremental) mode reuses the newest saved model whose training data ends at
    # most this many days before the latest data: training is most of a run's time (0 = retrain).
    retrain_days: int = Field(
        default=7,
        ge=0,
        le=365,
        validation_alias=AliasChoices("retrain_days", "POOLCAST_RETRAIN_DAYS"),
    )
    incremental: bool = Field(
        default=False, validation_alias=AliasChoices("incremental", "POOLCAST_INCREMENTAL")
    )
    lock_wait: bool = Field(
        default=False, validation_alias=AliasChoices("lock_wait", "POOLCAST_LOCK_WAIT")
    )
    # A stage that loses its database connection is rerun this many times in all, with an
    # exponential pause (backoff, 2x backoff, ...) to let a restarting server come back.
    db_retry_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        validation_alias=AliasChoices("db_retry_attempts", "POOLCAST_DB_RETRY_ATTEMPTS"),
    )
    db_retry_backoff_s: float = Field(
        default=2.0,
        ge=0,
        le=300,
        validation_alias=AliasChoices("db_retry_backoff_s", "POOLCAST_DB_RETRY_BACKOFF_S"),
    )
    # The chatter of the libraries underneath (Spark's WARN lines, Ivy resolving the jars,
    # LightGBM's [Info] lines) on stderr; off by default (Spark still shows its errors).
    # --verbose, POOLCAST_VERBOSE=1.
    verbose: bool = Field(
        default=False, validation_alias=AliasChoices("verbose", "POOLCAST_VERBOSE")
    )

    spark: SparkSettings = SparkSettings()
    gcp: GcpSettings = GcpSettings()

    @field_validator("store")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() if value else None

    def __repr_args__(self) -> Any:
        """A repr lands in logs and tracebacks: the store URL's password is masked there."""
        from poolcast.log import redact_url

        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "store" and isinstance(value, str) else value

    def store_url(self) -> str:
        """The store to open: `--store`/`POOLCAST_STORE`, else `DB_HOST`, else the embedded file."""
        if self.store:
            return self.store
        if self.db_host:
            password = self.db_password.get_secret_value() if self.db_password else ""
            auth = quote(self.db_user, safe="")
            if password:
                auth += ":" + quote(password, safe="")
            url = (
                f"postgresql://{auth}@{self.db_host}:{self.db_port}/{quote(self.db_name, safe='')}"
            )
            query = {"sslmode": self.db_sslmode, "sslrootcert": self.db_sslrootcert}
            given = [f"{k}={quote(v, safe='/')}" for k, v in query.items() if v]
            return url + ("?" + "&".join(given) if given else "")
        return DEFAULT_STORE


def default_model_dir(store_url: str) -> str:
    """The model folder of a store when ``POOLCAST_MODEL_DIR`` is not set: ``models`` in the
    embedded store file's folder (relative exactly when the store's path is), so the store and
    its models go together whatever the current directory; for PostgreSQL, which has no folder,
    one per database (and schema) under ``$XDG_DATA_HOME/poolcast/models`` (by default
    ``~/.local/share/poolcast/models``)."""
    import os
    import re
    from urllib.parse import parse_qs, unquote, urlsplit

    if not store_url.startswith(("postgresql://", "postgres://")):
        return os.path.join(os.path.dirname(os.path.expanduser(store_url)), "models")
    url = urlsplit(store_url)
    options = " ".join(parse_qs(url.query).get("options", []))
    schema = re.search(r"search_path=([^\s,]+)", unquote(options))
    parts = [url.hostname or "localhost", str(url.port or 5432), url.path.lstrip("/") or "db"]
    if schema:
        parts.append(schema.group(1))
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return os.path.join(base, "poolcast", "models", key)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment with CLI overrides (``None`` means "not given").

    Without ``POOLCAST_MODEL_DIR`` (or a ``model_dir`` override) the model folder is the store's
    (:func:`default_model_dir`)."""
    import os

    master = overrides.pop("spark_master", None) or os.environ.get("POOLCAST_SPARK_MASTER")
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(**given)  # type: ignore[arg-type]
    if "model_dir" not in settings.model_fields_set:
        settings.model_dir = default_model_dir(settings.store_url())
    if master:
        settings.spark.master = str(master).strip()
    exchange = os.environ.get("POOLCAST_SPARK_EXCHANGE")
    if exchange:  # validated: a typo is an error naming the allowed values
        settings.spark = SparkSettings.model_validate(
            {**settings.spark.model_dump(), "exchange": exchange}
        )
    staging = os.environ.get("POOLCAST_SPARK_STAGING")
    if staging:
        settings.spark.staging_dir = staging.strip()
    spark_env = os.environ.get("SPARK_ENVIRONMENT")
    if spark_env in ("local", "dataproc") and settings.spark.environment is None:
        settings.spark.environment = spark_env  # type: ignore[assignment]
    project = os.environ.get("PROJECT_ID") or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if project and settings.gcp.project_id is None:
        settings.gcp.project_id = project
    region = os.environ.get("REGION")
    if region:
        settings.gcp.region = region
    return settings
