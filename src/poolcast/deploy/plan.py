"""``poolcast deploy plan``: what a deployment would create, and whether this machine can do it.

Nothing here calls Google: the plan is read from the repository's own files (the Terraform
configuration, the workflow, cloudbuild.yaml) and the settings, and the checks look at local
files, tools, versions and names. What exists already in the project (and so what would only
change) is for ``terraform plan`` to say, with credentials; this command is the step before it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from poolcast.deploy import batch_spec, gcs

if TYPE_CHECKING:  # pragma: no cover
    from poolcast.settings import Settings

#: The files a deployment is made of, relative to the repository root.
DEPLOY_FILES = (
    "deploy/workflows/pipeline.yaml",
    "deploy/terraform/main.tf",
    "deploy/terraform/variables.tf",
    "deploy/terraform/versions.tf",
    "deploy/terraform/outputs.tf",
    "cloudbuild.yaml",
)
PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
#: tool -> (version command, minimum (major, minor), why it is needed)
TOOLS: dict[str, tuple[list[str], tuple[int, int], str]] = {
    "terraform": (["terraform", "version"], (1, 5), "creates the infrastructure"),
    "java": (["java", "-version"], (17, 0), "Maven resolves the jars with it"),
    "mvn": (["mvn", "-v"], (3, 6), "resolves SynapseML and JDBC jars for `deploy upload`"),
    "patchelf": (["patchelf", "--version"], (0, 10), "ships libgomp inside pydeps.zip"),
    "gcloud": (["gcloud", "--version"], (400, 0), "adds the DB password, runs the workflow"),
}

Runner = Callable[[list[str]], str]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _run(cmd: list[str]) -> str:
    exe = shutil.which(cmd[0])
    if not exe:
        raise FileNotFoundError(cmd[0])
    proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def _version(text: str) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def resources(repo: Path) -> list[tuple[str, str, str]]:
    """``(type, name, condition)`` of every Terraform resource; condition is its count or
    for_each expression ("" when always created)."""
    found = []
    for path in sorted((repo / "deploy" / "terraform").glob("*.tf")):
        text = path.read_text()
        for match in re.finditer(r'^resource "(\w+)" "(\w+)" \{\n(.*?)^\}', text, re.M | re.S):
            body = match.group(3)
            cond = re.search(r"^\s*(count|for_each)\s*=\s*(.+)$", body, re.M)
            found.append(
                (match.group(1), match.group(2), f"{cond.group(1)} {cond.group(2)}" if cond else "")
            )
    return found


def check_tools(run: Runner | None = None) -> list[Check]:
    run = run or _run
    out = []
    for tool, (cmd, minimum, why) in TOOLS.items():
        try:
            version = _version(run(cmd))
        except (OSError, subprocess.SubprocessError):
            out.append(Check(tool, False, f"not found ({why})"))
            continue
        ok = version is not None and version >= minimum
        shown = ".".join(map(str, version)) if version else "unknown version"
        want = ".".join(map(str, minimum))
        out.append(Check(tool, ok, f"{shown} (need {want}+: {why})"))
    return out


def check_local(settings: Settings, repo: Path) -> list[Check]:
    """Files, names and versions: everything but the tools."""
    out = []
    missing = [f for f in DEPLOY_FILES if not (repo / f).exists()]
    detail = f"missing: {', '.join(missing)}" if missing else "all here"
    out.append(Check("deploy files", not missing, detail))
    workflow = repo / "deploy" / "workflows" / "pipeline.yaml"
    if workflow.exists():
        text = workflow.read_text()
        try:
            current = batch_spec.splice_workflow(text) == text
            detail = (
                "as batch_spec renders it" if current else "stale: poolcast deploy render-workflow"
            )
        except ValueError:
            current, detail = False, "no generated job_environment block"
        out.append(Check("workflow batch config", current, detail))
    py = sys.version_info[:2]
    out.append(Check("python", py in ((3, 11), (3, 12)), f"{py[0]}.{py[1]} (3.11 or 3.12)"))
    project = settings.gcp.project_id or ""
    out.append(
        Check("project id", bool(PROJECT_RE.fullmatch(project)), project or "not set (--project)")
    )
    if project:
        names = [gcs.code_bucket(project), gcs.models_bucket(project), f"{project}-spark-staging"]
        long = [n for n in names if len(n) > 63]
        detail = f"too long: {', '.join(long)}" if long else ", ".join(names)
        out.append(Check("bucket names", not long, detail))
    runtime = settings.gcp.runtime_version
    scala = {p.split(":")[1].rsplit("_", 1)[-1] for p in settings.spark.packages if "_2." in p}
    wants = "2.12" if runtime.startswith("1.") else "2.13"
    out.append(
        Check(
            "runtime and jars",
            scala <= {wants},
            f"runtime {runtime} is Scala {wants}; jars are Scala {', '.join(sorted(scala))}",
        )
    )
    mode = settings.db_sslmode or batch_spec.DEFAULT_DB_SSLMODE
    out.append(
        Check("DB_SSLMODE", mode in batch_spec.ENCRYPTED_SSLMODES, f"{mode} (batches encrypt)")
    )
    return out


def render(settings: Settings, repo: Path, checks: list[Check]) -> str:
    """The plan as text: resources, upload, batches, then the checks."""
    project = settings.gcp.project_id or "<project>"
    lines = [f"Plan for project {project}, region {settings.gcp.region} (no Google API called)."]
    lines.append("")
    items = resources(repo)
    lines.append(f"Terraform (deploy/terraform): {len(items)} resources; on an empty project all")
    lines.append("are created; `terraform plan` says which exist and would change.")
    for rtype, name, cond in items:
        lines.append(f"  + {rtype}.{name}" + (f"  [{cond}]" if cond else ""))
    lines.append("")
    lines.append("Buckets:")
    for bucket in (
        gcs.code_bucket(project),
        f"{project}-spark-staging",
        gcs.models_bucket(project),
    ):
        lines.append(f"  gs://{bucket}")
    lines.append("")
    lines.append(
        f"`poolcast deploy upload` writes gs://{gcs.code_bucket(project)}/versions/<git sha>/"
        " (package zip, entry points, jars, pydeps.zip), then latest/MANIFEST.json."
    )
    lines.append("")
    lines.append(
        f"Batches (`poolcast submit` and the workflow, poolcast.deploy.batch_spec): runtime "
        f"{settings.gcp.runtime_version}, ttl {batch_spec.BATCH_TTL_S} s, network tag "
        f"{batch_spec.NETWORK_TAG}, forecast executors {settings.spark.executor_instances}, "
        f"DB_SSLMODE {settings.db_sslmode or batch_spec.DEFAULT_DB_SSLMODE}."
    )
    for kind in ("metrics", "forecast"):
        props = ", ".join(f"{k}={v}" for k, v in sorted(batch_spec.static_properties(kind).items()))
        lines.append(f"  {kind}: {props}")
    lines.append("")
    lines.append("Local prerequisites:")
    for check in checks:
        lines.append(f"  [{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    return "\n".join(lines)
