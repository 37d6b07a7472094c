"""Dataproc Serverless entry points (``mainPythonFileUri``): thin wrappers over the pipeline."""
