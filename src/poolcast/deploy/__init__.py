"""Run poolcast on Google Cloud: package and upload the code, submit Dataproc Serverless batches.

The outer layer of the house (see ``docs/deployment.md``):

* :mod:`poolcast.deploy._artifacts` builds what a batch needs: the package as a zip for
  ``pythonFileUris``, the two entry-point scripts for ``mainPythonFileUri``, the SynapseML and
  PostgreSQL JDBC jars resolved from Maven Central for ``jarFileUris`` (serverless workers have
  internal IPs only), and optionally the Python dependencies the runtime lacks.
* :mod:`poolcast.deploy.gcs` uploads them to ``gs://<project>-spark-code/versions/<sha>/`` and moves
  the ``latest/`` pointer (upload, list, rollback).
* :mod:`poolcast.deploy.dataproc` builds and submits the batch and waits for its final state.
* :mod:`poolcast.deploy.cli` exposes ``poolcast deploy ...`` and ``poolcast submit ...``.

Google client libraries are imported inside functions, so the rest of poolcast works without the
``gcp`` extra.
"""
