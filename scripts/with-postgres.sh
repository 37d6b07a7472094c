#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL server: Debian's package (installed when missing and
# running as root), data directory in a temp folder, a free port on 127.0.0.1. The server is
# stopped and its data removed when the command ends, whatever its exit status.
# The command sees POOLCAST_TEST_PG_URL (superuser URL of a fresh database).
set -euo pipefail

find_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

PGBIN=$(find_bin || true)
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "with-postgres: installing Debian's postgresql package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    PGBIN=$(find_bin)
  else
    echo "with-postgres: PostgreSQL server binaries not found; install Debian's 'postgresql' package" >&2
    exit 2
  fi
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TMP=$(mktemp -d /tmp/poolcast-pg.XXXXXX)
RUN_AS=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir "$TMP" postgres
  chown postgres "$TMP"
  RUN_AS=(runuser -u postgres --)
fi

cleanup() {
  "${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$TMP/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

"${RUN_AS[@]}" "$PGBIN/initdb" -D "$TMP/data" -U postgres -A trust --no-sync -E UTF8 >/dev/null
"${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $TMP -c fsync=off -c max_connections=100" start >/dev/null
"$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE poolcast_test" >/dev/null

export POOLCAST_TEST_PG_URL="postgresql://postgres@127.0.0.1:$PORT/poolcast_test"
export POOLCAST_TEST_PG_CTL="$PGBIN/pg_ctl"
export POOLCAST_TEST_PG_DATA="$TMP/data"
echo "with-postgres: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT" >&2
set +e
"$@"
status=$?
exit $status
