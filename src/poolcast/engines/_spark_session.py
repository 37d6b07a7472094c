"""The Spark session factory (the plan's ``get_spark_session``, Task 2.1/2.4).

Nothing here starts a JVM at import time: ``pyspark`` is imported inside the functions, so the
local engine and the CLI work on a machine without Java.

Where the session runs:

* ``local`` (a laptop, CI): ``settings.spark.master`` (default ``local[2]``), the jars resolved by
  Ivy from Maven Central through ``spark.jars.packages`` into a project-local cache
  (``.cache/ivy``, or ``POOLCAST_IVY_DIR``), the driver bound to 127.0.0.1, no UI.
* ``dataproc`` (Dataproc Serverless runtime 1.2: Spark 3.5, Scala 2.12, Java 17): the batch was
  started by ``spark-submit``, so the master, the executors and the jars (``jarFileUris`` staged
  in the code bucket: serverless workers have no internet without Cloud NAT) are already set by the
  batch. We add only SQL options; the properties that must be fixed at submission (dynamic
  allocation off and a fixed executor count for LightGBM) come from :func:`batch_properties`.
* Any process that ``spark-submit`` started (``PYSPARK_GATEWAY_PORT`` is set) keeps the master,
  jars and JVM options it was submitted with, whatever the environment.

Which one: ``settings.spark.environment`` (from ``SPARK_ENVIRONMENT``), else the Dataproc
environment itself (``DATAPROC_*`` variables that the runtime sets), else ``local``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from poolcast.store._base import StoreError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

    from poolcast.settings import Settings

Environment = Literal["local", "dataproc"]

#: Spark is always UTC here: one snapshot must land on one UTC day whatever the machine's zone,
#: and JDBC ``TIMESTAMP`` (without time zone) values are read in the JVM's default zone.
UTC_JAVA_OPTIONS = "-Duser.timezone=UTC"

_DATAPROC_MARKERS = ("DATAPROC_IMAGE_VERSION", "DATAPROC_WORKLOAD_TYPE", "DATAPROC_BATCH_ID")


class SparkSetupError(StoreError):
    """The Spark session could not be set up; the message says why and what to do.

    A :class:`~poolcast.store.StoreError` so that every command reports it as a plain error
    (nothing was read or written yet)."""


def detect_environment(settings: Settings | None = None) -> Environment:
    """``local`` or ``dataproc``: explicit setting, then ``SPARK_ENVIRONMENT``, then markers."""
    explicit = settings.spark.environment if settings is not None else None
    if explicit in ("local", "dataproc"):
        return explicit
    env = os.environ.get("SPARK_ENVIRONMENT", "").strip().lower()
    if env in ("local", "dataproc"):
        return env  # type: ignore[return-value]
    if env:
        raise SparkSetupError(
            f"SPARK_ENVIRONMENT={env!r} is not understood: use 'local' or 'dataproc'"
        )
    if any(os.environ.get(k) for k in _DATAPROC_MARKERS) or any(
        k.startswith("DATAPROC_") for k in os.environ
    ):
        return "dataproc"
    return "local"


def ivy_dir() -> Path:
    """Where Ivy caches the jars: ``POOLCAST_IVY_DIR``, else ``.cache/ivy`` in the working dir."""
    return Path(os.environ.get("POOLCAST_IVY_DIR") or Path.cwd() / ".cache" / "ivy").resolve()


def launched_by_spark_submit() -> bool:
    """True when ``spark-submit`` (a Dataproc batch, or a local ``spark-submit job.py``) started
    this Python process: its JVM is already running with the master, jars and JVM options it was
    given, and the session must not override them."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


def session_conf(
    settings: Settings,
    *,
    environment: Environment | None = None,
    submitted: bool | None = None,
) -> dict[str, str]:
    """The Spark properties :func:`get_spark_session` sets (pure: testable without a JVM)."""
    environment = environment or detect_environment(settings)
    submitted = launched_by_spark_submit() if submitted is None else submitted
    sp = settings.spark
    conf: dict[str, str] = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
    }
    if sp.shuffle_partitions:
        conf["spark.sql.shuffle.partitions"] = str(sp.shuffle_partitions)
    if environment == "local" and not submitted:
        conf.update(
            {
                "spark.master": sp.master,
                "spark.driver.memory": sp.driver_memory or _driver_memory(sp.master),
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.dynamicAllocation.enabled": "false",
                "spark.driver.extraJavaOptions": UTC_JAVA_OPTIONS,
                "spark.executor.extraJavaOptions": UTC_JAVA_OPTIONS,
                "spark.jars.ivy": str(ivy_dir()),
            }
        )
        if sp.packages:
            conf["spark.jars.packages"] = ",".join(sp.packages)
        if sp.jars:
            conf["spark.jars"] = ",".join(sp.jars)
    elif environment == "dataproc" and sp.jars and not submitted:
        conf["spark.jars"] = ",".join(sp.jars)
    return conf


def _driver_memory(master: str) -> str:
    return "4g" if master.startswith("local[") or master == "local" else "1g"


def batch_properties(settings: Settings, *, training: bool) -> dict[str, str]:
    """``runtimeConfig.properties`` for a Dataproc Serverless batch (runtime 1.2).

    These must be given at submission: a running driver cannot turn dynamic allocation off.
    SynapseML LightGBM hangs under dynamic allocation (SynapseML #623), so the forecast batch
    gets it off with a fixed executor count; the metrics batch keeps the serverless default.
    """
    sp = settings.spark
    props = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.adaptive.enabled": "true",
        "spark.driver.extraJavaOptions": UTC_JAVA_OPTIONS,
        "spark.executor.extraJavaOptions": UTC_JAVA_OPTIONS,
    }
    if sp.shuffle_partitions:
        props["spark.sql.shuffle.partitions"] = str(sp.shuffle_partitions)
    if training:
        props.update(
            {
                "spark.dynamicAllocation.enabled": "false",
                "spark.executor.instances": str(sp.executor_instances),
            }
        )
    return props


@contextlib.contextmanager
def _jvm_stdout_to_stderr() -> Iterator[None]:
    """Start the JVM with stderr as its stdout: Ivy and Spark print there, and a command's own
    stdout (``poolcast parity --json``, ``poolcast sql --format csv``) must stay clean."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real file descriptor 1 (an embedding host): leave it
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


#: Lines hidden without ``settings.verbose`` once the JVM runs: the native LightGBM's notes, which
#: SynapseML's fits print from the driver JVM under ``local[N]`` ("Saving data reference to
#: binary buffer", ...) before any verbosity parameter applies. Its warnings and errors show.
_CHATTER = (b"[LightGBM] [Info]", b"[LightGBM] [Debug]")
#: At most this many lines of the JVM's start are held back (the newest kept) to show on failure.
_HELD_LINES = 5000


def is_chatter(line: bytes) -> bool:
    return line.lstrip().startswith(_CHATTER)


class _Relay:
    """The JVM's stdout and stderr through a pipe, copied to this process's stderr by a daemon
    thread for as long as the JVM runs. While the JVM starts, its lines are held back (Ivy
    resolving the jars, Spark's notes on the host and its log level): :meth:`release` drops
    them when the start succeeded (all but Spark's ERROR lines) and shows them all when it
    failed. After that, every line passes but LightGBM's [Info] notes (:func:`is_chatter`)."""

    def __init__(self, read_fd: int, target_fd: int) -> None:
        self._read, self._target = read_fd, target_fd
        self._lock = threading.Lock()
        self._holding = True
        self._held: list[bytes] = []
        self._last_read = time.monotonic()
        self._thread = threading.Thread(target=self._pump, name="poolcast-jvm-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        rest = b""
        try:
            while chunk := os.read(self._read, 65536):
                self._last_read = time.monotonic()
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                self._lines([line + b"\n" for line in lines])
            if rest:
                self._lines([rest + b"\n"])
        except OSError:
            pass
        finally:
            os.close(self._read)
            with self._lock:
                if not self._holding:
                    os.close(self._target)
                    self._target = -1

    def _lines(self, lines: list[bytes]) -> None:
        with self._lock:
            if self._holding:
                self._held.extend(lines)
                del self._held[:-_HELD_LINES]
                return
            self._write(b"".join(line for line in lines if not is_chatter(line)))

    def _write(self, data: bytes) -> None:
        if data and self._target >= 0:
            try:
                os.write(self._target, data)
            except OSError:
                pass

    def release(self, *, failed: bool) -> None:
        """The JVM has started (or failed to): show what it printed meanwhile only when it
        failed, and let its lines through from now on."""
        if failed:  # a JVM that exited: what it printed up to its end
            self._thread.join(timeout=2.0)
        else:  # what it printed just before the start returned is read and dropped too
            deadline = time.monotonic() + 1.0
            while time.monotonic() - self._last_read < 0.1 and time.monotonic() < deadline:
                time.sleep(0.05)
        with self._lock:
            held, self._held, self._holding = self._held, [], False
            shown = held if failed else [line for line in held if b" ERROR " in line]
            self._write(b"".join(shown))
            if not self._thread.is_alive() and self._target >= 0:
                os.close(self._target)
                self._target = -1


@contextlib.contextmanager
def _jvm_output(verbose: bool) -> Iterator[None]:
    """Start the JVM with its stdout on stderr (a command's own stdout, ``poolcast parity
    --json``, stays clean); unless ``verbose``, through a :class:`_Relay` that holds back Ivy's
    and Spark's start-up notes (shown if the start fails) and LightGBM's [Info] lines."""
    if verbose:
        with _jvm_stdout_to_stderr():
            yield
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved_out, saved_err = os.dup(1), os.dup(2)
    except (OSError, ValueError):  # no real file descriptors (an embedding host): leave them
        yield
        return
    read_fd, write_fd = os.pipe()
    relay = _Relay(read_fd, os.dup(saved_err))  # its own copy: the JVM outlives this block
    failed = True
    try:
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        yield
        failed = False
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        relay.release(failed=failed)


def get_spark_session(
    settings: Settings | None = None,
    app_name: str = "poolcast",
    *,
    training: bool = False,
) -> SparkSession:
    """The active SparkSession, or a new one configured for where we run.

    ``training=True`` checks that the session can run SynapseML LightGBM (no dynamic allocation)
    and fails with a clear message instead of hanging in ``fit``.
    """
    if settings is None:
        from poolcast.settings import load_settings

        settings = load_settings()
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SparkSetupError(
            "the Spark engine needs the 'spark' extra: pip install 'poolcast[spark]' "
            "(pyspark 3.5, synapseml 1.1.3) and Java 17"
        ) from exc

    environment = detect_environment(settings)
    active = SparkSession.getActiveSession()
    if active is None:
        if settings.spark.master.startswith("local-cluster") and not launched_by_spark_submit():
            # Its executors start through the pip package's bin/spark-class, which needs these.
            import pyspark

            os.environ.setdefault("SPARK_HOME", os.path.dirname(pyspark.__file__))
            os.environ.setdefault("SPARK_SCALA_VERSION", "2.12")
        if environment == "local":
            # The executors' Python workers run the model's functions: this interpreter's
            # packages (numpy, pyarrow, lightgbm, duckdb, poolcast), not the system python3.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.appName(app_name)
        for key, value in session_conf(settings, environment=environment).items():
            builder = builder.config(key, value)
        try:
            with _jvm_output(settings.verbose):
                active = builder.getOrCreate()
                # Spark's errors only at a command (its WARN lines are for whoever runs Spark,
                # not for a person reading the command); its warnings too with --verbose and in
                # a batch's log (spark-submit, Dataproc), which the people running Spark read.
                loud = settings.verbose or launched_by_spark_submit()
                active.sparkContext.setLogLevel("WARN" if loud else "ERROR")
        except Exception as exc:
            raise SparkSetupError(
                f"could not start Spark ({environment}): {exc}. Local runs need Java 17 "
                "(JAVA_HOME) and, the first time, Maven Central to resolve "
                f"{', '.join(settings.spark.packages)}"
            ) from exc
        if not settings.spark.shuffle_partitions:
            active.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions(active)))
    if training:
        conf = active.sparkContext.getConf()
        if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
            raise SparkSetupError(
                "the forecast job needs spark.dynamicAllocation.enabled=false (SynapseML "
                "LightGBM hangs under dynamic allocation); submit the batch with "
                "poolcast.engines._spark_session.batch_properties(settings, training=True)"
            )
    return active


def executor_cores(spark: SparkSession) -> int:
    """Task slots the session has now: ``local[N]`` counts its N threads, a cluster the cores of
    the executors registered (``defaultParallelism`` follows them on every cluster manager)."""
    return max(1, int(spark.sparkContext.defaultParallelism))


def executor_count(spark: SparkSession) -> int:
    """Executors registered now (``local[N]``: 1, the driver's own JVM)."""
    sc = spark.sparkContext
    if str(sc.master).startswith("local["):
        return 1
    # getExecutorInfos lists the driver too; the executors are the others.
    infos = sc._jsc.sc().statusTracker().getExecutorInfos()
    return max(1, len(infos) - 1)


def shuffle_partitions(spark: SparkSession) -> int:
    """Two partitions per task slot, at least 8: AQE coalesces the small ones, and a large input
    gets every core (a constant 8 left 3 tasks per window stage at 10,000 pools)."""
    return max(8, 2 * executor_cores(spark))


def _active_session() -> SparkSession | None:
    if "pyspark.sql" not in sys.modules:  # never imported: no session (and no import cost)
        return None
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


@contextlib.contextmanager
def stopping_spark() -> Iterator[None]:
    """Stop, on the way out, a Spark session started inside the block: a command or batch must
    end with its stage. A SynapseML fit leaves a non-daemon JVM thread behind, so without
    ``stop()`` the driver JVM (a Dataproc batch with it) would run until its TTL. A session that
    was running before the block (a notebook's, a test's) is left alone."""
    before = _active_session()
    try:
        yield
    finally:
        after = _active_session()
        if after is not None and after is not before:
            after.stop()


def end_submitted_driver(status: int) -> None:
    """Under ``spark-submit`` (a Dataproc batch), end the driver JVM now with ``status``.

    There the JVM is the parent and waits, after Python returns, for its non-daemon threads; a
    SynapseML fit leaves one (a thread pool that is never shut down) even after ``stop()``, so
    the batch would run until its TTL. ``System.exit`` runs Spark's shutdown hooks and makes
    ``status`` the batch's. Elsewhere (a CLI run, a notebook) nothing happens.
    """
    if not launched_by_spark_submit() or "pyspark" not in sys.modules:
        return
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        gateway.jvm.java.lang.System.exit(int(status))
    except Exception:  # noqa: BLE001 - the JVM is gone: its answer never comes
        pass
    os._exit(int(status))
