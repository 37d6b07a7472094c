"""Dataproc Serverless entry point of the metrics batch (plan step 7), for ``mainPythonFileUri``.

Runs ``poolcast metrics --engine spark`` inside the batch's Spark session: the ``poolcast``
package comes from ``pythonFileUris``, the SynapseML/JDBC jars from ``jarFileUris``.
"""

import sys

from poolcast.jobs._main import main

if __name__ == "__main__":
    sys.exit(main("metrics"))
