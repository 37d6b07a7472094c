"""SIGKILL at random points during the merge into pool_daily_metrics leaves the table exactly as
before (or, if the kill came after the commit, exactly as a complete run leaves it), on both
stores; the next run completes. DuckDB must recover from its write-ahead log after the kill.

Each kill is a real ``kill -9`` of a child process running the metrics stage; the delay after the
child announces the start of the merge is drawn uniformly over the merge's measured duration.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from poolcast.settings import Settings
from poolcast.stages import metrics_stage
from poolcast.store import Store, open_store
from poolcast.store.checksums import table_checksum
from poolcast.store.queries import latest_data_day

KILLS_PER_STORE = int(os.environ.get("POOLCAST_TEST_KILLS", "4"))

_CHILD = """
import datetime as dt, sys, time
from poolcast.stages import metrics_stage
from poolcast.settings import Settings
from poolcast.store import open_store
from poolcast.store._base import Store

real = Store.merge
def merge(self, target, *args, **kwargs):
    if target == "pool_daily_metrics":
        print("merge-start", flush=True)
        started = time.perf_counter()
        out = real(self, target, *args, **kwargs)
        print(f"merge-done {time.perf_counter() - started:.6f}", flush=True)
        if len(sys.argv) > 4:  # held open: a kill after the commit still kills a live process
            sys.stdin.readline()
        return out
    return real(self, target, *args, **kwargs)
Store.merge = merge

store = open_store(sys.argv[1])
metrics_stage(store, Settings(as_of=dt.date.fromisoformat(sys.argv[2]), model_dir=sys.argv[3]))
store.close()
print("done", flush=True)
"""


def _save(store: Store, cutoff: dt.date) -> None:
    """The 'before' state: the tail removed, a metric cleared, a forecast set; kept aside."""
    with store.transaction():
        store.execute("DELETE FROM pool_daily_metrics WHERE date > $1", [cutoff])
        store.execute("UPDATE pool_daily_metrics SET rolling_apy_7d = NULL, forecasted_apy = 7.0")
        store.execute("CREATE TABLE kill_before AS SELECT * FROM pool_daily_metrics")


def _reset(store: Store) -> None:
    with store.transaction():
        store.execute("DELETE FROM pool_daily_metrics")
        store.execute("INSERT INTO pool_daily_metrics SELECT * FROM kill_before")


def _child(url: str, as_of: dt.date, tmp: Path, *, hold: bool = False) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", _CHILD, url, as_of.isoformat(), str(tmp / "models")]
    return subprocess.Popen(
        args + (["hold"] if hold else []),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_child(url: str, as_of: dt.date, tmp: Path) -> float:
    proc = _child(url, as_of, tmp)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = out.split()
    assert "done" in lines, out
    return float(lines[lines.index("merge-done") + 1])


def test_sigkill_during_merge_leaves_the_table_intact(
    sample_store: Store, store_url: str, settings: Settings, tmp_path: Path
) -> None:
    as_of = latest_data_day(sample_store)
    assert as_of is not None
    cutoff = as_of - dt.timedelta(days=20)
    metrics_stage(sample_store, settings.model_copy(update={"as_of": cutoff}))
    _save(sample_store, cutoff)
    before = table_checksum(sample_store, "pool_daily_metrics")
    sample_store.close()  # the embedded file admits one writing process

    # A complete run from 'before' defines 'after' and how long the merge takes.
    merge_s = _run_child(store_url, as_of, tmp_path)
    with open_store(store_url) as s:
        after = table_checksum(s, "pool_daily_metrics")
        forecasts_kept = (
            s.fetch_arrow("SELECT count(*) AS n FROM pool_daily_metrics WHERE forecasted_apy = 7.0")
            .column("n")[0]
            .as_py()
        )
    assert after != before and forecasts_kept > 0

    rng = random.Random(7)
    outcomes = {"before": 0, "after": 0}
    for _ in range(KILLS_PER_STORE):
        with open_store(store_url) as s:
            _reset(s)
            assert table_checksum(s, "pool_daily_metrics") == before
        proc = _child(store_url, as_of, tmp_path, hold=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "merge-start"
        time.sleep(rng.uniform(0, merge_s * 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        with open_store(store_url) as s:  # DuckDB replays its WAL here
            state = table_checksum(s, "pool_daily_metrics")
        assert state in (before, after), "a killed merge left a half-written table"
        outcomes["before" if state == before else "after"] += 1
        # The next run completes and gives the complete result.
        _run_child(store_url, as_of, tmp_path)
        with open_store(store_url) as s:
            assert table_checksum(s, "pool_daily_metrics") == after
    print(
        f"\nkill test ({'postgres' if store_url.startswith('postgresql') else 'duckdb'}): "
        f"{KILLS_PER_STORE} SIGKILLs over a {merge_s:.3f} s merge; rolled back "
        f"{outcomes['before']}, killed after commit {outcomes['after']}, lost nothing"
    )
