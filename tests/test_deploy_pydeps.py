"""pydeps.zip: what it must not shadow, and the libgomp lightgbm needs (issue 22 item 9).

The libgomp test runs the real ``patchelf`` on the real ``lib_lightgbm.so`` of the installed
lightgbm wheel, then asks the dynamic loader (``ldd``) where ``libgomp`` would come from.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from poolcast.deploy import _artifacts, _native


def _install(site: Path, dist: str, version: str, files: dict[str, str]) -> None:
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Name: {dist}\nVersion: {version}\n")
    record = [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    for rel, body in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        record.append(f"{rel},sha256=x,{len(body)}")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def test_protobuf_and_grpcio_are_dropped_without_their_namespace_neighbours(tmp_path):
    site = tmp_path / "site"
    _install(site, "protobuf", "5.29.0", {"google/protobuf/__init__.py": "", "google/_upb.so": ""})
    _install(site, "grpcio", "1.70.0", {"grpc/__init__.py": "", "grpc/_cython/x.so": ""})
    _install(site, "grpcio_status", "1.70.0", {"grpc_status/__init__.py": ""})
    _install(
        site,
        "google_cloud_secret_manager",
        "2.22.0",
        {"google/cloud/secretmanager/__init__.py": ""},
    )
    removed = _native.drop_distributions(site, _native.RUNTIME_SHARED_PYTHON)
    assert sorted(removed) == ["grpcio", "grpcio_status", "protobuf"]
    left = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert left == [
        "google/cloud/secretmanager/__init__.py",
        "google_cloud_secret_manager-2.22.0.dist-info/METADATA",
        "google_cloud_secret_manager-2.22.0.dist-info/RECORD",
    ]
    assert not (site / "grpc").exists() and not (site / "google" / "protobuf").exists()


def test_build_pydeps_drops_what_would_shadow_the_runtime(tmp_path, monkeypatch):
    def fake_run(cmd, **_kw):
        site = Path(cmd[cmd.index("--target") + 1])
        _install(site, "protobuf", "5.29.0", {"google/protobuf/__init__.py": ""})
        _install(site, "pydantic", "2.9.0", {"pydantic/__init__.py": ""})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(_artifacts.subprocess, "run", fake_run)
    names = zipfile.ZipFile(_artifacts.build_pydeps(["pydantic"], tmp_path)).namelist()
    assert not any(n.startswith(("google/", "protobuf")) for n in names), names
    assert "pydantic/__init__.py" in names


def _lib_lightgbm() -> Path:
    lightgbm = pytest.importorskip("lightgbm")
    lib = Path(lightgbm.__file__).parent / "lib" / "lib_lightgbm.so"
    if not lib.exists():
        pytest.skip("this lightgbm has no lib/lib_lightgbm.so")
    return lib


def _system_libgomp() -> Path:
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        path = Path(folder) / "libgomp.so.1"
        if path.exists():
            return path
    pytest.skip("no libgomp.so.1 on this machine to stand in for the downloaded one")


@pytest.mark.skipif(not shutil.which("patchelf"), reason="patchelf is not installed")
@pytest.mark.skipif(not shutil.which("ldd"), reason="ldd is not installed")
@pytest.mark.skipif(sys.platform != "linux", reason="ELF libraries")
def test_lightgbm_carries_its_libgomp(tmp_path):
    site = tmp_path / "pydeps"
    (site / "lightgbm" / "lib").mkdir(parents=True)
    lib = site / "lightgbm" / "lib" / "lib_lightgbm.so"
    shutil.copyfile(_lib_lightgbm(), lib)
    assert "libgomp.so.1" in _native.needed(lib)  # the wheel relies on the system's

    # a renamed copy, as auditwheel leaves it in manylinux wheels (libgomp-<hash>.so.1.0.0)
    renamed = tmp_path / "libgomp-0123abcd.so.1.0.0"
    shutil.copyfile(_system_libgomp(), renamed)
    changed = _native.vendor_libgomp(site, renamed)
    assert changed == [lib]
    assert "libgomp-0123abcd.so.1.0.0" in _native.needed(lib)
    assert (lib.parent / renamed.name).exists()
    ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=True).stdout
    line = next(x for x in ldd.splitlines() if "libgomp" in x)
    assert str(lib.parent / renamed.name) in line, ldd  # found through RUNPATH $ORIGIN
    assert _native.vendor_libgomp(site, renamed) == []  # done once: nothing needs libgomp.so.1
