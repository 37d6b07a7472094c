"""The Spark test fixture: one SparkSession (local[2], the real jars) for the whole run.

Import ``spark_fixture`` into a test module (it is the ``spark`` fixture); stage functions
find the active session and reuse it, so the JVM starts once per pytest run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session", name="spark")
def spark_fixture() -> Iterator[Any]:
    pytest.importorskip("pyspark", reason="the Spark engine needs the 'spark' extra")
    from poolcast.engines._spark_session import get_spark_session
    from poolcast.settings import Settings

    settings = Settings()
    settings.spark.master = "local[2]"
    settings.spark.shuffle_partitions = 4
    settings.spark.driver_memory = "2g"
    session = get_spark_session(settings, "poolcast-tests")
    yield session
    session.stop()
