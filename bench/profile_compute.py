"""Where the dense metrics engine's time goes, on the inputs a bench run cached.

Usage: ``python bench/profile_compute.py [CACHE_DIR] [THREADS]`` (default
/tmp/poolcast-bench/20k/cache, left by ``BENCH_ONLY=compute`` runs; THREADS: the engine's default).
Prints, for one fresh run in this process: wall, user and system CPU seconds, minor page faults,
and the wall time to the end of the serial part (pool_id encoding, numeric copies, the partition of
rows by chunk); the rest is the per-chunk work on the threads. On this VM a page fault costs
1.5-7 us, so the system time (mostly the output table's fresh memory) moves with the machine's load.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _child  # noqa: E402

from poolcast.engines import _dense  # noqa: E402


def main() -> None:
    cache = sys.argv[1] if len(sys.argv) > 1 else "/tmp/poolcast-bench/20k/cache"
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else None
    snapshots, market, as_of = _child._cached_inputs({"cache": cache})
    marks: dict[str, float] = {}
    partition = _dense._partition

    def timed_partition(*args):  # type: ignore[no-untyped-def]
        result = partition(*args)
        marks["serial_s"] = time.perf_counter() - marks["start"]
        return result

    _dense._partition = timed_partition
    before = resource.getrusage(resource.RUSAGE_SELF)
    marks["start"] = time.perf_counter()
    out = _dense.compute_metrics(snapshots, market, as_of, threads=threads)
    wall = time.perf_counter() - marks["start"]
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{snapshots.num_rows:,} snapshots -> {out.num_rows:,} rows: wall {wall:.2f} s "
        f"(serial part {marks['serial_s']:.2f} s), user {after.ru_utime - before.ru_utime:.2f} s, "
        f"system {after.ru_stime - before.ru_stime:.2f} s, "
        f"page faults {after.ru_minflt - before.ru_minflt:,}, "
        f"peak RSS {after.ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
