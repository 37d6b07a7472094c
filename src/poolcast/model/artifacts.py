"""Where model artifacts live: a local folder or a ``gs://bucket/prefix``, behind one small
interface (read a file, write a file, list the artifacts under a folder), so saving, loading and
finding a recent model take one code path for both.

``google-cloud-storage`` is imported only for a ``gs://`` location; with ``STORAGE_EMULATOR_HOST``
set the client talks to that emulator anonymously (the tests', and a developer's, fake GCS).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol


class Location(Protocol):
    """A folder of files."""

    @property
    def uri(self) -> str:
        """The folder as a user writes it: a path, or ``gs://bucket/prefix``."""
        ...

    def child(self, name: str) -> Location: ...

    def read_text(self, name: str) -> str:
        """The file ``name`` in this folder; FileNotFoundError where there is none."""
        ...

    def write_bytes(self, name: str, data: bytes) -> None: ...

    def children_with(self, prefix: str, name: str) -> Iterator[tuple[str, str]]:
        """(folder uri, text of its file ``name``) of each folder directly in this one whose name
        starts with ``prefix`` and that holds ``name``; an unreadable file is skipped."""
        ...


def location(where: str | Path) -> Location:
    """The folder at ``where``: a local path or ``gs://bucket/prefix`` (a trailing ``/`` is
    dropped)."""
    text = str(where).rstrip("/")
    if text.startswith("gs://"):
        return GcsFolder(*_split_gs(text))
    return LocalFolder(text)


class LocalFolder:
    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def uri(self) -> str:
        return self.path

    def child(self, name: str) -> LocalFolder:
        return LocalFolder(str(Path(self.path) / name))

    def read_text(self, name: str) -> str:
        return Path(self.path, name).read_text()

    def write_bytes(self, name: str, data: bytes) -> None:
        Path(self.path).mkdir(parents=True, exist_ok=True)
        Path(self.path, name).write_bytes(data)

    def children_with(self, prefix: str, name: str) -> Iterator[tuple[str, str]]:
        for file in Path(self.path).glob(f"{glob.escape(prefix)}*/{glob.escape(name)}"):
            try:
                yield str(file.parent), file.read_text()
            except OSError:
                continue


class GcsFolder:
    def __init__(self, bucket: str, prefix: str, client: Any = None) -> None:
        self.bucket, self.prefix = bucket, prefix
        self._client = client  # one client for a folder and its children, made on first use

    def client(self) -> Any:
        if self._client is None:
            self._client = _gcs_client()
        return self._client

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def child(self, name: str) -> GcsFolder:
        return GcsFolder(self.bucket, self._key(name.strip("/")), self._client)

    def read_text(self, name: str) -> str:
        from google.api_core.exceptions import NotFound

        blob = self.client().bucket(self.bucket).blob(self._key(name))
        try:
            return blob.download_as_bytes().decode()
        except NotFound as exc:
            raise FileNotFoundError(f"{self.uri}/{name}: not found") from exc

    def write_bytes(self, name: str, data: bytes) -> None:
        self.client().bucket(self.bucket).blob(self._key(name)).upload_from_string(data)

    def children_with(self, prefix: str, name: str) -> Iterator[tuple[str, str]]:
        lead = f"{self.prefix}/" if self.prefix else ""
        for blob in self.client().list_blobs(self.bucket, prefix=f"{lead}{prefix}"):
            folder, _, file = blob.name[len(lead) :].partition("/")
            if file == name:
                yield f"gs://{self.bucket}/{lead}{folder}", blob.download_as_bytes().decode()


def _split_gs(uri: str) -> tuple[str, str]:
    rest = uri[len("gs://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"not a gs:// path: {uri!r}")
    return bucket, prefix.strip("/")


def _gcs_client() -> Any:
    """A storage client for the project in ``PROJECT_ID`` or ``GOOGLE_CLOUD_PROJECT``; anonymous
    against ``STORAGE_EMULATOR_HOST`` when that is set."""
    from google.cloud.storage import Client

    project = os.environ.get("PROJECT_ID") or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return Client(project=project or "local", credentials=AnonymousCredentials())
    return Client(project=project)


def save_files(where: str | Path, name: str, files: dict[str, bytes]) -> str:
    """Write ``files`` into the folder ``name`` under ``where``; returns that folder's uri."""
    folder = location(where).child(name)
    for fname, data in files.items():
        folder.write_bytes(fname, data)
    return folder.uri


def saved_metadata(model_dir: str, model: str) -> Iterator[tuple[str, str]]:
    """(artifact location, metadata.json text) of each saved ``model`` artifact directly under
    ``model_dir``: a local folder or a ``gs://bucket/prefix`` (where the Dataproc jobs save)."""
    yield from location(model_dir).children_with(f"{model}-", "metadata.json")
