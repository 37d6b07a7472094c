"""cloudbuild.yaml's images and the packages its steps install (issue 22 item 2).

``python:3.12`` follows Debian's newest release; on Debian 13 (trixie) ``openjdk-17-jdk-headless``
does not exist and the upload step died at ``apt-get``. The images are now pinned to a release,
and the packages each step installs are resolved by ``apt-get --simulate`` against that release's
package index where this machine has it (it is Debian 12, bookworm, with bookworm's lists).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLOUDBUILD = ROOT / "cloudbuild.yaml"

#: Debian releases a Docker Official Image tag can name.
CODENAMES = ("bookworm", "trixie", "forky")
#: Packages measured absent from a release's main index (apt-cache policy against trixie's
#: lists, 2026-12-03): what the unpinned image broke on.
ABSENT = {"trixie": {"openjdk-17-jdk-headless"}}


def _steps() -> list[dict]:
    return yaml.safe_load(CLOUDBUILD.read_text())["steps"]


def _script(step: dict) -> str:
    return " ".join(step.get("args", [])) + step.get("script", "")


def _apt_packages(script: str) -> list[str]:
    packages: list[str] = []
    for match in re.finditer(r"apt-get install ([^>&|;\n]+)", script):
        packages += [w for w in match.group(1).split() if not w.startswith("-")]
    return packages


def _codename(image: str) -> str | None:
    tag = image.split("@")[0].rpartition(":")[2]
    return next((c for c in CODENAMES if tag.endswith(c)), None)


def _host_codename() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    match = re.search(r"^VERSION_CODENAME=(\w+)", text, re.M)
    return match.group(1) if match else None


def test_python_images_are_pinned_to_a_debian_release():
    for step in _steps():
        image = step["name"]
        if image.startswith("python:"):
            assert _codename(image), f"{step['id']}: {image} follows Debian's newest release"


def test_apt_packages_are_not_known_absent_from_the_pinned_release():
    for step in _steps():
        packages = _apt_packages(_script(step))
        if packages:
            codename = _codename(step["name"])
            assert codename, step["id"]
            missing = ABSENT.get(codename, set()) & set(packages)
            assert not missing, f"{step['id']}: {codename} has no {sorted(missing)}"


def test_apt_packages_resolve_against_the_pinned_release_index():
    """``apt-get install --simulate`` of the step's own package list, against the index of the
    release its image is pinned to (this machine's, when it is that release)."""
    steps = [s for s in _steps() if _apt_packages(_script(s))]
    assert steps, "cloudbuild.yaml installs no packages: nothing to check"
    apt_get = shutil.which("apt-get")
    for step in steps:
        codename = _codename(step["name"])
        if not apt_get or _host_codename() != codename:
            pytest.skip(f"this machine is not Debian {codename}: no index to resolve against")
        if not list(Path("/var/lib/apt/lists").glob(f"*_dists_{codename}_main_binary-*")):
            pytest.skip(f"no {codename} package lists here (apt-get update)")
        packages = _apt_packages(_script(step))
        proc = subprocess.run(
            [apt_get, "install", "--simulate", "--no-install-recommends", "-qq", *packages],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "Unable to locate" not in proc.stderr
