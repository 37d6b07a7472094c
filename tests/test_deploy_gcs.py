"""Building the deploy artifacts, and upload / list / rollback against a local GCS emulator.

``gcp-storage-emulator`` runs in this process on a free port and speaks the GCS JSON API; the real
``google-cloud-storage`` client reaches it through ``STORAGE_EMULATOR_HOST``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.storage")

from typer.testing import CliRunner  # noqa: E402

from poolcast.deploy import _artifacts, gcs  # noqa: E402
from poolcast.deploy._artifacts import Artifact, ArtifactError  # noqa: E402

PROJECT = "acme-test"
BUCKET = gcs.code_bucket(PROJECT)


@pytest.fixture
def client(gcs_emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    c = gcs.make_client(PROJECT)
    bucket = c.bucket(BUCKET)
    if bucket.exists():
        for blob in c.list_blobs(BUCKET):
            blob.delete()
    else:
        c.create_bucket(BUCKET)
    return c


def _files(tmp_path: Path, tag: str = "v1") -> list[Artifact]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    files = {
        "jobs/metrics_job.py": ("main:metrics", f"print('metrics {tag}')\n"),
        "jobs/forecast_job.py": ("main:forecast", f"print('forecast {tag}')\n"),
        "poolcast-0.1.0.zip": ("python", f"zip {tag}"),
        "jars/postgresql-42.7.4.jar": ("jar", "jar-bytes"),
        "jars/synapseml-lightgbm_2.12-1.1.3.jar": ("jar", "jar-bytes-2"),
    }
    out = []
    for name, (role, body) in files.items():
        path = tmp_path / name.replace("/", "__")
        path.write_text(body)
        out.append(Artifact(name, path, role))
    return out


# --- artifacts -----------------------------------------------------------------------------------


def test_package_zip_is_reproducible_and_importable(tmp_path):
    a = _artifacts.build_package_zip(tmp_path / "a", version="0.1.0")
    b = _artifacts.build_package_zip(tmp_path / "b", version="0.1.0")
    assert a.read_bytes() == b.read_bytes()
    names = zipfile.ZipFile(a).namelist()
    assert "poolcast/__init__.py" in names and "poolcast/deploy/gcs.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    # zipimport, as pythonFileUris gives it to the driver
    code = "import poolcast.deploy.dataproc as d, sys; print(d.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(a)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(a) in out


def test_missing_entry_point_is_a_clear_error(tmp_path):
    pkg = tmp_path / "poolcast"
    (pkg / "jobs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "jobs" / "metrics_job.py").write_text("")
    with pytest.raises(ArtifactError, match="forecast entry point .* is missing"):
        _artifacts.entry_scripts(pkg)


def _fake_mvn(tmp_path: Path) -> tuple[str, Path]:
    """A stand-in for Maven that records its arguments and 'resolves' three jars."""
    log = tmp_path / "mvn-args.txt"
    script = tmp_path / "mvn"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, pathlib\n"
        f"pathlib.Path({str(log)!r}).open('a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "out = [a.split('=', 1)[1] for a in sys.argv if a.startswith('-DoutputDirectory=')][0]\n"
        "d = pathlib.Path(out); d.mkdir(parents=True, exist_ok=True)\n"
        "for n in ('synapseml-lightgbm_2.12-1.1.3.jar', 'lightgbmlib-3.3.510.jar',\n"
        "          'postgresql-42.7.4.jar'):\n"
        "    (d / n).write_bytes(n.encode())\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


def test_jars_are_resolved_once_with_runtime_groups_excluded(tmp_path):
    mvn, log = _fake_mvn(tmp_path)
    coords = [
        "com.microsoft.azure:synapseml-lightgbm_2.12:1.1.3",
        "org.postgresql:postgresql:42.7.4",
    ]
    jars = _artifacts.resolve_jars(coords, cache_dir=tmp_path / "cache", mvn=mvn)
    assert [j.name for j in jars] == [
        "lightgbmlib-3.3.510.jar",
        "postgresql-42.7.4.jar",
        "synapseml-lightgbm_2.12-1.1.3.jar",
    ]
    args = log.read_text()
    assert "dependency:copy-dependencies" in args and "-DincludeScope=runtime" in args
    assert "-DexcludeGroupIds=org.apache.spark,org.scala-lang,org.slf4j" in args
    pom = next((tmp_path / "cache").glob("*/pom.xml")).read_text()
    assert "<artifactId>synapseml-lightgbm_2.12</artifactId><version>1.1.3</version>" in pom
    # cached: a second call does not run Maven again
    again = _artifacts.resolve_jars(coords, cache_dir=tmp_path / "cache", mvn=mvn)
    assert again == jars and len(log.read_text().splitlines()) == 1
    with pytest.raises(ArtifactError, match="Maven coordinate"):
        _artifacts.resolve_jars(["not-a-coordinate"], cache_dir=tmp_path / "c2", mvn=mvn)


def test_runtime_requirements_skip_what_the_runtime_ships():
    reqs = _artifacts.runtime_requirements()
    names = " ".join(reqs)
    assert "pydantic" in names and "synapseml==1.1.3" in reqs  # the spark extra's wrappers
    assert "google-cloud-secret-manager" in names  # the job reads DB_PASSWORD_SECRET
    assert "pytest" not in names and "checkov" not in names  # no dev or test extras
    assert "numpy" not in names and "pyarrow" not in names and "pyspark" not in names


# --- upload / list / rollback on the emulator ---


@pytest.mark.parametrize("version", ["", "a/b", "x" * 64])
def test_upload_refuses_a_version_name_that_cannot_be_a_path_or_a_label(client, tmp_path, version):
    with pytest.raises(gcs.DeployError, match="invalid version"):
        gcs.upload_version(client, BUCKET, version, _files(tmp_path), package_version="0.1.0")


def test_upload_writes_version_then_latest_pointer(client, tmp_path):
    manifest = gcs.upload_version(
        client, BUCKET, "aaa111", _files(tmp_path), package_version="0.1.0"
    )
    names = sorted(b.name for b in client.list_blobs(BUCKET))
    assert names == [
        "latest/MANIFEST.json",
        "versions/aaa111/MANIFEST.json",
        "versions/aaa111/jars/postgresql-42.7.4.jar",
        "versions/aaa111/jars/synapseml-lightgbm_2.12-1.1.3.jar",
        "versions/aaa111/jobs/forecast_job.py",
        "versions/aaa111/jobs/metrics_job.py",
        "versions/aaa111/poolcast-0.1.0.zip",
    ]
    body = json.loads(client.bucket(BUCKET).blob("latest/MANIFEST.json").download_as_bytes())
    assert body["version"] == "aaa111"
    prefix = f"gs://{BUCKET}/versions/aaa111/"
    assert body["main_python_file_uris"] == {
        "metrics": prefix + "jobs/metrics_job.py",
        "forecast": prefix + "jobs/forecast_job.py",
    }
    assert body["jar_file_uris"] == [
        prefix + "jars/postgresql-42.7.4.jar",
        prefix + "jars/synapseml-lightgbm_2.12-1.1.3.jar",
    ]
    assert body["python_file_uris"] == [prefix + "poolcast-0.1.0.zip"]
    assert gcs.latest(client, BUCKET).main_uri("forecast") == manifest.main_uri("forecast")
    blob = client.bucket(BUCKET).get_blob("versions/aaa111/jobs/metrics_job.py")
    assert blob.download_as_text() == "print('metrics v1')\n"


def test_versions_are_immutable_but_reuploading_the_same_files_is_fine(
    client, tmp_path, monkeypatch
):
    clock = iter(f"2026-11-26T09:0{i}:00Z" for i in range(10))
    monkeypatch.setattr(gcs, "_now", lambda: next(clock))
    first = gcs.upload_version(
        client, BUCKET, "aaa111", _files(tmp_path / "a"), package_version="x"
    )
    said: list[str] = []
    gcs.upload_version(
        client,
        BUCKET,
        "aaa111",
        _files(tmp_path / "b"),
        package_version="x",
        progress=said.append,
    )
    assert sum(line.startswith("unchanged") for line in said) == 5
    assert gcs.latest(client, BUCKET).created == first.created  # the manifest was kept
    with pytest.raises(gcs.DeployError, match="other files"):
        gcs.upload_version(
            client, BUCKET, "aaa111", _files(tmp_path / "b")[:3], package_version="x"
        )
    with pytest.raises(gcs.DeployError, match="already exists with other content"):
        gcs.upload_version(
            client, BUCKET, "aaa111", _files(tmp_path / "c", "v2"), package_version="x"
        )
    # a dirty build may be replaced
    gcs.upload_version(client, BUCKET, "bbb-dirty", _files(tmp_path / "d"), package_version="x")
    gcs.upload_version(
        client, BUCKET, "bbb-dirty", _files(tmp_path / "e", "v2"), package_version="x"
    )
    text = client.bucket(BUCKET).blob("versions/bbb-dirty/jobs/metrics_job.py").download_as_text()
    assert text == "print('metrics v2')\n"


def test_list_and_rollback(client, tmp_path):
    gcs.upload_version(client, BUCKET, "aaa111", _files(tmp_path / "1", "v1"), package_version="x")
    gcs.upload_version(client, BUCKET, "bbb222", _files(tmp_path / "2", "v2"), package_version="x")
    versions = gcs.list_versions(client, BUCKET)
    assert {v.version for v in versions} == {"aaa111", "bbb222"}
    assert [v.version for v in versions if v.is_latest] == ["bbb222"]
    assert all(v.files == 5 for v in versions)

    previous, manifest = gcs.rollback(client, BUCKET, "aaa")  # a unique prefix is enough
    assert (previous, manifest.version) == ("bbb222", "aaa111")
    assert gcs.latest(client, BUCKET).version == "aaa111"
    assert (
        gcs.latest(client, BUCKET)
        .main_uri("metrics")
        .endswith("/versions/aaa111/jobs/metrics_job.py")
    )
    assert [v.version for v in gcs.list_versions(client, BUCKET) if v.is_latest] == ["aaa111"]

    with pytest.raises(gcs.DeployError, match="no version"):
        gcs.rollback(client, BUCKET, "ccc")
    gcs.upload_version(
        client, BUCKET, "aaa999", _files(tmp_path / "3"), package_version="x", point_latest=False
    )
    with pytest.raises(gcs.DeployError, match="ambiguous"):
        gcs.rollback(client, BUCKET, "aaa")
    assert gcs.latest(client, BUCKET).version == "aaa111"  # point_latest=False left it alone

    # a version with a missing file is never pointed at
    client.bucket(BUCKET).blob("versions/bbb222/jars/postgresql-42.7.4.jar").delete()
    with pytest.raises(gcs.DeployError, match="incomplete or altered"):
        gcs.rollback(client, BUCKET, "bbb222")
    assert gcs.latest(client, BUCKET).version == "aaa111"


def test_interrupted_upload_is_not_listed(client, tmp_path):
    client.bucket(BUCKET).blob("versions/half/jobs/metrics_job.py").upload_from_string("x")
    assert gcs.list_versions(client, BUCKET) == []
    with pytest.raises(gcs.DeployError, match="nothing is deployed"):
        gcs.latest(client, BUCKET)


def test_cli_upload_list_rollback(client, tmp_path, monkeypatch):
    from poolcast.deploy import cli

    made = iter([_files(tmp_path / "1", "v1"), _files(tmp_path / "2", "v2")])
    seen = []

    def fake_collect(out_dir, *, packages, with_pydeps, jar_cache):
        seen.append((tuple(packages), with_pydeps))
        return next(made)

    monkeypatch.setattr(cli, "collect", fake_collect)
    monkeypatch.setenv("PROJECT_ID", PROJECT)
    runner = CliRunner()
    for sha in ("aaa111", "bbb222"):
        res = runner.invoke(cli.deploy_app, ["upload", "--version", sha, "--no-pydeps"])
        assert res.exit_code == 0, res.output
    assert seen[0] == (
        ("com.microsoft.azure:synapseml-lightgbm_2.12:1.1.3", "org.postgresql:postgresql:42.7.4"),
        False,
    )
    res = runner.invoke(cli.deploy_app, ["list"])
    assert res.exit_code == 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines[0].startswith("* bbb222") or any(line.startswith("* bbb222") for line in lines)
    res = runner.invoke(cli.deploy_app, ["rollback", "aaa111"])
    assert res.exit_code == 0 and "bbb222 -> aaa111" in res.output
    res = runner.invoke(cli.deploy_app, ["rollback", "nope"])
    assert res.exit_code == 1 and "no version 'nope'" in res.output


def test_pydeps_targets_the_runtime_python_and_drops_what_it_ships(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **_kw):
        seen["cmd"] = cmd
        site = Path(cmd[cmd.index("--target") + 1])
        for name in (
            "numpy",
            "numpy.libs",
            "numpy-2.1.0.dist-info",
            "pydantic",
            "bin",
            "pydantic-2.9.0.dist-info",
            "pyarrow",
        ):
            (site / name).mkdir(parents=True)
            (site / name / "x.py").write_text("")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(_artifacts.subprocess, "run", fake_run)
    target = _artifacts.build_pydeps(["pydantic>=2"], tmp_path)
    cmd = seen["cmd"]
    assert cmd[cmd.index("--python-version") + 1] == "3.12"  # Dataproc runtime 1.2
    assert "--only-binary=:all:" in cmd and "manylinux_2_28_x86_64" in cmd
    tops = {n.split("/")[0] for n in zipfile.ZipFile(target).namelist()}
    assert tops == {"pydantic", "pydantic-2.9.0.dist-info"}


def test_collect_upload_then_a_batch_from_latest(client, tmp_path, monkeypatch):
    """The whole chain on this machine: build, upload, read latest/, build the batch request."""
    import shutil

    from poolcast.deploy import dataproc
    from poolcast.settings import load_settings

    source = tmp_path / "poolcast"
    shutil.copytree(_artifacts.package_dir(), source, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "jobs").mkdir(exist_ok=True)
    for rel in _artifacts.ENTRY_SCRIPTS.values():
        if not (source / rel).exists():
            (source / rel).write_text("print('entry point')\n")
    mvn, _log = _fake_mvn(tmp_path)  # named "mvn", found on PATH by resolve_jars
    monkeypatch.setenv("PATH", f"{Path(mvn).parent}{os.pathsep}{os.environ['PATH']}")
    settings = load_settings()
    artifacts = _artifacts.collect(
        tmp_path / "build",
        packages=settings.spark.packages,
        source=source,
        jar_cache=tmp_path / "jars",
    )
    assert {a.role for a in artifacts} == {"main:metrics", "main:forecast", "python", "jar"}
    gcs.upload_version(client, BUCKET, "ccc333", artifacts, package_version="0.1.0")

    settings.gcp.project_id = PROJECT
    batch = dataproc.build_batch(settings, "forecast", gcs.latest(client, BUCKET))
    base = f"gs://{BUCKET}/versions/ccc333/"
    assert batch.pyspark_batch.main_python_file_uri == base + "jobs/forecast_job.py"
    assert list(batch.pyspark_batch.python_file_uris) == [base + "poolcast-0.1.0.zip"]
    assert len(batch.pyspark_batch.jar_file_uris) == 3
    # what is in the bucket is what a driver would import
    data = client.bucket(BUCKET).blob("versions/ccc333/poolcast-0.1.0.zip").download_as_bytes()
    (tmp_path / "dl.zip").write_bytes(data)
    assert "poolcast/deploy/dataproc.py" in zipfile.ZipFile(tmp_path / "dl.zip").namelist()


def test_cli_list_of_a_missing_bucket_is_a_clean_error(client, monkeypatch):
    from poolcast.deploy import cli

    monkeypatch.setenv("PROJECT_ID", PROJECT)
    res = CliRunner().invoke(cli.deploy_app, ["list", "--bucket", "no-such-bucket-here"])
    assert res.exit_code == 1
    assert "error: Cloud Storage:" in res.output and "Traceback" not in res.output
