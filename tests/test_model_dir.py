"""The model folder is the store's by default: every command finds the same models whichever
directory it runs in (issue 24: `./models` under the current directory lost them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poolcast.cli import app
from poolcast.settings import Settings, default_model_dir, load_settings


@pytest.fixture(autouse=True)
def _no_model_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POOLCAST_MODEL_DIR", "POOLCAST_STORE", "DB_HOST", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)


def test_next_to_the_embedded_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert load_settings().model_dir == "models"  # ./poolcast.duckdb: ./models, as before
    assert load_settings(store="/data/pc/x.duckdb").model_dir == "/data/pc/models"
    assert load_settings(store="sub/x.duckdb").model_dir == "sub/models"  # with the store
    assert Settings().model_dir == "models"  # the plain object: what tests construct
    monkeypatch.setenv("POOLCAST_MODEL_DIR", str(tmp_path / "mine"))
    assert load_settings(store="/data/pc/x.duckdb").model_dir == str(tmp_path / "mine")
    assert load_settings(model_dir="gs://b/m").model_dir == "gs://b/m"


def test_one_folder_per_postgresql_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/var/lib/me")
    url = "postgresql://u:secret@db.example:5433/pools?options=-csearch_path%3Dt_1"
    assert default_model_dir(url) == "/var/lib/me/poolcast/models/db.example-5433-pools-t_1"
    assert "secret" not in default_model_dir(url)
    monkeypatch.setenv("DB_HOST", "db.example")
    monkeypatch.setenv("DB_NAME", "pools")
    assert load_settings().model_dir == "/var/lib/me/poolcast/models/db.example-5432-pools"


@pytest.mark.parametrize("demo_template", ["duckdb"], indirect=True)
def test_every_command_finds_the_models_from_any_directory(
    demo_template: dict[str, tuple[str, Settings]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run` in one directory, `run --incremental` and `report` in others, one store path:
    the daily run reuses the model and the report shows its feature importance."""
    home, elsewhere, third = tmp_path / "home", tmp_path / "elsewhere", tmp_path / "third"
    for d in (home, elsewhere, third):
        d.mkdir()
    store = home / "pc.duckdb"
    shutil.copyfile(demo_template["demo"][0], store)
    runner = CliRunner()

    monkeypatch.chdir(elsewhere)
    out = runner.invoke(app, ["run", "--store", str(store)])
    assert out.exit_code == 0, out.output
    assert [p.name.split("-")[0] for p in (home / "models").iterdir()] == ["production"]
    assert not (elsewhere / "models").exists()

    monkeypatch.chdir(third)
    out = runner.invoke(app, ["run", "--incremental", "--store", str(store)])
    assert out.exit_code == 0, out.output
    assert "trained=False" in out.stdout  # the week's model, found from another directory
    out = runner.invoke(app, ["report", "--store", str(store), "-o", "r.html"])
    assert out.exit_code == 0, out.output
    blob = (third / "r.html").read_text().split('id="report-data">')[1].split("</script>")[0]
    model = json.loads(blob)["model"]
    assert "note" not in model and len(model["importance"]) == 4
    assert model["path"].startswith(str(home / "models"))

