"""`poolcast report` on the real sample data: the data it collects from both stores, and the page
opened in Debian's chromium (headless), which must run its script without a console message and
fill every section offline: on the store after two daily runs, after `make demo`, and empty."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from poolcast.cli import app
from poolcast.ops.report import backtest_from_file, collect, write_report
from poolcast.settings import Settings
from poolcast.store import Store

DAY = dt.date(2025, 6, 5)  # the daily template's second run
# Flags for a closed network and root (docs of this machine kind); a fresh profile per call.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0",
]
SECTIONS = ["forecasts", "freshness", "validate", "panels", "errors", "backtest", "importance",
            "runs"]
duckdb_only = pytest.mark.parametrize("demo_template", ["duckdb"], indirect=True)
empty_duckdb_only = pytest.mark.parametrize("store_url", ["duckdb"], indirect=True)


def _chromium(tmp_path: Path, *args: str) -> str:
    """Chromium's stdout; fails on any console message of the page (an error, a warning, a
    log line: the page writes none)."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("Debian's chromium is needed: `scripts/test-prereqs.sh` installs it")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    done = subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    return done.stdout


def _dom(tmp_path: Path, page: Path, fragment: str = "") -> str:
    dom = _chromium(tmp_path, "--dump-dom", page.resolve().as_uri() + fragment)
    assert '<body data-rendered="ok"' in dom, dom[:2000]
    assert '<p id="errors" class="errors"></p>' in dom
    return dom


def _script_elements(dom: str) -> int:
    class Counter(HTMLParser):
        n = 0

        def handle_starttag(self, tag: str, attrs: object) -> None:
            self.n += tag == "script"

    parser = Counter()
    parser.feed(dom)
    return parser.n


def _section(dom: str, name: str) -> str:
    """The HTML of one ``<section data-section=name>``."""
    return dom.split(f'data-section="{name}"')[1].split("</section>")[0]


def _marks(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'data-marks="(\d+)"', html)]


def _shown(dom: str, name: str) -> bool:
    return not re.search(rf'data-section="{name}"[^>]*hidden', dom)


def _page_data(page: Path) -> dict[str, Any]:
    blob = page.read_text().split('id="report-data">')[1].split("</script>")[0]
    return json.loads(blob)


def _table_order(dom: str) -> list[str]:
    return re.findall(r'<tr[^>]*data-pool="([^"]+)"', _section(dom, "forecasts"))


# -- what is collected, on both stores ---------------------------------------------------------
def test_collects_the_same_story_from_either_store(daily_store: tuple[Store, Settings]) -> None:
    store, settings = daily_store
    data = collect(store, settings, top=6, days=60)
    assert data["empty"] is None
    assert data["as_of"] == DAY.isoformat()  # the latest metrics run's as-of, and it says so
    assert data["as_of_why"].startswith("the as-of day of the latest successful metrics run")
    assert data["forecast_day"] == "2025-06-06"

    table = data["table"]
    rows = table["rows"]
    assert table["total"] == table["shown"] == len(rows) == 99  # every active pool's forecasts
    moves = [abs(r["move"]) for r in rows if r["move"] is not None]
    assert moves == sorted(moves, reverse=True) and moves[0] > 1
    for r in rows:
        assert set(r["h"]) == {"1", "7", "mean7", "30"}, r["pool_id"]
        assert r["stale"] == (r["age_days"] >= 7)
        assert r["h"]["1"]["date"] == (
            dt.date.fromisoformat(r["apy_date"]) + dt.timedelta(days=1)
        ).isoformat()
        for f in r["h"].values():
            assert f["lower"] <= f["value"] <= f["upper"]

    fresh = data["freshness"]
    assert fresh["fresh"] + fresh["stale"] == fresh["active"] == data["summary"]["active_pools"]
    assert sum(n + m for _, n, m in fresh["by_day"]) == fresh["active"]
    assert all(p["stale"] and p["age_days"] >= 7 for p in fresh["stale_pools"])

    panels = data["panels"]
    assert panels["start"] == (DAY - dt.timedelta(days=59)).isoformat()
    assert panels["end"] == (DAY + dt.timedelta(days=30)).isoformat()  # one axis for all
    pools = panels["pools"]
    assert len(pools) == 6
    tvls = [p["tvl"] for p in pools]
    assert tvls == sorted(tvls, reverse=True)
    for p in pools:
        assert p["observed_days"] >= panels["min_days"]  # no pool with a few days of data
        assert panels["start"] <= p["actual"][0][0] and p["actual"][-1][0] <= p["last_day"]
        assert p["forecast"], p["pool_id"]

    [scored] = store.fetch_arrow(
        "SELECT COUNT(*) AS n FROM pool_daily_metrics "
        "WHERE date = $1 AND is_observed AND forecasted_apy IS NOT NULL",
        [DAY],
    ).to_pylist()
    errors = data["errors"]
    assert len(errors["values"]) == scored["n"] > 20
    assert errors["mae"] == pytest.approx(sum(abs(e) for e in errors["values"]) / scored["n"])
    assert errors["naive_mae"] > 0 and len(errors["worst"]) == 5

    importance = data["model"]["importance"]
    assert [i["horizon"] for i in importance] == ["1", "7", "mean7", "30"]  # every horizon
    for imp in importance:
        assert sum(share for _, share in imp["features"]) == pytest.approx(1.0)
        assert imp["file"] == f"h{imp['horizon']}.txt"
    backtest = data["backtest"]
    assert backtest["source"] == "holdout" and "own holdout" in backtest["title"]
    assert [r["horizon"] for r in backtest["rows"]] == ["1", "7", "mean7", "30"]
    assert all(r["from"] < r["to"] <= "2025-06-05" and r["n"] > 0 for r in backtest["rows"])

    checks = data["validate"]
    assert checks["as_of"] == DAY.isoformat() and checks["ok"] is True
    assert {c["name"] for c in checks["checks"]} >= {"stale_pools", "forecast_coverage"}
    assert data["quarantine"] == {"count": 0, "rows": []}
    assert [r["stage"] for r in data["runs"]] == ["metrics", "forecast"] * 2  # oldest first
    json.dumps(data, allow_nan=False)  # valid JSON: no NaN


def test_stale_pools_are_flagged_and_left_out_of_the_panels(
    demo_store: tuple[Store, Settings],
) -> None:
    """After `make demo` the as-of day is 2025-11-13, but 98 of the 99 sample pools stopped in
    May/June: the report says so instead of calling them active as of that day."""
    store, settings = demo_store
    data = collect(store, settings)
    assert data["as_of"] == "2025-11-13"
    fresh = data["freshness"]
    assert (fresh["fresh"], fresh["stale"], fresh["active"]) == (1, 98, 99)
    assert fresh["stale_pools"][0]["last_day"] < "2025-06-04"  # the oldest first
    stale = [r for r in data["table"]["rows"] if r["stale"]]
    assert len(stale) == 98 and all(r["apy_date"] <= "2025-06-05" for r in stale)
    panels = data["panels"]
    assert [p["last_day"] for p in panels["pools"]] == ["2025-11-13"]  # the one live pool
    assert panels["without_data"] == 98
    assert data["errors"]["values"] == [] and data["errors"]["mae"] is None
    assert any(c["name"] == "stale_pools" and c["status"] == "warn"
               for c in data["validate"]["checks"])


def test_the_stored_validate_is_shown_with_when_it_ran(
    daily_store: tuple[Store, Settings],
) -> None:
    """Without a stored validate of the as-of day the report runs the checks (and says so); with
    one it shows that, when it ran, and a stage run that finished after it."""
    from poolcast.ops.validate import run_checks
    from poolcast.ops.validate_results import record_checks

    store, settings = daily_store
    assert collect(store, settings)["validate"]["source"] == "run"
    result = run_checks(store, settings.model_copy(update={"as_of": DAY}), seed=2)
    record_checks(store, result, 5)
    shown = collect(store, settings)["validate"]
    assert shown["source"] == "stored" and shown["as_of"] == DAY.isoformat()
    assert shown["ok"] is result.ok and shown["seed"] == 2 and shown["changed_after"] is None
    assert [c["status"] for c in shown["checks"]] == [c.status for c in result.checks]
    assert shown["counts"]["pass"] == sum(c.status == "pass" for c in result.checks)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", shown["checked_at"])
    # A validate from before the last runs: the page says a run finished after it.
    record_checks(store, result, 5, now=dt.datetime(2020, 1, 1, 8, 30))
    old = collect(store, settings)["validate"]
    assert old["checked_at"] == "2020-01-01 08:30 UTC"
    assert old["unchanged_since"] == shown["unchanged_since"]  # the same statuses as before
    assert old["changed_after"]["stage"] in ("metrics", "forecast")


def test_an_empty_store_gives_a_page_that_says_what_to_run(store: Store) -> None:
    data = collect(store, Settings())
    assert data["empty"]["reason"].startswith("no pool snapshots in")
    assert [s[0] for s in data["empty"]["steps"]] == [
        "poolcast ingest data/sample", "poolcast run", "poolcast report"
    ]


def test_a_store_without_tables_says_db_init_first(tmp_path: Path) -> None:
    from poolcast.store import open_store

    with open_store(str(tmp_path / "new.duckdb")) as s:
        data = collect(s, Settings())
    assert "poolcast db init" in data["empty"]["reason"]
    assert data["empty"]["steps"][0][0] == "poolcast db init"


# -- the page in a browser ---------------------------------------------------------------------
@duckdb_only
def test_report_renders_every_section(daily_store: tuple[Store, Settings], tmp_path: Path) -> None:
    store, settings = daily_store
    page = write_report(store, settings, tmp_path / "report.html", top=6)
    text = page.read_text()
    # self-contained: nothing to fetch
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text
    data = _page_data(page)

    dom = _dom(tmp_path, page)
    assert not _shown(dom, "empty") and all(_shown(dom, s) for s in SECTIONS)
    assert "As of 2025-06-05: the as-of day of the latest successful metrics run" in dom

    forecasts = _section(dom, "forecasts")
    assert _table_order(dom) == [r["pool_id"] for r in data["table"]["rows"]]
    assert 'data-key="move" tabindex="0" aria-sort="descending"' in forecasts
    for header in ("TVL", "last APY", "1 day", "7 days", "mean 7 days", "30 days"):
        assert f">{header}</th>" in forecasts
    stale = sum(r["stale"] for r in data["table"]["rows"])
    assert forecasts.count('class="stale-row"') == stale > 0

    freshness = _section(dom, "freshness")
    assert _marks(freshness)[0] > 0 and "stale before 2025-05-30" in freshness
    validate = _section(dom, "validate")
    assert validate.count('class="status-') == len(data["validate"]["checks"])
    assert "No input record quarantined" in validate

    panels = _section(dom, "panels")
    marks = _marks(panels)
    assert len(marks) == 6 and all(n > 0 for n in marks), marks
    assert panels.count('class="series-actual"') == 6
    assert panels.count('class="series-ahead"') >= 6
    for svg in re.findall(r"<svg.*?</svg>", panels):  # one dated axis: the same month labels
        assert re.findall(r">(\w{3} \d{4})</text>", svg) == ["Apr 2025", "May 2025", "Jun 2025",
                                                           "Jul 2025"]
        ahead = [float(x) for x in re.findall(r'<rect x="([-\d.]+)"[^>]*series-ahead', svg)]
        assert ahead and max(ahead) + 6 <= 420 - 16  # the 30-day forecast inside the plot
    errors = _section(dom, "errors")
    assert errors.count('class="bar"') >= 3  # a distribution, not one bar
    backtest = _section(dom, "backtest")
    assert "Backtest: the current model's own holdout" in backtest and _marks(backtest)[0] == 8
    assert "80% by construction" in backtest
    importance = _section(dom, "importance")
    assert len(_marks(importance)) == 4 and all(n > 0 for n in _marks(importance))
    for name in ("h1.txt", "h7.txt", "hmean7.txt", "h30.txt"):
        assert name in importance
    runs = _section(dom, "runs")
    assert runs.count('class="bar"') == 4

    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1400,3000", f"--screenshot={shot}", page.resolve().as_uri())
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1400, 3000)
    assert shot.stat().st_size > 50_000  # a blank page compresses to a few kB


@duckdb_only
def test_forecast_table_sorts_by_any_column(
    daily_store: tuple[Store, Settings], tmp_path: Path
) -> None:
    """``#sort=KEY`` (descending with ``-``) runs the same code as a click on a header."""
    store, settings = daily_store
    page = write_report(store, settings, tmp_path / "report.html")
    rows = _page_data(page)["table"]["rows"]
    by_tvl = sorted(rows, key=lambda r: -(r["tvl"] or 0))
    assert _table_order(_dom(tmp_path, page, "#sort=-tvl")) == [r["pool_id"] for r in by_tvl]
    by_7 = sorted(rows, key=lambda r: r["h"]["7"]["value"])
    dom = _dom(tmp_path, page, "#sort=h7")
    assert _table_order(dom) == [r["pool_id"] for r in by_7]
    assert 'data-key="h7" tabindex="0" aria-sort="ascending"' in dom


@duckdb_only
def test_after_make_demo_the_page_flags_stale_pools(
    demo_store: tuple[Store, Settings], tmp_path: Path
) -> None:
    """After `make demo` no forecast has been scored yet and most pools are stale: the page says
    both, and still draws every chart it has data for."""
    store, settings = demo_store
    # ... and `poolcast validate` was run: the page shows its stored summary and when it ran.
    from poolcast.ops.validate import run_checks
    from poolcast.ops.validate_results import record_checks

    stored = record_checks(store, run_checks(store, settings, seed=3), 5)
    page = write_report(store, settings, tmp_path / "report.html")
    dom = _dom(tmp_path, page)
    checks = _section(dom, "validate")
    ran = stored["checked_at"].strftime("%Y-%m-%d %H:%M UTC")
    assert f"The latest `poolcast validate` of 2025-11-13, stored in the store: run {ran}" in checks
    assert "(seed 3)" in checks and "run finished after it" not in checks
    assert checks.count('class="status-') == 10
    assert "98 of 99 active pools have no data since 2025-11-07" in dom
    assert '<b>not scored yet</b>' in dom and '<b>98</b>' in dom
    assert _section(dom, "forecasts").count('class="stale-row"') == 98
    assert "no forecast for 2025-11-13 has been scored yet" in _section(dom, "errors").lower()
    assert len(_marks(_section(dom, "panels"))) == 1  # the one pool with data in the window
    assert "98 active pools have fewer days of data in this window" in dom
    for name in ("freshness", "panels", "backtest", "importance", "runs"):
        assert all(n > 0 for n in _marks(_section(dom, name))), name


@duckdb_only
def test_a_spike_is_clipped_and_marked(daily_store: tuple[Store, Settings], tmp_path: Path):
    store, settings = daily_store
    largest = collect(store, settings)["panels"]["pools"][0]["pool_id"]
    store.execute(
        "UPDATE pool_daily_metrics SET actual_apy = 612.5 WHERE pool_id = $1 AND date = $2",
        [largest, DAY - dt.timedelta(days=20)],
    )
    page = write_report(store, settings, tmp_path / "report.html")
    panel = _section(_dom(tmp_path, page), "panels").split('data-chart="pool"')[1]
    assert largest in panel and "value(s) clipped" in panel
    assert "actual APY 612.50% on 2025-05-16 (outside the axis, clipped)" in panel
    ticks = [float(t.replace(",", "")) for t in re.findall(r">([\d,.]+)%</text>", panel)]
    assert ticks and max(ticks) < 100  # the axis keeps the pool's usual range


@duckdb_only
def test_backtest_file_names_its_source_cutoffs_and_coverage(
    daily_store: tuple[Store, Settings], tmp_path: Path
) -> None:
    store, settings = daily_store
    bt = tmp_path / "bt.json"
    bt.write_text(json.dumps(_backtest_json()))
    page = write_report(store, settings, tmp_path / "report.html", backtest=bt)
    backtest = _section(_dom(tmp_path, page), "backtest")
    assert "Backtest: rolling-origin backtest from bt.json" in backtest
    assert "2 cutoffs 2025-03-01 to 2025-03-15 every 14 days" in backtest
    assert "forecasts made on 2025-03-01 to 2025-03-28" in backtest
    assert ">81.0%</td>" in backtest and _marks(backtest)[0] == 2


@empty_duckdb_only
def test_empty_store_page(store: Store, tmp_path: Path) -> None:
    page = write_report(store, Settings(), tmp_path / "report.html")
    dom = _dom(tmp_path, page)
    assert _shown(dom, "empty") and not any(_shown(dom, s) for s in SECTIONS[:-1])
    body = _section(dom, "empty")
    assert f"No pool snapshots in {store.safe_url()} yet. Run, in this order" in body
    assert f"<code>poolcast ingest data/sample --store {store.safe_url()}</code>" in body
    assert "no finished runs recorded" in _section(dom, "runs")


@duckdb_only
def test_pool_text_is_shown_as_text_never_run(
    demo_store: tuple[Store, Settings], tmp_path: Path
) -> None:
    store, settings = demo_store
    evil = '<!--<script></script><script>document.body.dataset.rendered="pwned"</script><b>x'
    store.execute(
        "UPDATE pools SET symbol = $1 WHERE pool_id = $2",
        [evil, "aa70268e-4b52-42bf-a116-608b370f9501"],  # the one pool in the panels
    )
    page = write_report(store, settings, tmp_path / "report.html")
    dom = _dom(tmp_path, page)  # rendered "ok": the planted script did not run
    assert _script_elements(dom) == 2  # the page's own two: data and chart code
    assert "&lt;!--&lt;script&gt;&lt;/script&gt;&lt;script&gt;" in dom  # as text in the heading


# -- the command -------------------------------------------------------------------------------
def _backtest_json() -> dict[str, Any]:
    def row(model: str, mae: float, **kw: Any) -> dict[str, Any]:
        return {"split": "all", "subset": "all", "metric": "apy", "horizon": 1, "model": model,
                "mae": mae, "n": 100, "pools": 9, "coverage": 0.81, **kw}

    return {
        "cutoffs": ["2025-03-01", "2025-03-15"],
        "config": {"cutoffs": 2, "spacing_days": 14, "window_days": 14, "train_days": 60},
        "summary": [row("naive", 0.8), row("production", 0.7),
                    row("production", 9.0, split="unseen")],
    }


def test_cli_writes_the_report(daily_store: tuple[Store, Settings], tmp_path: Path, monkeypatch):
    store, _ = daily_store
    monkeypatch.chdir(tmp_path)
    url = store.url
    store.close()
    bt = tmp_path / "bt.json"
    bt.write_text(json.dumps(_backtest_json()))
    out = CliRunner().invoke(
        app, ["report", "--store", url, "-o", str(tmp_path / "r.html"), "--backtest", str(bt)]
    )
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == f"wrote {tmp_path / 'r.html'}"
    data = _page_data(tmp_path / "r.html")
    assert data["backtest"]["rows"] == [
        {"horizon": "1", "naive_mae": 0.8, "mae": 0.7, "n": 100, "coverage": 0.81, "pools": 9}
    ]
    assert data["backtest"]["cutoffs"] == ["2025-03-01", "2025-03-15"]
    assert backtest_from_file(bt) == data["backtest"]


def test_a_backtest_file_that_is_not_json_is_named(tmp_path: Path) -> None:
    bt = tmp_path / "bt.txt"
    bt.write_text("poolcast backtest: 6 cutoffs\n")
    with pytest.raises(ValueError, match=r"--backtest .*bt.txt is not `poolcast backtest --json`"):
        backtest_from_file(bt)
    bt.write_text("[1, 2]")
    with pytest.raises(ValueError, match='no "summary" list'):
        backtest_from_file(bt)


def test_reads_the_model_where_the_run_saved_it_on_gcs(
    daily_store: tuple[Store, Settings], gcs_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Dataproc the forecast run records a ``gs://`` model: the report reads it from there."""
    from poolcast.deploy.gcs import make_client
    from poolcast.model import ForecastModel
    from poolcast.ops.report_model import model_part

    store, settings = daily_store
    data = collect(store, settings)
    local = data["model"]  # collect() moves the model's backtest to the top level
    assert local["importance"] and data["backtest"]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    client = make_client("acme")
    if client.lookup_bucket("acme-report-models") is None:  # one emulator for the session
        client.create_bucket("acme-report-models")
    where = ForecastModel.load(local["path"]).save("gs://acme-report-models/models")
    remote = model_part({"details": {"model": where, "model_version": local["version"]}})
    assert remote["path"] == where and "note" not in remote
    assert remote["importance"] == local["importance"]
    assert remote["backtest"]["rows"] == data["backtest"]["rows"]
    missing = model_part({"details": {"model": "gs://acme-report-models/nothing-here"}})
    assert "importance" not in missing
    assert missing["note"].startswith("model files not readable at gs://acme-report-models/")


def test_a_relative_model_path_is_found_next_to_the_store(
    demo_store: tuple[Store, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that recorded ``models/...`` (relative to where it ran, next to its store) is read
    from the store's folder when the report runs somewhere else."""
    from poolcast.ops.report_model import model_part

    store, settings = demo_store
    saved = Path(collect(store, settings)["model"]["path"])
    home = tmp_path / "home"
    shutil.copytree(saved, home / "models" / saved.name)
    run = {"details": {"model": f"models/{saved.name}"}, "parameters": {"store": "x.duckdb"}}
    monkeypatch.chdir(tmp_path)
    found = model_part(run, str(home / "x.duckdb"))
    assert found["path"] == str(home / "models" / saved.name) and found["importance"]
    assert "note" in model_part(run, str(tmp_path / "elsewhere" / "x.duckdb"))


def test_cli_on_an_empty_store_writes_the_page(store: Store, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = store.url
    store.close()
    out = CliRunner().invoke(app, ["report", "--store", url])
    assert out.exit_code == 0, out.output
    data = _page_data(tmp_path / "poolcast-report.html")
    assert data["empty"]["steps"][0][0] == "poolcast ingest data/sample"
