"""Where the time goes: each stage of a full and an incremental run under pyinstrument.

Usage: ``python bench/profile_stages.py STORE [OUT_DIR]``, STORE filled by ``poolcast generate``.
Writes ``profile_<stage>.txt`` (call tree, wall and CPU) per stage; docs/performance.md quotes them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from pyinstrument import Profiler

from poolcast.settings import Settings
from poolcast.stages import forecast_stage, metrics_stage
from poolcast.store import open_store

ADD_DAY_SQL = """
INSERT INTO raw_defillama_pool_history (pool_id, timestamp, raw_json_data)
SELECT pool_id, timestamp + INTERVAL '1 day', raw_json_data
FROM raw_defillama_pool_history
WHERE timestamp >= (SELECT CAST(CAST(max(timestamp) AS DATE) AS TIMESTAMP)
                    FROM raw_defillama_pool_history)
"""


def _profiled(name: str, out: Path, fn: Callable[[], object]) -> None:
    profiler = Profiler(interval=0.005)
    cpu = time.process_time()
    profiler.start()
    fn()
    profiler.stop()
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    cpu = time.process_time() - cpu
    (out / f"profile_{name}.txt").write_text(f"# {name}: CPU {cpu:.2f} s (this process)\n{text}")
    print(f"{name}: wall {profiler.last_session.duration:.2f} s, CPU {cpu:.2f} s", flush=True)


def main() -> None:
    url = sys.argv[1]
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "bench/results")
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(model_dir="/tmp/poolcast-profile-models")
    with open_store(url) as store:
        store.execute("DELETE FROM pool_daily_metrics")
        _profiled("metrics_full", out, lambda: metrics_stage(store, settings))
        _profiled("forecast", out, lambda: forecast_stage(store, settings))
        store.execute(ADD_DAY_SQL)
        daily = settings.model_copy(update={"incremental": True})
        _profiled("metrics_incremental", out, lambda: metrics_stage(store, daily))
        _profiled("forecast_incremental", out, lambda: forecast_stage(store, daily))


if __name__ == "__main__":
    main()
