"""Small raw API responses for the fault tests: two pools, a snapshot per day."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

POOLS = ("pool-a", "pool-b")
DAY0 = dt.datetime(2024, 6, 1, 23, 0, tzinfo=dt.UTC)


def iso(ts: dt.datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def snap(day: int, apy: float = 5.0, tvl: float = 1e6, **extra: Any) -> dict[str, Any]:
    """A DefiLlama /chart record ``day`` days after DAY0."""
    return {"timestamp": iso(DAY0 + dt.timedelta(days=day)), "apy": apy, "tvlUsd": tvl, **extra}


def write(folder: Path, name: str, data: Any) -> Path:
    path = folder / name
    path.write_text(json.dumps({"status": "success", "data": data}, allow_nan=True))
    return path


def pools_file(folder: Path, pools: tuple[str, ...] = POOLS, **extra: Any) -> Path:
    return write(folder, "pools.json", [{"pool": p, "chain": "Ethereum", **extra} for p in pools])


def small_history(folder: Path, days: int = 40) -> Path:
    """pools.json and a chart per pool with ``days`` daily snapshots."""
    folder.mkdir(parents=True, exist_ok=True)
    pools_file(folder)
    for pool in POOLS:
        write(folder, f"{pool}.json", [snap(d, apy=3.0 + d % 5) for d in range(days)])
    return folder
