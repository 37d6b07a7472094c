"""``poolcast deploy plan`` and ``render-workflow``: the plan from the repository's files, the
local checks, and no call to Google (a client constructed at all fails the test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poolcast.deploy import cli, plan

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = {
    "terraform": "Terraform v1.11.4\non linux_amd64",
    "java": 'openjdk version "17.0.15" 2025-04-15',
    "mvn": "Apache Maven 3.8.7",
    "patchelf": "patchelf 0.14.3",
    "gcloud": "Google Cloud SDK 528.0.0",
}


@pytest.fixture
def offline(monkeypatch):
    """Tools answer with fixed versions; any Google client construction fails."""

    def no_google(*_a, **_k):
        raise AssertionError("deploy plan must not call Google")

    from google.cloud import dataproc_v1, storage

    monkeypatch.setattr(storage, "Client", no_google)
    monkeypatch.setattr(dataproc_v1, "BatchControllerClient", no_google)
    monkeypatch.setattr(plan, "_run", lambda cmd: VERSIONS[cmd[0]])
    for var in ("PROJECT_ID", "GOOGLE_CLOUD_PROJECT", "DB_SSLMODE", "PGSSLMODE"):
        monkeypatch.delenv(var, raising=False)


def _repo_copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "deploy", repo / "deploy", ignore=shutil.ignore_patterns(".terraform"))
    shutil.copy(ROOT / "cloudbuild.yaml", repo / "cloudbuild.yaml")
    return repo


def test_plan_lists_what_would_be_created_and_passes_its_checks(offline):
    res = CliRunner().invoke(
        cli.deploy_app, ["plan", "--project", "acme-prod", "--repo", str(ROOT)]
    )
    assert res.exit_code == 0, res.output
    out = res.output
    for line in (
        "+ google_workflows_workflow.pipeline",
        "+ google_service_account.build",
        "+ google_project_iam_custom_role.batch_runner",
        "+ google_cloudbuild_trigger.upload  [count",
        "gs://acme-prod-spark-code",
        "gs://acme-prod-poolcast-models",
        "[ok] workflow batch config",
        "[ok] runtime and jars: runtime 1.2 is Scala 2.12",
        "[ok] terraform: 1.11",
        "DB_SSLMODE require",
    ):
        assert line in out, line
    assert "FAIL" not in out
    resources = plan.resources(ROOT)
    assert len(resources) == out.count("\n  + ")


def test_plan_fails_on_a_stale_workflow_a_missing_tool_and_a_bad_project(
    offline, tmp_path, monkeypatch
):
    repo = _repo_copy(tmp_path)
    workflow = repo / "deploy" / "workflows" / "pipeline.yaml"
    workflow.write_text(workflow.read_text().replace('"9600m"', '"8g"'))

    def run(cmd):
        if cmd[0] == "mvn":
            raise FileNotFoundError("mvn")
        return VERSIONS[cmd[0]].replace("1.11.4", "1.4.0")

    monkeypatch.setattr(plan, "_run", run)
    res = CliRunner().invoke(
        cli.deploy_app, ["plan", "--project", "Acme_Prod", "--repo", str(repo)]
    )
    assert res.exit_code == 1
    assert "[FAIL] workflow batch config: stale" in res.output
    assert "[FAIL] mvn: not found" in res.output
    assert "[FAIL] terraform: 1.4 (need 1.5+" in res.output
    assert "[FAIL] project id: Acme_Prod" in res.output


def test_plan_refuses_scala_212_jars_on_a_213_runtime(offline, monkeypatch):
    """Issue 22 item 8: runtimes after 1.2 are Scala 2.13; the 2.12 jars fail there."""
    monkeypatch.setenv("PROJECT_ID", "acme-prod")
    from poolcast.settings import load_settings

    settings = load_settings()
    settings.gcp.runtime_version = "2.2"
    checks = {c.name: c for c in plan.check_local(settings, ROOT)}
    assert not checks["runtime and jars"].ok
    assert "Scala 2.13" in checks["runtime and jars"].detail


def test_render_workflow_rewrites_a_stale_block(tmp_path):
    repo = _repo_copy(tmp_path)
    workflow = repo / "deploy" / "workflows" / "pipeline.yaml"
    fresh = workflow.read_text()
    workflow.write_text(fresh.replace('"9600m"', '"8g"'))
    runner = CliRunner()
    res = runner.invoke(cli.deploy_app, ["render-workflow", "--check", "--repo", str(repo)])
    assert res.exit_code == 1 and "stale" in res.output
    res = runner.invoke(cli.deploy_app, ["render-workflow", "--repo", str(repo)])
    assert res.exit_code == 0 and workflow.read_text() == fresh
