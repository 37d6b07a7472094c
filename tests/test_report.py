"""`poolcast report` on the real sample data: the data it collects from both stores, and the page
opened in Debian's chromium (headless), which must run its script and draw every chart offline."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

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
    "--hide-scrollbars", "--virtual-time-budget=5000",
]
duckdb_only = pytest.mark.parametrize("demo_template", ["duckdb"], indirect=True)


def _chromium(tmp_path: Path, *args: str) -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("Debian's chromium is needed: `scripts/test-prereqs.sh` installs it")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    done = subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return done.stdout


def _dom(tmp_path: Path, page: Path) -> str:
    return _chromium(tmp_path, "--dump-dom", page.resolve().as_uri())


def _script_elements(dom: str) -> int:
    class Counter(HTMLParser):
        n = 0

        def handle_starttag(self, tag: str, attrs: object) -> None:
            self.n += tag == "script"

    parser = Counter()
    parser.feed(dom)
    return parser.n


def _marks(dom: str) -> list[int]:
    return [int(n) for n in re.findall(r'data-marks="(\d+)"', dom)]


def test_collects_the_same_story_from_either_store(daily_store: tuple[Store, Settings]) -> None:
    store, settings = daily_store
    data = collect(store, settings, top=6, days=60)
    assert data["as_of"] == DAY.isoformat()  # the latest metrics run's as-of
    assert data["forecast_day"] == "2025-06-06"
    pools = data["pools"]
    assert len(pools) == 6
    tvls = [p["tvl"] for p in pools]
    assert tvls == sorted(tvls, reverse=True)
    for p in pools:
        assert 1 <= len(p["actual"]) <= 60 and p["actual"][-1][0] <= p["last_day"]
        assert p["forecast"], p["pool_id"]  # at least the next-day forecast of the latest run
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
    assert sum(share for _, share in importance) == pytest.approx(1.0)
    assert [r["stage"] for r in data["runs"]] == ["metrics", "forecast"] * 2  # oldest first
    json.dumps(data, allow_nan=False)  # valid JSON: no NaN


@duckdb_only
def test_report_renders_and_draws_every_chart(
    daily_store: tuple[Store, Settings], tmp_path: Path
) -> None:
    store, settings = daily_store
    page = write_report(store, settings, tmp_path / "report.html", top=6)
    text = page.read_text()
    # self-contained: nothing to fetch
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text

    dom = _dom(tmp_path, page)
    assert '<body data-rendered="ok"' in dom
    assert '<p id="errors" class="errors"></p>' in dom
    marks = _marks(dom)
    # 6 pool charts, the error histogram, backtest, feature importance, run durations
    assert len(marks) == 10 and all(n > 0 for n in marks), marks
    assert dom.count('class="series-actual"') == 6
    assert dom.count('class="series-ahead"') >= 6
    errors_chart = dom.split('id="errors-chart"')[1].split("</section>")[0]
    assert errors_chart.count('class="bar"') >= 3  # a distribution, not one bar
    runs_chart = dom.split('id="runs-chart"')[1].split("</section>")[0]
    assert runs_chart.count('class="bar"') == 4

    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1280,2600", f"--screenshot={shot}", page.resolve().as_uri())
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1280, 2600)
    assert shot.stat().st_size > 50_000  # a blank page compresses to a few kB


@duckdb_only
def test_first_run_renders_with_what_it_has(
    demo_store: tuple[Store, Settings], tmp_path: Path
) -> None:
    """After `make demo` no forecast has been scored yet: the page says so and still renders."""
    store, settings = demo_store
    page = write_report(store, settings, tmp_path / "report.html")
    dom = _dom(tmp_path, page)
    assert '<body data-rendered="ok"' in dom
    assert "no forecast for 2025-11-13 has been scored yet" in dom
    assert len([n for n in _marks(dom) if n > 0]) == 9  # every chart but the error histogram


@duckdb_only
def test_pool_text_is_shown_as_text_never_run(
    demo_store: tuple[Store, Settings], tmp_path: Path
) -> None:
    store, settings = demo_store
    evil = '<!--<script></script><script>document.body.dataset.rendered="pwned"</script><b>x'
    store.execute(
        "UPDATE pools SET symbol = $1 WHERE pool_id = $2",
        [evil, "f981a304-bb6c-45b8-b0c5-fd2f515ad23a"],  # the largest pool by TVL
    )
    page = write_report(store, settings, tmp_path / "report.html")
    dom = _dom(tmp_path, page)
    assert '<body data-rendered="ok"' in dom  # the planted script did not run
    assert _script_elements(dom) == 2  # the page's own two: data and chart code
    assert "&lt;!--&lt;script&gt;&lt;/script&gt;&lt;script&gt;" in dom  # as text in the heading


def test_cli_writes_the_report(daily_store: tuple[Store, Settings], tmp_path: Path, monkeypatch):
    store, _ = daily_store
    monkeypatch.chdir(tmp_path)
    url = store.url
    store.close()
    bt = tmp_path / "bt.json"
    bt.write_text(json.dumps({"summary": [
        {"split": "all", "subset": "all", "metric": "apy", "horizon": 1, "model": "naive",
         "mae": 0.8, "n": 100},
        {"split": "all", "subset": "all", "metric": "apy", "horizon": 1, "model": "production",
         "mae": 0.7, "n": 100},
        {"split": "unseen", "subset": "all", "metric": "apy", "horizon": 1, "model": "production",
         "mae": 9.0, "n": 10},
    ]}))
    out = CliRunner().invoke(
        app, ["report", "--store", url, "-o", str(tmp_path / "r.html"), "--backtest", str(bt)]
    )
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == f"wrote {tmp_path / 'r.html'}"
    blob = (tmp_path / "r.html").read_text().split('id="report-data">')[1].split("</script>")[0]
    data = json.loads(blob)
    assert data["backtest"] == [{"horizon": "1", "naive_mae": 0.8, "mae": 0.7, "n": 100}]
    assert backtest_from_file(bt) == data["backtest"]


def test_reads_the_model_where_the_run_saved_it_on_gcs(
    daily_store: tuple[Store, Settings], gcs_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Dataproc the forecast run records a ``gs://`` model: the report reads it from there."""
    from poolcast.deploy.gcs import make_client
    from poolcast.model import ForecastModel
    from poolcast.ops.report import _model

    store, settings = daily_store
    data = collect(store, settings)
    local = data["model"]  # collect() moves the model's backtest to the top level
    assert local["importance"] and data["backtest"]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    client = make_client("acme")
    if client.lookup_bucket("acme-report-models") is None:  # one emulator for the session
        client.create_bucket("acme-report-models")
    where = ForecastModel.load(local["path"]).save("gs://acme-report-models/models")
    remote = _model({"details": {"model": where, "model_version": local["version"]}})
    assert remote["path"] == where and "note" not in remote
    assert remote["importance"] == local["importance"] and remote["backtest"] == data["backtest"]
    missing = _model({"details": {"model": "gs://acme-report-models/nothing-here"}})
    assert "importance" not in missing
    assert missing["note"].startswith("model files not readable at gs://acme-report-models/")


def test_empty_store_writes_nothing(store: Store, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = store.url
    store.close()
    out = CliRunner().invoke(app, ["report", "--store", url])
    assert out.exit_code == 1 and "run `poolcast ingest`" in out.stderr
    assert not (tmp_path / "poolcast-report.html").exists()
