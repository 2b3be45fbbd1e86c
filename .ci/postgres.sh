#!/usr/bin/env bash
# CI: a PostgreSQL server for the store's contract tests. Installs PostgreSQL
# from Debian's packages when it is missing, creates a cluster of its own
# ("neurogrid", on port NEUROGRID_PG_PORT, default 55432, trust authentication for
# local connections only: it listens on 127.0.0.1) and a database
# "neurogrid_test", starts the cluster, and prints the URL for the tests on
# stdout (everything else goes to stderr). Idempotent: a second run finds the
# package, the cluster and the database there and only makes sure it runs.
#
#   NEUROGRID_TEST_POSTGRES="$(bash .ci/postgres.sh)"; export NEUROGRID_TEST_POSTGRES
#
# Runs as root (as CI does); the server runs as the `postgres` user.
set -euo pipefail
PORT="${NEUROGRID_PG_PORT:-55432}"
CLUSTER=neurogrid
DATABASE=neurogrid_test
exec 3>&1 1>&2  # stdout: the URL only

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_createcluster >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
install -d -o postgres -g postgres -m 2775 /var/run/postgresql  # gone after a reboot

if ! pg_lsclusters --no-header | awk '{print $1 "/" $2}' | grep -qx "$VERSION/$CLUSTER"; then
    pg_createcluster "$VERSION" "$CLUSTER" --port "$PORT" --start-conf manual \
        -- --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    # a test server: local connections only
    echo "listen_addresses = '127.0.0.1'" > "/etc/postgresql/$VERSION/$CLUSTER/conf.d/neurogrid.conf"
fi
PORT="$(pg_conftool -s "$VERSION" "$CLUSTER" show port)"
if ! pg_ctlcluster "$VERSION" "$CLUSTER" status >/dev/null 2>&1; then
    # 3>&-: the server must not inherit the URL's pipe, or the caller's $(...)
    # waits for it to exit (a CI run hung here for its whole time limit)
    pg_ctlcluster "$VERSION" "$CLUSTER" start 3>&- </dev/null
fi
for _ in $(seq 50); do  # until it accepts connections
    pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 0.2
done
pg_isready -h 127.0.0.1 -p "$PORT"
if ! runuser -u postgres -- psql -h 127.0.0.1 -p "$PORT" -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'" postgres | grep -qx 1; then
    runuser -u postgres -- createdb -h 127.0.0.1 -p "$PORT" "$DATABASE"
fi
echo "postgresql://postgres@127.0.0.1:$PORT/$DATABASE" >&3
