"""``poolcast deploy upload|list|rollback`` and ``poolcast submit metrics|forecast``."""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from poolcast.deploy import batch_spec, dataproc, gcs
from poolcast.deploy._artifacts import ArtifactError, collect, git_version

deploy_app = typer.Typer(
    help="Package poolcast and upload it to the code bucket; list and roll back versions.",
    no_args_is_help=True,
)
submit_app = typer.Typer(
    help="Run a stage as a Dataproc Serverless batch and wait for it.", no_args_is_help=True
)

ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="GCP project (default: PROJECT_ID).")
]
RegionOpt = Annotated[str | None, typer.Option("--region", help="Region (default: REGION).")]
BucketOpt = Annotated[
    str | None, typer.Option("--bucket", help="Code bucket (default: <project>-spark-code).")
]


def _settings(project: str | None, region: str | None):  # noqa: ANN202 - Settings, lazily
    from poolcast.settings import load_settings

    settings = load_settings()
    if project:
        settings.gcp.project_id = project
    if region:
        settings.gcp.region = region
    if not settings.gcp.project_id:
        _fail("no GCP project: pass --project or set PROJECT_ID")
    return settings


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _google_errors() -> tuple[type[Exception], ...]:
    """API errors from Google (imported when one is being handled: the gcp extra is optional)."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import GoogleAuthError

    return (GoogleAPICallError, GoogleAuthError)


@deploy_app.command("upload")
def upload(
    project: ProjectOpt = None,
    bucket: BucketOpt = None,
    version: Annotated[
        str | None, typer.Option(help="Version folder name (default: the git commit).")
    ] = None,
    latest: Annotated[bool, typer.Option(help="Point latest/ at the new version.")] = True,
    pydeps: Annotated[
        bool,
        typer.Option(help="Also build pydeps.zip (Python deps the runtime lacks; needs PyPI)."),
    ] = True,
    jar_cache: Annotated[
        Path | None, typer.Option(help="Jar cache folder (default: .cache/jars).")
    ] = None,
) -> None:
    """Build package, entry points and jars; upload to versions/<sha>/; move latest/."""
    from poolcast import __version__

    settings = _settings(project, None)
    bucket = bucket or gcs.code_bucket(settings.gcp.project_id)
    try:
        version = version or git_version()
        with tempfile.TemporaryDirectory(prefix="poolcast-deploy-") as tmp:
            artifacts = collect(
                Path(tmp),
                packages=settings.spark.packages,
                with_pydeps=pydeps,
                jar_cache=jar_cache,
            )
            client = gcs.make_client(settings.gcp.project_id)
            manifest = gcs.upload_version(
                client,
                bucket,
                version,
                artifacts,
                package_version=__version__,
                point_latest=latest,
                progress=_say,
            )
    except (ArtifactError, gcs.DeployError) as exc:
        _fail(str(exc))
    except _google_errors() as exc:
        _fail(f"Cloud Storage: {exc}")
    typer.echo(f"gs://{bucket}/{manifest.prefix}MANIFEST.json ({len(manifest.files)} files)")


@deploy_app.command("list")
def list_cmd(project: ProjectOpt = None, bucket: BucketOpt = None) -> None:
    """Show uploaded versions, newest first; '*' marks the one latest/ points at."""
    settings = _settings(project, None)
    bucket = bucket or gcs.code_bucket(settings.gcp.project_id)
    try:
        versions = gcs.list_versions(gcs.make_client(settings.gcp.project_id), bucket)
    except _google_errors() as exc:
        _fail(f"Cloud Storage: {exc}")
    if not versions:
        typer.echo(f"no versions in gs://{bucket}")
        return
    for v in versions:
        mark = "*" if v.is_latest else " "
        typer.echo(f"{mark} {v.version}  {v.created}  {v.files} files  {v.size / 1e6:.1f} MB")


@deploy_app.command("rollback")
def rollback_cmd(
    version: Annotated[str, typer.Argument(help="Version (or a unique prefix) to point at.")],
    project: ProjectOpt = None,
    bucket: BucketOpt = None,
) -> None:
    """Point latest/ back at an earlier version (the files of every version are kept)."""
    settings = _settings(project, None)
    bucket = bucket or gcs.code_bucket(settings.gcp.project_id)
    try:
        previous, manifest = gcs.rollback(gcs.make_client(settings.gcp.project_id), bucket, version)
    except gcs.DeployError as exc:
        _fail(str(exc))
    except _google_errors() as exc:
        _fail(f"Cloud Storage: {exc}")
    typer.echo(f"latest: {previous or '(none)'} -> {manifest.version}")


def _repo_root(repo: Path | None) -> Path:
    """The checkout the deploy files are in: --repo, else the first folder up from here with
    deploy/terraform in it."""
    if repo is not None:
        return repo
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "deploy" / "terraform").is_dir():
            return folder
    _fail("no deploy/terraform here or above: run from the checkout or pass --repo")
    raise AssertionError("unreachable")  # pragma: no cover


RepoOpt = Annotated[
    Path | None, typer.Option("--repo", help="The checkout (default: found from here up).")
]


@deploy_app.command("plan")
def plan_cmd(project: ProjectOpt = None, region: RegionOpt = None, repo: RepoOpt = None) -> None:
    """Print what a deployment would create and check this machine's prerequisites (files, tools,
    versions, names) without calling Google. Exit 1 when a check fails."""
    from poolcast.deploy import plan
    from poolcast.settings import load_settings

    settings = load_settings()
    if project:
        settings.gcp.project_id = project
    if region:
        settings.gcp.region = region
    root = _repo_root(repo)
    checks = plan.check_local(settings, root) + plan.check_tools()
    typer.echo(plan.render(settings, root, checks))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@deploy_app.command("render-workflow")
def render_workflow_cmd(
    repo: RepoOpt = None,
    check: Annotated[bool, typer.Option(help="Only check; exit 1 if it is stale.")] = False,
) -> None:
    """Write the workflow's generated job_environment block from poolcast.deploy.batch_spec."""
    path = _repo_root(repo) / "deploy" / "workflows" / "pipeline.yaml"
    text = path.read_text()
    new = batch_spec.splice_workflow(text)
    if new == text:
        typer.echo(f"{path}: up to date")
        return
    if check:
        _fail(f"{path}: stale; run poolcast deploy render-workflow")
    path.write_text(new)
    typer.echo(f"{path}: rewritten")


def _parse_properties(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--property wants KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _submit(
    kind: str,
    project: str | None,
    region: str | None,
    bucket: str | None,
    version: str | None,
    timeout: float,
    poll: float,
    wait: bool,
    properties: list[str],
    args: list[str],
    db_password_secret: str | None,
    executor_instances: int | None,
    model_dir: str | None = None,
) -> None:
    settings = _settings(project, region)
    gcp = settings.gcp
    if db_password_secret:
        gcp.db_password_secret = db_password_secret
    if model_dir:
        if not model_dir.startswith("gs://") or len(model_dir) <= len("gs://"):
            _fail(f"--model-dir must be a gs:// folder (a batch's disk ends with it): {model_dir}")
        settings.model_dir = model_dir
    if executor_instances:
        settings.spark.executor_instances = executor_instances
    bucket = bucket or gcs.code_bucket(gcp.project_id)
    storage = gcs.make_client(gcp.project_id)
    try:
        if version:
            full = gcs.resolve_version(storage, bucket, version)
            manifest = gcs.read_manifest(storage, bucket, f"{gcs.VERSIONS}{full}/{gcs.MANIFEST}")
        else:
            manifest = gcs.latest(storage, bucket)
        batch = dataproc.build_batch(
            settings,
            kind,
            manifest,
            args=args,
            properties=_parse_properties(properties),
            ttl_s=max(600, int(timeout)),  # Dataproc: ttl at least 10 minutes
        )
    except (gcs.DeployError, ValueError) as exc:
        _fail(str(exc))
    except _google_errors() as exc:
        _fail(f"Cloud Storage: {exc}")
    if settings.db_password is not None and not gcp.db_password_secret:
        _say("note: DB_PASSWORD is set here but is never sent to a batch; use --db-password-secret")
    client = dataproc.make_client(gcp.region)
    batch_id = dataproc.new_batch_id(kind)
    request_id = dataproc.new_request_id()
    _say(f"submitting {batch_id} (code {manifest.version}, runtime {gcp.runtime_version})")
    try:
        name = dataproc.submit_batch(
            client,
            project_id=gcp.project_id,
            region=gcp.region,
            batch=batch,
            batch_id=batch_id,
            request_id=request_id,
            report=_say,
        )
    except dataproc.BatchError as exc:
        _fail(str(exc))
    typer.echo(name)
    if not wait:
        return
    run_and_report(client, name, timeout_s=timeout, poll_s=poll)


def run_and_report(client, name: str, *, timeout_s: float, poll_s: float) -> None:  # noqa: ANN001
    """Wait for ``name``; exit 0 only on SUCCEEDED. Ctrl-C asks whether to cancel the batch."""
    started = dt.datetime.now(dt.UTC)
    try:
        dataproc.wait_for_batch(client, name, timeout_s=timeout_s, poll_s=poll_s, report=_say)
    except KeyboardInterrupt:
        _say(f"\ninterrupted; {name} is still running")
        if sys.stdin.isatty() and typer.confirm("Cancel the batch?", default=False):
            dataproc.cancel_batch(client, name)
            _say("cancellation requested")
        raise typer.Exit(130) from None
    except dataproc.BatchError as exc:
        _fail(str(exc))
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    _say(f"SUCCEEDED after {seconds:.0f} s")


def _make_submit_command(kind: str) -> None:
    def command(
        project: ProjectOpt = None,
        region: RegionOpt = None,
        bucket: BucketOpt = None,
        version: Annotated[
            str | None, typer.Option(help="Code version to run (default: what latest/ points at).")
        ] = None,
        timeout: Annotated[
            float,
            typer.Option(help="Seconds to wait for a final state; also the batch's ttl."),
        ] = float(batch_spec.BATCH_TTL_S),
        poll: Annotated[float, typer.Option(help="Seconds between status checks.")] = 30.0,
        wait: Annotated[bool, typer.Option(help="Wait for the batch to finish.")] = True,
        prop: Annotated[
            list[str] | None, typer.Option("--property", help="Extra Spark property KEY=VALUE.")
        ] = None,
        arg: Annotated[
            list[str] | None, typer.Option("--arg", help="Argument for the entry point.")
        ] = None,
        db_password_secret: Annotated[
            str | None,
            typer.Option(
                envvar="DB_PASSWORD_SECRET",
                help="Secret Manager secret holding the DB password (name or resource name).",
            ),
        ] = None,
        executor_instances: Annotated[
            int | None, typer.Option(help="Fixed executors for the forecast batch.")
        ] = None,
        model_dir: Annotated[
            str | None,
            typer.Option(
                help="gs:// folder where the forecast saves and reuses models (default: "
                "POOLCAST_MODEL_DIR if a gs:// URI, else gs://<project>-poolcast-models/models)."
            ),
        ] = None,
    ) -> None:
        _submit(
            kind,
            project,
            region,
            bucket,
            version,
            timeout,
            poll,
            wait,
            prop or [],
            arg or [],
            db_password_secret,
            executor_instances,
            model_dir,
        )

    command.__doc__ = f"Run the {kind} stage as a Dataproc Serverless batch (runtime 1.2)."
    submit_app.command(kind)(command)


for _kind in dataproc.KINDS:
    _make_submit_command(_kind)
