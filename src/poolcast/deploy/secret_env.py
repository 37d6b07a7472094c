"""The DB password inside a batch: from the environment, else from Secret Manager.

A Dataproc batch gets ``DB_PASSWORD_SECRET`` (``projects/P/secrets/NAME/versions/latest``), the
*name* of the secret, as a driver environment variable; the entry-point scripts call
:func:`load_db_password` before they open the store, and the password lives only in the driver's
process environment. It is never a batch property, an argument, or a log line.
"""

from __future__ import annotations

import os


class SecretError(RuntimeError):
    """The password could not be read; the message names the secret, never its value."""


def load_db_password(environ: dict[str, str] | None = None) -> bool:
    """Set ``DB_PASSWORD`` from ``DB_PASSWORD_SECRET`` unless it is already set.

    Returns True when a password was loaded from Secret Manager.
    """
    env = os.environ if environ is None else environ
    if env.get("DB_PASSWORD"):
        return False
    name = env.get("DB_PASSWORD_SECRET")
    if not name:
        return False
    try:
        from google.cloud import secretmanager
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SecretError("reading DB_PASSWORD_SECRET needs google-cloud-secret-manager") from exc
    try:
        response = secretmanager.SecretManagerServiceClient().access_secret_version(name=name)
    except Exception as exc:  # noqa: BLE001 - any client error: say which secret, not the value
        raise SecretError(f"cannot read secret {name}: {exc.__class__.__name__}") from exc
    env["DB_PASSWORD"] = response.payload.data.decode("utf-8")
    return True
