#!/usr/bin/env bash
# Give the SQL collector tests a real PostgreSQL server: role and database `lmforge`
# (password `lmforge`) on 127.0.0.1:5432, which is what tests/collect/test_sql.py connects to
# unless LMFORGE_TEST_POSTGRES_URL says otherwise.
#
# Debian/Ubuntu only, run as root. Idempotent: each step checks first and says what it did,
# so running it on a machine that is already set up changes nothing and exits 0.
#
#   bash scripts/ci_postgres.sh             # fail (exit 1) if the server cannot be set up
#   bash scripts/ci_postgres.sh --optional  # warn and exit 0 instead (the tests then skip)
set -euo pipefail

ROLE=lmforge
PASSWORD=lmforge
DATABASE=lmforge
PORT=5432
OPTIONAL=0
[ "${1:-}" = "--optional" ] && OPTIONAL=1

say() { echo "ci_postgres: $*"; }
fail() {
  say "ERROR: $*"
  if [ "$OPTIONAL" = 1 ]; then
    say "continuing without PostgreSQL (--optional); the PostgreSQL tests will skip"
    exit 0
  fi
  exit 1
}

reachable() {
  command -v psql >/dev/null 2>&1 &&
    PGPASSWORD=$PASSWORD PGCONNECT_TIMEOUT=3 psql -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d "$DATABASE" \
      -tAc "SELECT 1" >/dev/null 2>&1
}

as_postgres() { runuser -u postgres -- "$@"; }

if reachable; then
  say "already set up: $ROLE@127.0.0.1:$PORT/$DATABASE accepts connections; nothing to do"
  exit 0
fi

[ "$(id -u)" = 0 ] || fail "must run as root to install and start PostgreSQL (or point LMFORGE_TEST_POSTGRES_URL at a server)"

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || fail "PostgreSQL is not installed and apt-get is not available"
  say "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update failed"
  apt-get install -y -qq postgresql >/dev/null || fail "apt-get install postgresql failed"
else
  say "postgresql is installed"
fi

VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
[ -n "$VERSION" ] || fail "no PostgreSQL version found under /usr/lib/postgresql"

if ! pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main"' | grep -q .; then
  say "creating cluster $VERSION/main"
  pg_createcluster "$VERSION" main --port "$PORT" >/dev/null || fail "pg_createcluster $VERSION main failed"
fi

# The tests connect over TCP to 127.0.0.1:5432; Debian's defaults (localhost, first cluster
# on 5432, scram-sha-256 for host connections) already allow that, so only fix what differs.
CURRENT_PORT=$(pg_conftool -s "$VERSION" main show port 2>/dev/null || echo "$PORT")
RESTART=0
if [ "$CURRENT_PORT" != "$PORT" ]; then
  say "setting cluster $VERSION/main port $CURRENT_PORT -> $PORT"
  pg_conftool "$VERSION" main set port "$PORT"
  RESTART=1
fi
LISTEN=$(pg_conftool -s "$VERSION" main show listen_addresses 2>/dev/null || echo localhost)
case "$LISTEN" in
  *localhost*|*127.0.0.1*|*'*'*) ;;
  *)
    say "setting listen_addresses '$LISTEN' -> 'localhost'"
    pg_conftool "$VERSION" main set listen_addresses localhost
    RESTART=1
    ;;
esac

STATUS=$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $4}')
if [ "$STATUS" = online ] && [ "$RESTART" = 1 ]; then
  say "restarting cluster $VERSION/main"
  pg_ctlcluster "$VERSION" main restart || fail "pg_ctlcluster $VERSION main restart failed"
elif [ "$STATUS" != online ]; then
  say "starting cluster $VERSION/main"
  # pg_ctlcluster works without systemd (containers); `service` is the fallback.
  pg_ctlcluster "$VERSION" main start || service postgresql start ||
    fail "could not start cluster $VERSION/main (see /var/log/postgresql/postgresql-$VERSION-main.log)"
else
  say "cluster $VERSION/main is running"
fi

for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || fail "server is not accepting connections on 127.0.0.1:$PORT"

if [ "$(as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" = 1 ]; then
  say "role $ROLE exists; resetting its password"
else
  say "creating role $ROLE"
  as_postgres psql -q -p "$PORT" -c "CREATE ROLE $ROLE LOGIN" || fail "could not create role $ROLE"
fi
as_postgres psql -q -p "$PORT" -c "ALTER ROLE $ROLE WITH LOGIN PASSWORD '$PASSWORD'" ||
  fail "could not set the password of role $ROLE"

if [ "$(as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" = 1 ]; then
  say "database $DATABASE exists"
else
  say "creating database $DATABASE"
  as_postgres createdb -p "$PORT" -O "$ROLE" -E UTF8 -T template0 "$DATABASE" ||
    fail "could not create database $DATABASE"
fi

reachable || fail "set up, but $ROLE cannot log in over 127.0.0.1:$PORT (check pg_hba.conf)"
say "ready: postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
