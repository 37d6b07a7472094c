"""Build the files a Dataproc Serverless batch needs, on this machine, before any upload.

* the ``poolcast`` package as a zip (``pythonFileUris`` accepts ``.py``, ``.egg`` and ``.zip``),
  built straight from the package directory, byte-for-byte reproducible for the same sources;
* the two entry-point scripts (``poolcast/jobs/metrics_job.py``, ``poolcast/jobs/forecast_job.py``)
  as separate files for ``mainPythonFileUri``;
* the jars of ``settings.spark.packages`` (SynapseML LightGBM and the PostgreSQL JDBC driver) with
  their transitive dependencies, resolved from Maven Central by Maven into a gitignored cache, minus
  what the Spark runtime already ships (Scala, Spark, SLF4J);
* optionally ``pydeps.zip``: the package's Python dependencies that the runtime image lacks, as
  manylinux wheels for the runtime's Python (3.12 on runtime 1.2), unpacked by Spark from
  ``archiveUris`` and put on ``PYTHONPATH``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from poolcast.deploy import _native

#: The entry points, by batch kind, relative to the package directory.
ENTRY_SCRIPTS: dict[str, str] = {
    "metrics": "jobs/metrics_job.py",
    "forecast": "jobs/forecast_job.py",
}

#: Maven groups the Dataproc 1.2 runtime already has on its classpath: shipping a second
#: scala-library or spark-* jar next to the runtime's own only invites version clashes.
RUNTIME_PROVIDED_GROUPS: tuple[str, ...] = ("org.scala-lang", "org.apache.spark", "org.slf4j")

#: Python distributions the Dataproc 1.2 runtime already ships (PySpark and its scientific stack).
RUNTIME_PROVIDED_PYTHON: tuple[str, ...] = (
    "pyspark",
    "py4j",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
)

#: A fixed timestamp for zip entries, so the same sources give the same bytes (and the same md5).
_ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)


class ArtifactError(RuntimeError):
    """A deploy artifact could not be built; the message says what is missing and what to do."""


@dataclass(frozen=True)
class Artifact:
    """One file to upload: ``name`` is its path under ``versions/<sha>/``."""

    name: str
    path: Path
    role: str  # "main:<kind>", "python", "jar" or "archive"


def package_dir() -> Path:
    """The directory of the installed (or editable) ``poolcast`` package."""
    import poolcast

    return Path(poolcast.__file__).resolve().parent


def _write_entry(zf: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def build_package_zip(out_dir: Path, *, version: str, source: Path | None = None) -> Path:
    """Zip the package (``poolcast/...`` at the root, importable by zipimport); reproducible."""
    source = source or package_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"poolcast-{version}.zip"
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )
    if not any(p.name == "__init__.py" and p.parent == source for p in files):
        raise ArtifactError(f"{source} is not the poolcast package (no __init__.py)")
    with zipfile.ZipFile(target, "w") as zf:
        for path in files:
            _write_entry(zf, f"poolcast/{path.relative_to(source).as_posix()}", path.read_bytes())
    return target


def entry_scripts(source: Path | None = None) -> dict[str, Path]:
    """The two Dataproc entry points; a clear error when the Spark engine has not shipped them."""
    source = source or package_dir()
    found: dict[str, Path] = {}
    for kind, rel in ENTRY_SCRIPTS.items():
        path = source / rel
        if not path.is_file():
            raise ArtifactError(
                f"the {kind} entry point {path} is missing: it is part of the Spark engine "
                "(src/poolcast/jobs/); nothing was uploaded"
            )
        found[kind] = path
    return found


def jar_cache_dir() -> Path:
    """Where resolved jars are kept: ``POOLCAST_JAR_CACHE``, else ``.cache/jars`` (gitignored)."""
    return Path(os.environ.get("POOLCAST_JAR_CACHE") or Path.cwd() / ".cache" / "jars").resolve()


def _pom(coordinates: Sequence[str]) -> str:
    deps = []
    for coord in coordinates:
        parts = coord.split(":")
        if len(parts) != 3 or not all(parts):
            raise ArtifactError(f"{coord!r} is not a Maven coordinate group:artifact:version")
        group, artifact, version = parts
        deps.append(
            f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
            f"<version>{version}</version></dependency>"
        )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>poolcast.deploy</groupId><artifactId>batch-jars</artifactId>"
        "<version>0</version>\n  <packaging>pom</packaging>\n  <dependencies>\n"
        + "\n".join(deps)
        + "\n  </dependencies>\n</project>\n"
    )


def resolve_jars(
    coordinates: Sequence[str],
    *,
    cache_dir: Path | None = None,
    exclude_groups: Iterable[str] = RUNTIME_PROVIDED_GROUPS,
    mvn: str | None = None,
) -> list[Path]:
    """The jars of ``coordinates`` and their runtime dependencies, resolved once and cached.

    The cache key is the coordinates and exclusions, so a version bump resolves anew. Maven's own
    local repository (``~/.m2``) makes a second resolution offline-fast.
    """
    if not coordinates:
        return []
    exclude = sorted(set(exclude_groups))
    key = hashlib.sha256("\n".join([*sorted(coordinates), "--", *exclude]).encode()).hexdigest()
    target = (cache_dir or jar_cache_dir()) / key[:16]
    done = target / ".resolved"
    if not done.exists():
        mvn = mvn or shutil.which("mvn")
        if not mvn:
            raise ArtifactError(
                "Maven (mvn) is needed to resolve the batch jars from Maven Central: "
                "apt-get install maven, or set POOLCAST_JAR_CACHE to a folder of resolved jars"
            )
        jars_dir = target / "jars"
        if jars_dir.exists():
            shutil.rmtree(jars_dir)
        target.mkdir(parents=True, exist_ok=True)
        (target / "pom.xml").write_text(_pom(coordinates))
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(target / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={jars_dir}",
        ]
        if exclude:
            cmd.append("-DexcludeGroupIds=" + ",".join(exclude))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise ArtifactError("Maven could not resolve the jars:\n" + "\n".join(tail))
        done.write_text("\n".join(coordinates) + "\n")
    jars = sorted((target / "jars").glob("*.jar"))
    if not jars:
        raise ArtifactError(f"no jars were resolved into {target / 'jars'}")
    return jars


def build_pydeps(
    requirements: Sequence[str],
    out_dir: Path,
    *,
    python_version: str = "3.12",
    platforms: Sequence[str] = ("manylinux_2_28_x86_64", "manylinux2014_x86_64"),
    skip: Iterable[str] = RUNTIME_PROVIDED_PYTHON,
    libgomp: Path | None = None,
) -> Path:
    """``pydeps.zip``: ``requirements`` installed for the runtime's Python, minus what it ships.

    Also minus protobuf and grpcio (the runtime's Google libraries are built on its own; first
    on ``PYTHONPATH``, ours would shadow them), and with ``libgomp`` next to each library that
    needs it (:mod:`poolcast.deploy._native`; ``libgomp``: a copy to use instead of downloading
    the manylinux one).

    Binary wheels only (``--only-binary=:all:``) for the runtime's platform (glibc 2.28 or newer,
    x86_64), so nothing is compiled here and the result imports on the Dataproc image. Needs PyPI
    (or a mirror pip is set up for).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    site = out_dir / "pydeps"
    if site.exists():
        shutil.rmtree(site)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        str(site),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        *[arg for platform in platforms for arg in ("--platform", platform)],
        *requirements,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ArtifactError(
            "pip could not build pydeps.zip:\n" + (proc.stderr or proc.stdout)[-2000:]
        )
    skip_names = {s.lower().replace("-", "_") for s in skip}
    for entry in list(site.iterdir()):
        base = entry.name
        if base.endswith(".dist-info"):
            base = base.split("-")[0]
        elif base.endswith(".libs"):  # auditwheel's vendored shared libraries, e.g. numpy.libs
            base = base[: -len(".libs")]
        if base.lower().replace("-", "_") in skip_names or entry.name == "bin":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    _native.drop_distributions(site, _native.RUNTIME_SHARED_PYTHON)
    try:
        _native.vendor_libgomp(site, libgomp)
    except (_native.NativeError, subprocess.CalledProcessError) as exc:
        raise ArtifactError(str(exc)) from exc
    target = out_dir / "pydeps.zip"
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(p for p in site.rglob("*") if p.is_file()):
            _write_entry(zf, path.relative_to(site).as_posix(), path.read_bytes())
    return target


def runtime_requirements(
    skip: Iterable[str] = RUNTIME_PROVIDED_PYTHON, extras: Iterable[str] = ("spark", "gcp")
) -> list[str]:
    """The installed package's requirements (base and ``extras``) minus what the runtime ships.

    The ``spark`` extra brings ``synapseml``'s Python wrappers: with ``jarFileUris`` (unlike
    ``spark.jars.packages``) Spark does not put the jars' Python code on the path. The ``gcp``
    extra brings Secret Manager (the DB password) and Cloud Monitoring for the job.
    """
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("poolcast") or []
    except PackageNotFoundError as exc:  # pragma: no cover - only in a broken install
        raise ArtifactError("poolcast is not installed; pip install -e . first") from exc
    skip_names = {s.lower().replace("-", "_") for s in skip}
    out = []
    wanted = {f"extra == {q}{e}{q}" for e in extras for q in "'\""}
    for req in reqs:
        if "extra ==" in req and not any(marker in req for marker in wanted):
            continue
        name = req.split(";")[0].strip()
        base = name.split("[")[0]
        for sep in "<>=!~ ":
            base = base.split(sep)[0]
        if base.lower().replace("-", "_") not in skip_names:
            out.append(name)
    return out


def git_version(repo: Path | None = None) -> str:
    """The commit this build comes from; ``-dirty`` when the work tree has uncommitted changes."""
    repo = repo or package_dir()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ArtifactError(
            "cannot tell the git commit (not a git checkout?): pass --version explicitly"
        ) from exc
    return sha + ("-dirty" if dirty else "")


def collect(
    out_dir: Path,
    *,
    packages: Sequence[str],
    with_pydeps: bool = False,
    source: Path | None = None,
    jar_cache: Path | None = None,
) -> list[Artifact]:
    """Everything ``deploy upload`` sends, built into ``out_dir``."""
    from poolcast import __version__

    source = source or package_dir()
    artifacts = [
        Artifact(f"jobs/{path.name}", path, f"main:{kind}")
        for kind, path in entry_scripts(source).items()
    ]
    pkg = build_package_zip(out_dir, version=__version__, source=source)
    artifacts.append(Artifact(pkg.name, pkg, "python"))
    artifacts += [
        Artifact(f"jars/{jar.name}", jar, "jar")
        for jar in resolve_jars(packages, cache_dir=jar_cache)
    ]
    if with_pydeps:
        deps = build_pydeps(runtime_requirements(), out_dir)
        artifacts.append(Artifact(deps.name, deps, "archive"))
    return artifacts
