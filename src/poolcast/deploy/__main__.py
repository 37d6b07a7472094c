"""``python -m poolcast.deploy upload|list|rollback``: the deploy commands without the full CLI."""

from poolcast.deploy.cli import deploy_app

if __name__ == "__main__":  # pragma: no cover - exercised through cloudbuild.yaml
    deploy_app(prog_name="python -m poolcast.deploy")
