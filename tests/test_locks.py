"""Two runs of the same stage cannot interleave writes: the second stops with a clear message or,
with lock_wait, waits until the first is done. Both stores; in one process and across processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_inputs import small_history

from poolcast.settings import Settings
from poolcast.stages import metrics_stage
from poolcast.stages.locks import LockBusy, stage_lock
from poolcast.store import Store, open_store
from poolcast.store.checksums import row_count, table_checksum


@pytest.fixture
def small_store(store: Store, tmp_path: Path) -> Store:
    from poolcast.stages.ingest import ingest

    ingest(store, [small_history(tmp_path / "small")])
    return store


class _Events(logging.Handler):
    """Collects poolcast's structured log events; lets a test wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.seen.append(record.getMessage())
            self.cond.notify_all()

    def wait_for(self, name: str) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: name in self.seen, timeout=60), self.seen


@pytest.fixture
def events() -> Iterator[_Events]:
    logger = logging.getLogger("poolcast")
    handler, level = _Events(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_second_run_stops_with_a_clear_message(small_store: Store, settings: Settings) -> None:
    other = open_store(small_store.url)
    try:
        with stage_lock(other, "metrics", wait=False):
            with pytest.raises(
                LockBusy, match=r"another `metrics` run is writing to .*did not start"
            ):
                metrics_stage(small_store, settings)
            assert row_count(small_store, "pool_daily_metrics") == 0
            # Another stage is not blocked by it.
            with stage_lock(small_store, "forecast", wait=False):
                pass
    finally:
        other.close()
    assert metrics_stage(small_store, settings).rows_written > 0


def test_second_run_waits_until_the_first_is_done(
    small_store: Store, settings: Settings, events: _Events
) -> None:
    waiting = settings.model_copy(update={"lock_wait": True})
    other = open_store(small_store.url)
    outcome: dict[str, object] = {}

    def second() -> None:
        try:
            outcome["result"] = metrics_stage(small_store, waiting)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=second)
    try:
        with stage_lock(other, "metrics", wait=False):
            thread.start()
            events.wait_for("lock.waiting")
            # The second run is queued behind the lock and has written nothing.
            assert thread.is_alive() and not outcome
            assert row_count(other, "pool_daily_metrics") == 0
    finally:
        other.close()
    thread.join(timeout=120)
    assert "error" not in outcome, outcome
    assert outcome["result"].rows_written > 0  # type: ignore[attr-defined]


def test_two_threads_racing_give_the_same_table_as_one_run(
    small_store: Store, settings: Settings, store_url: str
) -> None:
    waiting = settings.model_copy(update={"lock_wait": True})
    stores = [open_store(store_url) for _ in range(2)]
    errors: list[BaseException] = []

    def run(s: Store) -> None:
        try:
            metrics_stage(s, waiting)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for s in stores:
        s.close()
    assert not errors
    raced = table_checksum(small_store, "pool_daily_metrics")
    assert metrics_stage(small_store, settings).rows_written == 0
    assert table_checksum(small_store, "pool_daily_metrics") == raced


_HOLDER = """
import sys
from poolcast.stages.locks import stage_lock
from poolcast.store import open_store
store = open_store(sys.argv[1])
with stage_lock(store, "metrics", wait=False):
    print("holding", flush=True)
    sys.stdin.read()
store.close()
"""


def _poolcast(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "poolcast.cli", *args],
        env={**os.environ, "POOLCAST_LOG_FORMAT": "json", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("wait", [False, True], ids=["stop", "wait"])
def test_a_second_process_stops_or_waits(
    small_store: Store, store_url: str, tmp_path: Path, wait: bool
) -> None:
    """Across processes: DuckDB's file lock, PostgreSQL's advisory lock."""
    small_store.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, store_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        second = _poolcast(
            "metrics",
            "--store",
            store_url,
            env={"POOLCAST_LOCK_WAIT": str(wait).lower(), "POOLCAST_MODEL_DIR": str(tmp_path)},
        )
        if not wait:
            out, err = second.communicate(timeout=120)
            assert second.returncode == 1
            assert "another poolcast" in err.lower() or "another `metrics` run" in err
            assert "POOLCAST_LOCK_WAIT" in err
        else:
            assert second.stderr is not None
            for line in second.stderr:
                if "lock.waiting" in line:
                    break
            assert second.poll() is None  # queued, not finished
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
        if wait:
            out, err = second.communicate(timeout=120)
            assert second.returncode == 0, err
            assert "written=" in out
    finally:
        for proc in (holder,):
            if proc.poll() is None:
                proc.kill()
    with open_store(store_url) as check:
        assert (row_count(check, "pool_daily_metrics") > 0) == wait
