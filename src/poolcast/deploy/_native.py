"""What ``pydeps.zip`` must not shadow, and the native library it must carry.

* :func:`drop_distributions` removes installed distributions by their ``RECORD`` (the files pip
  wrote), so a distribution living in a shared namespace folder (protobuf in ``google/``) goes
  without taking its neighbours (``google/cloud/...``) along. ``pydeps`` is first on
  ``PYTHONPATH``: a protobuf or grpcio there would shadow the runtime's own, which the runtime's
  other Google libraries were built against.
* :func:`vendor_libgomp`: the ``lightgbm`` wheel's ``lib_lightgbm.so`` needs ``libgomp.so.1`` from
  the system (the wheel does not carry it), and the runtime image is not documented to have it.
  Each library that needs it gets a copy next to it, built for glibc 2.17 (the manylinux2014 copy
  scikit-learn's wheel vendors), and a ``RUNPATH`` of ``$ORIGIN``, as auditwheel does; needs
  ``patchelf`` (``apt-get install patchelf``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

#: Runtime 1.2 ships these (its Google client libraries are built on them): never in pydeps.
RUNTIME_SHARED_PYTHON: tuple[str, ...] = ("protobuf", "grpcio", "grpcio-status")

#: Where a glibc-2.17 libgomp comes from: scikit-learn's manylinux2014 wheel vendors one.
LIBGOMP_WHEEL = "scikit-learn==1.7.2"
LIBGOMP_SONAME = "libgomp.so.1"


class NativeError(RuntimeError):
    """A native library could not be vendored; the message says what to install."""


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def drop_distributions(site: Path, names: Iterable[str]) -> list[str]:
    """Remove each installed distribution in ``names`` from ``site`` (pip ``--target`` layout)
    by its RECORD; returns the distributions removed."""
    wanted = {_norm(n) for n in names}
    removed = []
    for info in sorted(site.glob("*.dist-info")):
        dist = info.name[: -len(".dist-info")].rsplit("-", 1)[0]
        if _norm(dist) not in wanted:
            continue
        record = info / "RECORD"
        files = []
        if record.exists():
            files = [line.split(",")[0] for line in record.read_text().splitlines() if line]
        for rel in files:
            path = (site / rel).resolve()
            if site.resolve() in path.parents and path.is_file():
                path.unlink()
        shutil.rmtree(info, ignore_errors=True)
        # folders the distribution emptied (google/protobuf/...), never a shared one in use
        for folder in sorted({(site / r).parent for r in files}, key=lambda p: -len(p.parts)):
            while folder != site and folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
        removed.append(dist)
    return removed


def _patchelf() -> str:
    exe = shutil.which("patchelf")
    if not exe:
        raise NativeError(
            "pydeps.zip: lightgbm's library needs libgomp.so.1 shipped next to it, which needs "
            "patchelf (apt-get install patchelf)"
        )
    return exe


def needed(library: Path) -> list[str]:
    """The shared libraries ``library`` names as NEEDED."""
    out = subprocess.run(
        [_patchelf(), "--print-needed", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def libgomp_from_wheel(
    out_dir: Path,
    *,
    requirement: str = LIBGOMP_WHEEL,
    python_version: str = "3.12",
    platform: str = "manylinux2014_x86_64",
) -> Path:
    """Download ``requirement``'s manylinux wheel (no dependencies) and take its libgomp."""
    with tempfile.TemporaryDirectory(prefix="poolcast-libgomp-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            python_version,
            "--platform",
            platform,
            "-d",
            tmp,
            requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise NativeError(f"pip could not download {requirement}: {proc.stderr[-1000:]}")
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                for member in zf.namelist():
                    base = member.rsplit("/", 1)[-1]
                    if base.startswith("libgomp") and ".so" in base:
                        out_dir.mkdir(parents=True, exist_ok=True)
                        target = out_dir / base
                        target.write_bytes(zf.read(member))
                        return target
    raise NativeError(f"{requirement}'s wheel has no libgomp")


def vendor_libgomp(site: Path, libgomp: Path | None = None) -> list[Path]:
    """Give every library under ``site`` that needs ``libgomp.so.1`` its own copy and a RUNPATH
    of ``$ORIGIN``. Returns the libraries changed (none: nothing needed it)."""
    libraries: Sequence[Path] = [
        p for p in sorted(site.rglob("*.so*")) if p.is_file() and not p.name.startswith("libgomp")
    ]
    users = [p for p in libraries if LIBGOMP_SONAME in needed(p)]
    if not users:
        return []
    if libgomp is None:
        libgomp = libgomp_from_wheel(Path(tempfile.mkdtemp(prefix="poolcast-libgomp-")))
    patchelf = _patchelf()
    for lib in users:
        copy = lib.parent / libgomp.name
        shutil.copyfile(libgomp, copy)
        if libgomp.name != LIBGOMP_SONAME:
            subprocess.run(
                [patchelf, "--replace-needed", LIBGOMP_SONAME, libgomp.name, str(lib)],
                check=True,
            )
        subprocess.run([patchelf, "--set-rpath", "$ORIGIN", str(lib)], check=True)
    return users
