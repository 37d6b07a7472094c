"""The baseline: the plan's "current" calculate_pool_metrics, a Python loop over pools with pandas.

The plan names this loop as the bottleneck (30-45 min in Cloud Run). It lives in bench/ only, as the
reference every speed-up is measured against. It computes the same semantics as poolcast.spec
(the smoke test checks that it agrees with the local engine), so the comparison is like for like.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa

from poolcast.spec import FILL_LIMIT_DAYS, MARKET

_DAY = pd.Timedelta(days=1)


def _market_series(market: pd.DataFrame, as_of: dt.date) -> dict[str, pd.Series]:
    """Each source forward-filled on a daily calendar up to ``as_of``."""
    end = pd.Timestamp(as_of)
    start = min(pd.Timestamp(market["date"].min()), end) if len(market) else end
    calendar = pd.date_range(start, end, freq="D")
    out = {}
    for source, group in market.groupby("source"):
        values = group.assign(date=pd.to_datetime(group["date"])).set_index("date")["value"]
        out[source] = values[~values.index.duplicated(keep="last")].reindex(calendar).ffill()
    return out


def compute_metrics(snapshots: pa.Table, market: pa.Table, as_of: dt.date) -> pd.DataFrame:
    """Step 7 pool by pool: the per-pool pandas loop the plan replaces."""
    snaps = snapshots.to_pandas()
    market_by_source = _market_series(market.to_pandas(), as_of)
    end = pd.Timestamp(as_of)
    frames = []
    for pool_id, group in snaps.groupby("pool_id", sort=True):
        group = group.sort_values("timestamp")
        group["date"] = group["timestamp"].dt.normalize()
        daily = group.groupby("date")[["apy", "tvl_usd"]].last()
        last = min(end, daily.index.max() + FILL_LIMIT_DAYS * _DAY)
        days = pd.date_range(daily.index.min(), last, freq="D")
        grid = daily.reindex(days)
        apy = grid["apy"].ffill(limit=FILL_LIMIT_DAYS)
        frame = pd.DataFrame(
            {
                "pool_id": pool_id,
                "date": days.date,
                "actual_apy": apy,
                "actual_tvl": grid["tvl_usd"].ffill(limit=FILL_LIMIT_DAYS),
                "rolling_apy_7d": apy.rolling(7, min_periods=1).mean(),
                "rolling_apy_30d": apy.rolling(30, min_periods=1).mean(),
                "stddev_apy_7d": apy.rolling(7, min_periods=1).std(),
                "stddev_apy_30d": apy.rolling(30, min_periods=1).std(),
            },
            index=days,
        )
        frame["apy_delta_today_yesterday"] = apy.diff()
        frame["stddev_apy_7d_delta"] = frame["stddev_apy_7d"].diff()
        frame["stddev_apy_30d_delta"] = frame["stddev_apy_30d"].diff()
        for m in MARKET:
            series = market_by_source.get(m.source)
            shifted = days - m.shift * _DAY
            frame[m.name] = series.reindex(shifted).to_numpy() if series is not None else None
        frame["is_observed"] = grid["apy"].notna().to_numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
