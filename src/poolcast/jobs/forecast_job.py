"""Dataproc Serverless entry point of the forecast batch (plan step 11), for ``mainPythonFileUri``.

Runs ``poolcast forecast --engine spark`` (SynapseML LightGBM) inside the batch's Spark session.
Submit it with dynamic allocation off and a fixed executor count
(``poolcast.engines._spark_session.batch_properties(settings, training=True)``).
"""

import sys

from poolcast.jobs._main import main

if __name__ == "__main__":
    sys.exit(main("forecast"))
