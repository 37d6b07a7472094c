#!/usr/bin/env bash
# Resolve the Spark engine's jars (settings.spark.packages: SynapseML LightGBM, the PostgreSQL JDBC
# driver and their dependencies) into the Ivy cache once, before the test workers start Spark side
# by side: two JVMs downloading the same jar into one cache can leave it empty ("Downloaded file
# size (0) doesn't match expected Content Length"). A download that fails is tried again.
# Usage: scripts/fetch-spark-jars.sh [python]   (default .venv/bin/python)
set -euo pipefail
py=${1:-.venv/bin/python}
read -r submit packages ivy < <("$py" - <<'PY'
import os, pyspark
from poolcast.engines._spark_session import ivy_dir
from poolcast.settings import Settings
print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit"),
      ",".join(Settings().spark.packages), ivy_dir())
PY
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$work/noop.py"  # spark-submit resolves --packages before it runs the (empty) app
for attempt in 1 2 3 4; do
  if "$submit" --master 'local[1]' --conf spark.ui.enabled=false \
      --conf "spark.jars.ivy=$ivy" --packages "$packages" "$work/noop.py" > "$work/log" 2>&1; then
    echo "fetch-spark-jars: $packages in $ivy" >&2
    exit 0
  fi
  echo "fetch-spark-jars: attempt $attempt failed:" >&2
  grep -E 'FAILED|download failed|Exception' "$work/log" | head -5 >&2 || tail -5 "$work/log" >&2
  sleep $((attempt * 5))
done
echo "fetch-spark-jars: could not resolve $packages from Maven Central; see above" >&2
exit 1
