"""The code bucket: immutable ``versions/<sha>/`` folders and a ``latest/`` pointer.

Layout of ``gs://<project>-spark-code`` (the plan's "Versioning Strategy")::

    versions/<sha>/jobs/metrics_job.py     mainPythonFileUri of the metrics batch
    versions/<sha>/jobs/forecast_job.py    mainPythonFileUri of the forecast batch
    versions/<sha>/poolcast-<v>.zip        pythonFileUris
    versions/<sha>/jars/*.jar              jarFileUris (no Maven Central from serverless workers)
    versions/<sha>/pydeps.zip              archiveUris (optional)
    versions/<sha>/MANIFEST.json           the list above, with full gs:// URIs and md5s
    latest/MANIFEST.json                   a copy of the manifest of the version in service

``latest/`` holds only the manifest, never copies of the files: moving it is one object write, so a
batch or workflow that reads it always sees one whole version, and rollback is that same write
pointing back. A version folder is written once; uploading the same sha again skips files whose md5
matches and refuses different content (only ``<sha>-dirty`` builds may be overwritten).

Works against Google Cloud Storage or, when ``STORAGE_EMULATOR_HOST`` is set, a local emulator.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poolcast.deploy._artifacts import Artifact

if TYPE_CHECKING:  # pragma: no cover
    from google.cloud.storage import Client

VERSIONS = "versions/"
LATEST_MANIFEST = "latest/MANIFEST.json"
MANIFEST = "MANIFEST.json"

_CONTENT_TYPES = {
    ".py": "text/x-python",
    ".zip": "application/zip",
    ".jar": "application/java-archive",
    ".json": "application/json",
}


class DeployError(RuntimeError):
    """An upload, list or rollback could not be done; the message says why."""


def code_bucket(project_id: str) -> str:
    """The plan's code bucket name for a project."""
    return f"{project_id}-spark-code"


#: Folder of the forecast model artifacts in the models bucket.
MODELS_PREFIX = "models"


def models_bucket(project_id: str) -> str:
    """The bucket the Dataproc forecast batches keep their model artifacts in (Terraform's
    ``google_storage_bucket.poolcast_models``): it outlives the batches, unlike a driver's disk."""
    return f"{project_id}-poolcast-models"


def default_model_dir(project_id: str) -> str:
    """``gs://<project>-poolcast-models/models``: ``POOLCAST_MODEL_DIR`` of the batches."""
    return f"gs://{models_bucket(project_id)}/{MODELS_PREFIX}"


def make_client(project_id: str | None) -> Client:
    """A storage client; anonymous against ``STORAGE_EMULATOR_HOST`` when that is set."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project_id or "local", credentials=AnonymousCredentials())
    return storage.Client(project=project_id)


@dataclass
class ManifestFile:
    name: str
    role: str
    md5: str
    size: int


@dataclass
class Manifest:
    """What one version holds, and the URIs a batch needs, ready to use."""

    version: str
    bucket: str
    created: str
    package_version: str
    files: list[ManifestFile] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{VERSIONS}{self.version}/"

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{self.prefix}{name}"

    def uris(self, role: str) -> list[str]:
        return [self.uri(f.name) for f in self.files if f.role == role]

    def main_uri(self, kind: str) -> str:
        found = self.uris(f"main:{kind}")
        if not found:
            raise DeployError(f"version {self.version} has no entry point for {kind!r}")
        return found[0]

    def to_json(self) -> str:
        body: dict[str, Any] = asdict(self)
        # Full URIs for consumers that cannot build strings easily (the workflow reads these).
        body["main_python_file_uris"] = {
            f.role.split(":", 1)[1]: self.uri(f.name)
            for f in self.files
            if f.role.startswith("main:")
        }
        body["python_file_uris"] = self.uris("python")
        body["jar_file_uris"] = self.uris("jar")
        body["archive_uris"] = [f"{u}#pydeps" for u in self.uris("archive")]
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        raw = json.loads(text)
        try:
            return cls(
                version=raw["version"],
                bucket=raw["bucket"],
                created=raw["created"],
                package_version=raw.get("package_version", ""),
                files=[ManifestFile(**f) for f in raw["files"]],
            )
        except (KeyError, TypeError) as exc:
            raise DeployError(f"not a poolcast manifest: {exc}") from exc


def _md5_b64(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def upload_version(
    client: Client,
    bucket_name: str,
    version: str,
    artifacts: Sequence[Artifact],
    *,
    package_version: str,
    point_latest: bool = True,
    progress: Callable[[str], None] = lambda _msg: None,
) -> Manifest:
    """Upload ``artifacts`` to ``versions/<version>/``, write its manifest, move ``latest/``."""
    if not version or "/" in version or len(version) > 63:
        # at most 63 characters: the name is also the batches' code-version label
        raise DeployError(f"invalid version {version!r}")
    names = [a.name for a in artifacts]
    if len(set(names)) != len(names):
        raise DeployError(f"two artifacts share a name: {sorted(names)}")
    bucket = client.bucket(bucket_name)
    prefix = f"{VERSIONS}{version}/"
    existing = {b.name: b for b in client.list_blobs(bucket_name, prefix=prefix)}
    mutable = version.endswith("-dirty")
    manifest = Manifest(
        version=version, bucket=bucket_name, created=_now(), package_version=package_version
    )
    for art in artifacts:
        md5 = _md5_b64(art.path)
        size = art.path.stat().st_size
        name = prefix + art.name
        blob = existing.get(name)
        if blob is not None and blob.md5_hash == md5:
            progress(f"unchanged  gs://{bucket_name}/{name}")
        elif blob is not None and not mutable:
            raise DeployError(
                f"gs://{bucket_name}/{name} already exists with other content: a version is "
                "written once (commit your change and upload the new sha)"
            )
        else:
            new = bucket.blob(name)
            new.upload_from_filename(
                str(art.path),
                content_type=_CONTENT_TYPES.get(art.path.suffix, "application/octet-stream"),
            )
            progress(f"uploaded   gs://{bucket_name}/{name} ({size} bytes)")
        manifest.files.append(ManifestFile(name=art.name, role=art.role, md5=md5, size=size))
    # The manifest goes last: a version folder without one is an interrupted upload, never listed.
    # A complete clean version keeps its manifest (and creation time) when uploaded again.
    previous = existing.get(prefix + MANIFEST)
    if previous is not None and not mutable:
        kept = Manifest.from_json(previous.download_as_bytes())
        if sorted((f.name, f.md5) for f in kept.files) != sorted(
            (f.name, f.md5) for f in manifest.files
        ):
            raise DeployError(
                f"version {version} already exists with other files: a version is written once"
            )
        manifest = kept
    else:
        bucket.blob(prefix + MANIFEST).upload_from_string(
            manifest.to_json(), content_type="application/json"
        )
    if point_latest:
        set_latest(client, bucket_name, version)
        progress(f"latest  -> {version}")
    return manifest


def read_manifest(client: Client, bucket_name: str, name: str) -> Manifest:
    from google.api_core.exceptions import NotFound

    try:
        data = client.bucket(bucket_name).blob(name).download_as_bytes()
    except NotFound as exc:
        raise DeployError(f"gs://{bucket_name}/{name} does not exist") from exc
    return Manifest.from_json(data)


def latest(client: Client, bucket_name: str) -> Manifest:
    """The manifest ``latest/`` points at (what ``submit`` and the workflow run)."""
    try:
        return read_manifest(client, bucket_name, LATEST_MANIFEST)
    except DeployError as exc:
        raise DeployError(
            f"nothing is deployed in gs://{bucket_name} yet: run `poolcast deploy upload`"
        ) from exc


@dataclass
class VersionInfo:
    version: str
    created: str
    files: int
    size: int
    is_latest: bool


def list_versions(client: Client, bucket_name: str) -> list[VersionInfo]:
    """Complete versions (those with a manifest), newest first."""
    try:
        current: str | None = latest(client, bucket_name).version
    except DeployError:
        current = None
    out = []
    for blob in client.list_blobs(bucket_name, prefix=VERSIONS):
        parts = blob.name.split("/")
        if len(parts) != 3 or parts[2] != MANIFEST:
            continue
        man = Manifest.from_json(blob.download_as_bytes())
        out.append(
            VersionInfo(
                version=man.version,
                created=man.created,
                files=len(man.files),
                size=sum(f.size for f in man.files),
                is_latest=man.version == current,
            )
        )
    out.sort(key=lambda v: (v.created, v.version), reverse=True)
    return out


def resolve_version(client: Client, bucket_name: str, wanted: str) -> str:
    """A full version from a unique prefix (like git's short shas)."""
    versions = [v.version for v in list_versions(client, bucket_name)]
    if wanted in versions:
        return wanted
    matches = [v for v in versions if v.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DeployError(
            f"no version {wanted!r} in gs://{bucket_name} (see `poolcast deploy list`)"
        )
    raise DeployError(f"{wanted!r} is ambiguous: {', '.join(sorted(matches))}")


def set_latest(client: Client, bucket_name: str, version: str) -> Manifest:
    """Point ``latest/`` at a complete version: check every file is there, then one copy."""
    bucket = client.bucket(bucket_name)
    manifest = read_manifest(client, bucket_name, f"{VERSIONS}{version}/{MANIFEST}")
    present = {b.name: b.md5_hash for b in client.list_blobs(bucket_name, prefix=manifest.prefix)}
    broken = [f.name for f in manifest.files if present.get(manifest.prefix + f.name) != f.md5]
    if broken:
        raise DeployError(
            f"version {version} is incomplete or altered ({', '.join(broken)}); latest unchanged"
        )
    source = bucket.blob(f"{VERSIONS}{version}/{MANIFEST}")
    bucket.copy_blob(source, bucket, LATEST_MANIFEST)
    return manifest


def rollback(client: Client, bucket_name: str, wanted: str) -> tuple[str | None, Manifest]:
    """Point ``latest/`` back at an earlier version; returns (previous version, new manifest)."""
    version = resolve_version(client, bucket_name, wanted)
    try:
        previous: str | None = latest(client, bucket_name).version
    except DeployError:
        previous = None
    return previous, set_latest(client, bucket_name, version)
