#!/usr/bin/env bash
# Makes sure a PostgreSQL answers on 127.0.0.1:$KILN_PG_PORT (default 5432) with trust auth
# for user postgres and a `test` database, as the store tests expect
# (KILN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test). Idempotent:
#   1. already answering: nothing to start;
#   2. an installed cluster (/etc/postgresql/<version>/main): start it with pg_ctlcluster;
#   3. otherwise: initdb a cluster into $KILN_PG_DATA (default $TMPDIR/kiln-pg-<port>) with
#      the installed binaries and start it (reused, not re-created, on the next run).
# Then creates the `test` database when missing. Prints what it did.
set -euo pipefail

port="${KILN_PG_PORT:-5432}"
host=127.0.0.1
data="${KILN_PG_DATA:-${TMPDIR:-/tmp}/kiln-pg-$port}"

say() { echo "postgres.sh: $*"; }

# The directory of the newest installed PostgreSQL server binaries.
bindir() {
  local dir
  if [ -x /usr/local/bin/initdb ] && [ -x /usr/local/bin/pg_ctl ]; then
    echo /usr/local/bin
    return
  fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ]; then
      echo "$dir"
      return
    fi
  done
  return 1
}

tool() {
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; else echo "$(bindir)/$1"; fi
}

answering() {
  "$(tool pg_isready)" -h "$host" -p "$port" -q >/dev/null 2>&1
}

wait_until_answering() {
  for _ in $(seq 1 60); do
    answering && return 0
    sleep 0.5
  done
  return 1
}

# Runs a command as an unprivileged user when we are root (initdb and postgres refuse root).
as_db_user() {
  if [ "$(id -u)" -ne 0 ]; then
    "$@"
    return
  fi
  if ! id postgres >/dev/null 2>&1; then
    say "creating system user postgres"
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  runuser -u postgres -- "$@"
}

if answering; then
  say "PostgreSQL already answers on $host:$port"
else
  started=no
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    for version in $(ls /etc/postgresql 2>/dev/null | sort -V -r); do
      conf="/etc/postgresql/$version/main/postgresql.conf"
      [ -f "$conf" ] || continue
      cluster_port="$(sed -n 's/^[[:space:]]*port[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "$conf" | tail -1)"
      if [ "${cluster_port:-5432}" != "$port" ]; then
        say "cluster $version/main listens on ${cluster_port:-5432}, not $port; skipping it"
        continue
      fi
      say "starting the installed cluster $version/main"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
      if wait_until_answering; then
        started=yes
        break
      fi
      say "cluster $version/main does not answer on $host:$port"
    done
  fi
  if [ "$started" = no ]; then
    bin="$(bindir)" || { say "no PostgreSQL binaries found (initdb)"; exit 1; }
    if [ ! -s "$data/PG_VERSION" ]; then
      say "creating a cluster in $data with $bin/initdb"
      mkdir -p "$data"
      if [ "$(id -u)" -eq 0 ]; then as_db_user true; chown postgres "$data"; fi
      as_db_user "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
    else
      say "reusing the cluster in $data"
    fi
    say "starting it on $host:$port"
    as_db_user "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-c listen_addresses=$host -p $port -k $data" start >/dev/null
    wait_until_answering || { say "PostgreSQL did not come up; see $data/server.log"; exit 1; }
  fi
fi

psql=("$(tool psql)" -h "$host" -p "$port" -U postgres -v ON_ERROR_STOP=1 -Atq)
if ! "${psql[@]}" -d postgres -c 'SELECT 1' >/dev/null; then
  say "cannot connect as postgres without a password (trust auth) on $host:$port"
  exit 1
fi
if [ "$("${psql[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'test'")" = 1 ]; then
  say "database test exists"
else
  "${psql[@]}" -d postgres -c 'CREATE DATABASE test'
  say "created database test"
fi
say "ready: postgres://postgres@$host:$port/test"
