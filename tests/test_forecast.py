"""The forecast models: targets, training windows, multi-horizon forecasts, intervals, artifacts."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from poolcast.engines.local import compute_features
from poolcast.evaluation.research import ALL_MODELS
from poolcast.model import (
    MODELS,
    Forecaster,
    ForecastModel,
    add_targets,
    forecast_table,
    latest_rows,
    training_rows,
)
from poolcast.model.calibration import _stack_weight
from poolcast.model.features import NOISE_REGIME, sample_rows
from poolcast.model.specs import MEAN_REVERSION
from poolcast.settings import Settings
from poolcast.spec import PEER_MEDIANS
from poolcast.stages import forecast_stage, metrics_stage
from poolcast.store import Store
from poolcast.store.queries import FORECASTS_KEY

DAY0 = dt.date(2025, 1, 1)


def _grid(apy: list[float | None]) -> pa.Table:
    """One pool's daily grid: ``None`` marks a day without a snapshot (APY carried forward)."""
    carried, last = [], None
    for v in apy:
        last = v if v is not None else last
        carried.append(last)
    n = len(apy)
    return pa.table(
        {
            "pool_id": ["p"] * n,
            "date": [DAY0 + dt.timedelta(days=i) for i in range(n)],
            "actual_apy": pa.array(carried, pa.float64()),
            "actual_tvl": pa.array([1000.0 + i for i in range(n)], pa.float64()),
            "is_observed": [v is not None for v in apy],
        }
    )


@hsettings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(0, 100)), min_size=1, max_size=40))
def test_targets_are_later_observed_values_only(apy: list[float | None]) -> None:
    panel = add_targets(_grid(apy), [1, 7, "mean7"]).to_pylist()
    for i, row in enumerate(panel):
        for h in (1, 7):
            later = apy[i + h] if i + h < len(apy) else None
            assert row[f"target_h{h}"] == later
        window = [v for v in apy[i + 1 : i + 8] if v is not None]
        if len(window) >= 4:
            assert row["target_mean7"] == pytest.approx(sum(window) / len(window))
        else:
            assert row["target_mean7"] is None


def _pools(days: list[list[tuple[float, bool]]], projects: list[str]) -> pa.Table:
    """Pools ``p0..pn`` on ``len(days)`` days: ``days[d][i]`` is pool i's (APY, observed)."""
    rows = [
        {
            "pool_id": f"p{i}",
            "date": DAY0 + dt.timedelta(days=d),
            "project": projects[i],
            "actual_apy": apy,
            "rolling_apy_30d": apy / 2,
            "actual_tvl": 1.0,
            "is_observed": observed,
        }
        for d, day in enumerate(days)
        for i, (apy, observed) in enumerate(day)
    ]
    return pa.Table.from_pylist(rows)


@hsettings(max_examples=40, deadline=None)
@given(
    st.integers(2, 6).flatmap(
        lambda n: st.tuples(
            st.lists(
                st.lists(st.tuples(st.floats(0, 100), st.booleans()), min_size=n, max_size=n),
                min_size=1,
                max_size=4,
            ),
            st.lists(st.sampled_from(["aave", "morpho"]), min_size=n, max_size=n),
        )
    )
)
def test_peer_medians_are_over_the_pools_observed_that_day(
    case: tuple[list[list[tuple[float, bool]]], list[str]],
) -> None:
    days, projects = case
    panel = add_targets(_pools(days, projects), [1]).to_pylist()
    for row in panel:
        d = (row["date"] - DAY0).days
        seen = [(a, projects[i]) for i, (a, ok) in enumerate(days[d]) if ok]
        market = [a for a, _ in seen]
        project = [a for a, p in seen if p == row["project"]]
        for name, values in (("market_apy", market), ("project_apy", project)):
            expected = float(np.median(values)) if values else None
            assert row[name] == (pytest.approx(expected) if values else None), name
        assert row["market_apy_30d"] == (pytest.approx(np.median(market) / 2) if market else None)


def test_peer_medians_are_not_recomputed_on_a_subset() -> None:
    # a backtest fold (or one pool's rows) keeps the medians of every pool of the day
    days = [[(1.0, True), (3.0, True), (10.0, True)]]
    panel = add_targets(_pools(days, ["a", "a", "b"]), [1])
    alone = add_targets(panel.filter(pa.array([True, False, False])), [1])
    assert alone.column("market_apy").to_pylist() == [3.0]
    assert alone.column("project_apy").to_pylist() == [2.0]
    # without a project column the project's median is unknown, not the market's
    bare = add_targets(_pools(days, ["a", "a", "b"]).drop_columns(["project"]), [1])
    assert bare.column("project_apy").null_count == 3
    assert set(PEER_MEDIANS) <= set(bare.column_names)


def test_training_rows_up_to_a_cutoff_never_see_later_targets() -> None:
    panel = add_targets(_grid([float(i % 5) for i in range(90)]), [7])
    end = DAY0 + dt.timedelta(days=60)
    rows = training_rows(panel, 20, 7, end=end)
    dates = rows.column("date").to_pylist()
    # the last origin whose 7-day target is known on the cutoff, and 20 origins in all
    assert max(dates) == end - dt.timedelta(days=7)
    assert len(dates) == 20 and min(dates) == end - dt.timedelta(days=26)
    assert rows.column("age").to_pylist() == list(range(19, -1, -1))


@given(seed=st.integers(0, 2**32 - 1))
@hsettings(max_examples=10, deadline=None)
def test_training_and_latest_rows_do_not_depend_on_the_panels_row_order(seed: int) -> None:
    """The engines hand over panels in (pool, date) order, where the rows are taken as they are;
    any other order gives the same rows, sorted."""
    days = [[(float((d * 3 + i) % 7), (d + i) % 4 != 0) for i in range(3)] for d in range(40)]
    panel = add_targets(_pools(days, ["a", "b", "a"]), [1, 7]).sort_by(
        [("pool_id", "ascending"), ("date", "ascending")]
    )
    mixed = panel.take(np.random.default_rng(seed).permutation(panel.num_rows))
    # targets and peer medians too: computed in any order, returned in (pool, date) order
    given = _pools(days, ["a", "b", "a"]).column_names
    raw = mixed.select(given)
    assert add_targets(raw, [1, 7]).equals(panel)
    for h, end in ((1, None), (7, None), (7, DAY0 + dt.timedelta(days=30))):
        assert training_rows(mixed, 20, h, end=end).equals(training_rows(panel, 20, h, end=end))
    assert latest_rows(mixed).equals(latest_rows(panel))


@given(seed=st.integers(0, 2**32 - 1), fraction=st.floats(0.05, 0.95))
@hsettings(max_examples=25, deadline=None)
def test_a_row_sample_is_the_same_in_any_order_and_split_into_any_pools(
    seed: int, fraction: float
) -> None:
    """The sample is a function of each row's pool and day: any order, any split of the pools
    into parts (an engine's partitions) keeps the same rows, about ``fraction`` of them."""
    n_pools, n_days = 60, 50
    panel = pa.table(
        {
            "pool_id": [f"pool-{i}" for i in range(n_pools) for _ in range(n_days)],
            "date": [DAY0 + dt.timedelta(days=d) for _ in range(n_pools) for d in range(n_days)],
        }
    )
    whole = sample_rows(panel, fraction, seed=42)
    order = np.random.default_rng(seed).permutation(panel.num_rows)
    mixed = panel.take(order)
    cut = int(order[0]) % n_pools
    low = pa.array([int(p[5:]) < cut for p in mixed.column("pool_id").to_pylist()])
    parts = [mixed.filter(low), mixed.filter(pc.invert(low))]
    split = pa.concat_tables([sample_rows(t, fraction, seed=42) for t in parts])
    keys = [("pool_id", "ascending"), ("date", "ascending")]
    assert split.sort_by(keys).equals(whole.sort_by(keys))
    assert abs(whole.num_rows / panel.num_rows - fraction) < 0.05
    assert sample_rows(panel, 1.0, seed=42) is panel
    assert not sample_rows(panel, fraction, seed=43).equals(whole)


@pytest.fixture(scope="module")
def sample_panel(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> pa.Table:
    """The forecast panel of the shipped sample (embedded store, computed once)."""
    from poolcast.stages.ingest import ingest
    from poolcast.store import open_store
    from poolcast.store.queries import read_panel

    path = tmp_path_factory.mktemp("panel") / "s.duckdb"
    with open_store(str(path)) as s:
        s.init_schema()
        ingest(s, [sample_dir])
        settings = Settings(store=str(path))
        metrics_stage(s, settings)
        # with the peer medians, as the forecast stage's panel gets them before any row is picked
        return add_targets(compute_features(read_panel(s, settings.train_days, horizon=30)))


@pytest.fixture(scope="module")
def fitted(sample_panel: pa.Table) -> ForecastModel:
    return ForecastModel("production", num_threads=1).fit(sample_panel)


def test_a_model_with_a_row_cap_trains_on_a_sample_of_its_window(
    sample_panel: pa.Table, fitted: ForecastModel
) -> None:
    models = {"capped": replace(MODELS["production"], name="capped", max_rows=2000)}
    capped = Forecaster("capped", models=models, num_threads=1).fit(sample_panel)
    full = fitted.horizons_[1]
    assert capped.window_rows_ == full.window_rows_ == full.n_train_ > 4000
    assert 1700 < capped.n_train_ < 2300
    assert capped.metadata()["window_rows"] == full.window_rows_
    again = Forecaster("capped", models=models, num_threads=1).fit(sample_panel)
    assert again.model_text() == capped.model_text() != full.model_text()


def test_same_data_and_seed_give_the_same_model_byte_for_byte(
    sample_panel: pa.Table, fitted: ForecastModel, tmp_path: Path
) -> None:
    again = ForecastModel("production", num_threads=1).fit(sample_panel)
    first, second = Path(fitted.save(tmp_path / "a")), Path(again.save(tmp_path / "b"))
    assert first.name == second.name == f"production-{fitted.version_}"
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    # ensemble members beyond the first: three members from 7 days on
    assert names == sorted(
        ["h1.txt", "h7.txt", "h7.b1.txt", "h7.b2.txt", "h30.txt", "h30.b1.txt", "h30.b2.txt"]
        + ["hmean7.txt", "hmean7.b1.txt", "hmean7.b2.txt", "metadata.json"]
    )
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    other = ForecastModel("production", num_threads=1, seed=7).fit(sample_panel)
    assert other.version_ != fitted.version_


def test_artifact_metadata_says_what_the_model_is(fitted: ForecastModel, tmp_path: Path) -> None:
    import json

    meta = json.loads((Path(fitted.save(tmp_path)) / "metadata.json").read_text())
    one = meta["horizons"]["1"]
    assert one["features"] == list(MODELS["production"].features)
    assert one["model"]["target"] == "change" and meta["horizons"]["7"]["model"]["target"] == (
        "scaled_change"
    )
    assert one["data_fingerprint"] and one["train_window"][0] < one["train_window"][1]
    assert one["model"]["params"]["objective"] == "regression_l1"
    assert set(meta["backtest"]) == {"1", "7", "30", "mean7"}
    assert meta["backtest"]["1"]["n"] > 0 and meta["backtest"]["1"]["naive_mae"] > 0
    assert set(meta["tvl"]) == {"1", "7", "30"}
    # the next day and the 7-day mean blend the 30-day mean too; 7 and 30 days the 7-day mean only
    assert one["blend_anchors"] == list(MEAN_REVERSION)
    assert meta["horizons"]["mean7"]["blend_anchors"] == list(MEAN_REVERSION)
    assert meta["horizons"]["7"]["blend_anchors"] == ["rolling_apy_7d"]
    # one blend at 1 and 30 days; at 7 days and for the 7-day mean one per half of today's APY
    assert one["blend_edges"] == [] and [len(w) for w in one["blend_weights"]] == [3]
    for h, groups in (("7", 2), ("mean7", 2), ("30", 1)):
        horizon = meta["horizons"][h]
        assert len(horizon["blend_edges"]) == groups - 1
        assert len(horizon["blend_weights"]) == len(horizon["dead_zone"]) == groups
    assert max(one["dead_zone"]) <= 0.05  # a wider zone at 1 day only makes ties with naive
    assert set(meta["derived_features"]) <= set(meta["features"])
    # the noise regime feeds the 30-day model only, and the top level lists every horizon's
    thirty = meta["horizons"]["30"]["features"]
    assert set(NOISE_REGIME) <= set(thirty) and not set(NOISE_REGIME) & set(one["features"])
    assert meta["features"] == list(dict.fromkeys([*one["features"], *thirty]))
    assert meta["derived_features"]["delta_to_level_30d"] == [
        "stddev_apy_delta_30d",
        "stddev_apy_30d",
        "zscore",
    ]


def test_an_artifact_from_before_blend_anchors_and_groups_loads_as_it_was(
    sample_panel: pa.Table, fitted: ForecastModel, tmp_path: Path
) -> None:
    import json

    path = Path(fitted.save(tmp_path))
    meta = json.loads((path / "metadata.json").read_text())
    for h in ("7", "30"):
        del meta["horizons"][h]["blend_anchors"]
    # one blend, saved as a flat weight list and one dead zone, without edges
    thirty = meta["horizons"]["30"]
    thirty["blend_weights"] = thirty["blend_weights"][0]
    thirty["dead_zone"] = thirty["dead_zone"][0]
    del thirty["blend_edges"]
    (path / "metadata.json").write_text(json.dumps(meta))
    loaded = ForecastModel.load(path)
    for h in (7, 30):
        assert loaded.horizons_[h].anchors_ == ("rolling_apy_7d",)
        origins = latest_rows(sample_panel)
        np.testing.assert_array_equal(
            loaded.horizons_[h].predict(origins), fitted.horizons_[h].predict(origins)
        )


def test_the_blend_leans_on_the_anchor_that_forecasts() -> None:
    from poolcast.model.calibration import _blend, _fit_blend

    rng = np.random.default_rng(0)
    naive = rng.uniform(1, 10, 400)
    mean7, mean30 = naive + rng.normal(0, 1, 400), naive + rng.normal(0, 1, 400)
    model = naive + rng.normal(0, 1, 400)
    anchors = np.column_stack([mean7, mean30])
    scl = np.ones(400)
    weights, zone = _fit_blend(mean30, model, naive, anchors, scl, (0.0, 0.1))
    assert weights == (0.0, 0.0, 1.0) and zone == 0.0  # a dead zone would cost MAE here
    np.testing.assert_allclose(_blend(model, naive, anchors, scl, weights, 0.0), mean30)
    # with no anchor at all, the model alone
    weights, _ = _fit_blend(model, model, naive, np.empty((400, 0)), scl)
    assert weights == (1.0,)


@given(
    st.lists(st.floats(0, 500, allow_nan=False), max_size=400),
    st.integers(1, 4),
    st.integers(0, 5),
)
@hsettings(max_examples=200, deadline=None)
def test_blend_groups_are_equal_quantiles_of_todays_apy_or_one(
    apy: list[float], groups: int, decimals: int
) -> None:
    from poolcast.model.calibration import MIN_BLEND_GROUP_ROWS, _blend_edges, _blend_group

    values = np.round(np.asarray(apy, dtype=np.float64), decimals)  # few decimals: many ties
    edges = _blend_edges(values, groups)
    if not edges:
        return
    assert len(edges) == groups - 1 and list(edges) == sorted(edges)
    counts = np.bincount(_blend_group(values, edges), minlength=groups)
    assert counts.size == groups and counts.min() >= MIN_BLEND_GROUP_ROWS
    # every row at or above an edge lies in a group above it
    assert np.all(_blend_group(values, edges) == np.sum(values[:, None] >= np.asarray(edges), 1))


def test_blend_groups_too_small_or_tied_fall_back_to_one_blend() -> None:
    from poolcast.model.calibration import MIN_BLEND_GROUP_ROWS, _blend_edges

    assert _blend_edges(np.arange(2 * MIN_BLEND_GROUP_ROWS - 1, dtype=float), 2) == ()
    assert _blend_edges(np.arange(2 * MIN_BLEND_GROUP_ROWS, dtype=float), 2) != ()
    assert _blend_edges(np.full(400, 5.0), 2) == ()  # one value: no second group
    assert _blend_edges(np.arange(400, dtype=float), 1) == ()


def test_low_apy_pools_where_the_model_has_no_edge_get_their_own_blend() -> None:
    """Low-APY random walks (naive is right) and high-APY mean-reverting pools (the model is):
    one blend would be the high pools'; split at the median APY, the low half leans on naive."""
    from panels import mean_reverting, metrics_of, random_walk

    low_pools, high_pools = 0.2 * random_walk(16, 3), 40.0 + mean_reverting(16, 4, phi=0.6)
    panel = add_targets(compute_features(metrics_of(np.vstack([low_pools, high_pools]))))
    model = Forecaster("production", horizon=7).fit(panel)
    (edge,) = model.blend_edges_
    assert low_pools.max() < edge < high_pools.min()
    (low_weights, _), (high_weights, _) = model.blends_
    assert low_weights[0] < high_weights[0]  # the model's own weight over naive
    origins = latest_rows(panel)
    low = origins.column("actual_apy").to_numpy() < edge
    one_blend = Forecaster("production", horizon=7)
    one_blend.__dict__.update(model.__dict__)
    one_blend.blend_edges_, one_blend.blends_ = (), [model.blends_[1]]
    # the high half forecasts as it did under one blend, the low half as its own blend says
    np.testing.assert_array_equal(model.predict(origins)[~low], one_blend.predict(origins)[~low])
    assert np.any(model.predict(origins)[low] != one_blend.predict(origins)[low])


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_a_scaled_change_target_inverts_exactly(sample_panel: pa.Table, power: float) -> None:
    from dataclasses import replace

    scaled = replace(MODELS["production"], name="_scaled", scale_power=power)
    f = Forecaster("_scaled", horizon=7, models={"_scaled": scaled})
    rows = latest_rows(sample_panel)
    y = rows.column("actual_apy").to_numpy() * 1.1 + 0.3
    back = f._from_target(rows, f._to_target(rows, y))
    np.testing.assert_allclose(back, y, atol=1e-6)


@pytest.mark.parametrize(
    ("weight_power", "half_life", "expected"),
    [
        (0.0, 0.0, 0.0),  # every row alike: the L1 fit follows the majority (no move)
        (1.0, 0.0, 10.0),  # rows weighed by scale: the loud pool's APY points win
        (0.0, 5.0, 10.0),  # the recent rows win over the older majority
    ],
)
def test_row_weights_set_what_the_loss_counts(
    weight_power: float, half_life: float, expected: float
) -> None:
    from poolcast.model.specs import PRODUCTION_PARAMS, ModelSpec

    # 60 old rows of a quiet pool that did not move, 40 recent rows of a loud one that rose 10.
    quiet, loud = 60, 40
    rows = pa.table(
        {
            "pool_id": ["quiet"] * quiet + ["loud"] * loud,
            "actual_apy": pa.array([5.0] * 100, pa.float64()),
            "stddev_apy_30d": pa.array([0.01] * quiet + [10.0] * loud, pa.float64()),
            "age": pa.array([30 + i % 20 for i in range(quiet)] + [i % 10 for i in range(loud)]),
            "target_h1": pa.array([5.0] * quiet + [15.0] * loud, pa.float64()),
            "one": pa.array([1.0] * 100, pa.float64()),
        }
    )
    params = {**PRODUCTION_PARAMS, "learning_rate": 1.0, "min_data_in_leaf": 1}
    weighted = ModelSpec(
        "_weighted", ("one",), "change", params, weight_power=weight_power, half_life=half_life
    )
    f = Forecaster("_weighted", models={"_weighted": weighted})
    f.fit_threads_, f.bases_ = 1, ("actual_apy",)
    assert f._weighted() == bool(weight_power or half_life)
    weights = f._training_columns(rows, f._raw_weight(rows).max() if f._weighted() else None).weight
    assert (weights is None) == (not weight_power and not half_life)
    if weights is not None:  # under 1: LightGBM then takes the weighted median row itself
        assert 0 < weights.min() and weights.max() < 1
    (booster,) = f._train_members(rows, [1])
    assert booster.predict(np.ones((1, 1)))[0] == pytest.approx(expected)


def test_loaded_artifact_forecasts_exactly_like_the_fitted_model(
    sample_panel: pa.Table, fitted: ForecastModel, tmp_path: Path
) -> None:
    loaded = ForecastModel.load(fitted.save(tmp_path))
    assert loaded.version_ == fitted.version_
    assert loaded.forecasts(sample_panel).equals(fitted.forecasts(sample_panel))
    members = {h: len(f.members_) for h, f in loaded.horizons_.items()}
    assert members == {1: 1, 7: 3, 30: 3, "mean7": 3}


def test_an_ensemble_forecast_is_the_mean_of_its_members(
    sample_panel: pa.Table, fitted: ForecastModel
) -> None:
    seven = fitted.horizons_[7]
    rows = latest_rows(sample_panel)
    assert seven.bases_ == ("actual_apy", "rolling_apy_30d", "median_apy_14d")
    mean = seven._raw_predict(rows)
    members = []
    for i, booster in enumerate(seven.members_):
        alone = Forecaster._restore(
            {**seven.metadata(), "members": [{"base": seven.bases_[i], "rounds": 0}]},
            booster.model_to_string(),
        )
        members.append(alone._raw_predict(rows))
    np.testing.assert_allclose(mean, np.mean(members, axis=0), rtol=1e-12)
    # the members read the level differently: no two agree
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert np.abs(members[a] - members[b]).max() > 0.01


def test_stacked_horizons_average_their_own_and_the_other_horizons_forecasts(
    sample_panel: pa.Table, fitted: ForecastModel, tmp_path: Path
) -> None:
    import json

    mean7, one, seven = (fitted.horizons_[h] for h in ("mean7", 1, 7))
    rows = latest_rows(sample_panel)
    # the model's stacked horizons are the very forecasters it saves, not refits
    assert mean7.stacked_ == {1: one, 7: seven}
    assert fitted.horizons_[30].stacked_ == {7: seven}
    own = mean7._own_predict(rows)
    expected = (own + one.predict(rows) + seven.predict(rows)) / 3
    np.testing.assert_allclose(mean7.predict(rows), expected, rtol=1e-12)
    assert np.abs(own - expected).max() > 0.01  # the average moves the forecast
    # the interval keeps the width calibrated on the model's own forecasts
    point, lower, upper = mean7.predict_interval(rows)
    scl = mean7._scale(rows)
    np.testing.assert_allclose(point - lower, -mean7.quantiles_[0] * scl, rtol=1e-9)
    # fitted alone (as the backtest does) it fits its own 1- and 7-day models: the same numbers
    alone = Forecaster("production", horizon="mean7", num_threads=1).fit(sample_panel)
    np.testing.assert_allclose(alone.predict(rows), mean7.predict(rows), rtol=1e-9)
    # an artifact from before stacking forecasts with the model's own numbers
    path = Path(fitted.save(tmp_path))
    meta = json.loads((path / "metadata.json").read_text())
    del meta["horizons"]["mean7"]["stack"]
    (path / "metadata.json").write_text(json.dumps(meta))
    old = ForecastModel.load(path).horizons_["mean7"]
    np.testing.assert_allclose(old.predict(rows), own, rtol=1e-12)
    with pytest.raises(ValueError, match="averages horizons"):
        ForecastModel("production", horizons=(1, "mean7"))._check_stacks()


@pytest.mark.parametrize(
    ("ratio", "weight"), [(0.5, 1.0), (0.7, 1.0), (0.8, 0.5), (0.85, 0.25), (0.9, 0.0), (1.3, 0.0)]
)
def test_the_own_model_gives_way_to_the_stack_as_its_calibration_edge_fades(
    ratio: float, weight: float
) -> None:
    assert _stack_weight(ratio, (0.7, 0.9)) == pytest.approx(weight)
    assert _stack_weight(ratio, None) == 1.0
    assert _stack_weight(None, (0.7, 0.9)) == 1.0  # not calibrated: nothing says it has no edge


def test_the_30_day_forecast_weighs_its_own_model_by_its_calibration_edge(
    sample_panel: pa.Table, fitted: ForecastModel, tmp_path: Path
) -> None:
    import json

    thirty, seven = fitted.horizons_[30], fitted.horizons_[7]
    assert MODELS["production"].for_horizon(30).stack_edge == (0.7, 0.9)
    ratio = thirty.calibration_["ratio"]
    assert thirty.stack_weight_ == _stack_weight(ratio, (0.7, 0.9))
    rows = latest_rows(sample_panel)
    own, other = thirty._own_predict(rows), seven.predict(rows)
    w = thirty.stack_weight_
    assert 0.0 < w < 1.0  # on the sample its edge is a little past full (ratio about 0.72)
    np.testing.assert_allclose(thirty.predict(rows), (w * own + other) / (w + 1), rtol=1e-12)
    # a weight of its own, or none at all, moves the forecast
    thirty.stack_weight_ = 0.0
    np.testing.assert_allclose(thirty.predict(rows), other, rtol=1e-12)
    thirty.stack_weight_ = w
    # saved and loaded with the model; an artifact from before weighs its own model fully
    path = Path(fitted.save(tmp_path))
    assert ForecastModel.load(path).horizons_[30].stack_weight_ == w
    meta = json.loads((path / "metadata.json").read_text())
    del meta["horizons"]["30"]["stack_weight"]
    (path / "metadata.json").write_text(json.dumps(meta))
    old = ForecastModel.load(path).horizons_[30]
    np.testing.assert_allclose(old.predict(rows), (own + other) / 2, rtol=1e-12)


def test_every_pool_gets_every_horizon_with_an_interval(
    sample_panel: pa.Table, fitted: ForecastModel
) -> None:
    rows = fitted.forecasts(sample_panel)
    apy = rows.filter(pa.compute.equal(rows.column("metric"), "apy")).to_pylist()
    assert len(apy) == 99 * 4
    assert {r["horizon"] for r in apy} == {"1", "7", "30", "mean7"}
    for r in apy:
        assert r["lower"] <= r["upper"]
        days = 7 if r["horizon"] == "mean7" else int(r["horizon"])
        assert r["target_date"] == r["made_on"] + dt.timedelta(days=days)
    # the next-day forecast is the one pool_daily_metrics gets
    nextday = {
        r["pool_id"]: r["forecasted_apy"] for r in forecast_table(fitted, sample_panel).to_pylist()
    }
    assert nextday == {r["pool_id"]: r["value"] for r in apy if r["horizon"] == "1"}


def test_a_flat_pool_keeps_its_apy(sample_panel: pa.Table, fitted: ForecastModel) -> None:
    """Pools whose APY never moved (the sample has several at 0%): the model keeps them."""
    origins = latest_rows(add_targets(sample_panel, [1]))
    flat = origins.filter(pa.compute.equal(origins.column("stddev_apy_30d"), 0.0))
    assert flat.num_rows >= 5
    for h in (1, 7, 30, "mean7"):
        value = fitted.horizons_[h].predict(flat)
        np.testing.assert_allclose(value, flat.column("actual_apy").to_numpy(), atol=1e-9)


def test_a_short_history_still_gets_its_next_day_forecast() -> None:
    from panels import mean_reverting, metrics_of

    metrics = metrics_of(mean_reverting(5, 6)[:, :31])  # 30 days ahead: 5 targets
    panel = compute_features(metrics)
    fitted = ForecastModel("production", num_threads=1).fit(panel)
    assert set(fitted.horizons_) == {1, 7, "mean7"} and set(fitted.skipped_) == {"30"}
    rows = fitted.forecasts(panel)
    assert set(rows.column("horizon").to_pylist()) == {"1", "7", "mean7"}
    with pytest.raises(ValueError, match="training rows"):
        ForecastModel("production").fit(compute_features(metrics_of(mean_reverting(2, 6)[:, :5])))


def test_the_plan_model_is_a_named_option_without_intervals(sample_panel: pa.Table) -> None:
    plan = Forecaster("plan", params={"num_iterations": 20}, num_threads=1, models=ALL_MODELS).fit(
        sample_panel
    )
    value, lower, upper = plan.predict_interval(sample_panel.slice(0, 5))
    assert np.isfinite(value).all() and np.isnan(lower).all() and np.isnan(upper).all()
    with pytest.raises(ValueError, match="unknown model"):
        Forecaster("nope").fit(sample_panel)
    # a research model is no production model: the model knows it only when it is passed
    with pytest.raises(ValueError, match="unknown model 'plan'"):
        Forecaster("plan").fit(sample_panel)


def test_forecast_stage_writes_every_horizon_and_reruns_change_nothing(
    sample_store: Store, settings: Settings
) -> None:
    metrics_stage(sample_store, settings)
    first = forecast_stage(sample_store, settings)
    stored = sample_store.fetch_arrow(
        "SELECT * FROM forecasts ORDER BY pool_id, metric, horizon"
    ).to_pylist()
    assert len(stored) == first.details["horizon_rows"] == 99 * 7  # APY x4, TVL x3
    assert {r["model_version"] for r in stored} == {first.details["model_version"]}
    nextday = sample_store.fetch_arrow(
        "SELECT f.pool_id, f.value, m.forecasted_apy FROM forecasts AS f "
        "JOIN pool_daily_metrics AS m ON m.pool_id = f.pool_id AND m.date = f.target_date "
        "WHERE f.metric = 'apy' AND f.horizon = '1'"
    ).to_pylist()
    assert len(nextday) == 99
    assert all(r["value"] == pytest.approx(r["forecasted_apy"]) for r in nextday)
    assert forecast_stage(sample_store, settings).rows_written == 0

    # --model PATH: the saved artifact forecasts without training, the same numbers
    reused = settings.model_copy(update={"model_path": first.details["model"]})
    result = forecast_stage(sample_store, reused)
    assert (
        result.rows_written == 0
        and result.details["model_version"] == first.details["model_version"]
    )
    key = ", ".join(FORECASTS_KEY)
    again = sample_store.fetch_arrow(f"SELECT * FROM forecasts ORDER BY {key}").to_pylist()  # noqa: S608
    assert sorted(stored, key=lambda r: [r[k] for k in FORECASTS_KEY]) == again


# --- gs:// artifacts against the GCS emulator (the deploy tests' pattern) ------------------


def test_artifact_round_trips_through_gcs(
    sample_panel: pa.Table,
    fitted: ForecastModel,
    gcs_emulator: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from poolcast.deploy.gcs import make_client

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    make_client("acme").create_bucket("acme-models")
    where = fitted.save("gs://acme-models/forecast")
    assert where == f"gs://acme-models/forecast/production-{fitted.version_}"
    names = {b.name for b in make_client("acme").list_blobs("acme-models")}
    assert f"forecast/production-{fitted.version_}/metadata.json" in names
    loaded = ForecastModel.load(where)
    assert loaded.forecasts(sample_panel).equals(fitted.forecasts(sample_panel))


def test_fit_reports_each_horizon_done(sample_panel: pa.Table) -> None:
    done: list[int] = []
    ForecastModel(horizons=(1, 7)).fit(sample_panel, on_horizon=lambda: done.append(len(done)))
    assert done == [0, 1]  # a progress bar's advance, once per horizon


def test_plantrees_has_the_plans_trees_at_every_horizon() -> None:
    for h in (1, 7, 30, "mean7"):
        params = Forecaster("plantrees", horizon=h, models=ALL_MODELS).lgb_params()
        assert (params["learning_rate"], params["num_iterations"], params["num_leaves"]) == (
            0.03,
            800,
            64,
        )
        # same target, features and ensembles as production: only the trees differ
        plan, prod = ALL_MODELS["plantrees"].for_horizon(h), MODELS["production"].for_horizon(h)
        assert (plan.target, plan.features, plan.bases) == (prod.target, prod.features, prod.bases)
    # production's ensembles get the boosting budget of one model
    for h, members in ((7, 3), (30, 3), ("mean7", 3)):
        params = Forecaster("production", horizon=h).lgb_params()
        assert len(MODELS["production"].for_horizon(h).bases) == members
        assert members * params["num_iterations"] <= 300


def test_members_sharing_one_binned_set_train_the_same_boosters(
    sample_panel: pa.Table, fitted: ForecastModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from poolcast.model.trainer import LocalTrainer

    shared = LocalTrainer.train

    def one_at_a_time(self: LocalTrainer, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._binned = None  # every member bins its own dataset
        return shared(self, *args, **kwargs)

    monkeypatch.setattr(LocalTrainer, "train", one_at_a_time)
    separate = ForecastModel("production", num_threads=1).fit(sample_panel)
    assert separate.version_ == fitted.version_
