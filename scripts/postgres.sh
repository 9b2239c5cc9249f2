#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL cluster for the tests, on loopback,
# in a directory of its own. Prints the DSN on start.
#   scripts/postgres.sh start DIR PORT
#   scripts/postgres.sh stop DIR
set -euo pipefail
cmd=$1 dir=$2
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case $cmd in
start)
  port=$3
  if [ -f "$dir/data/postmaster.pid" ] && as_pg "$pgbin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    echo "postgres://petmesh:petmesh@127.0.0.1:$port/petmesh?sslmode=disable"
    exit 0
  fi
  rm -rf "$dir"; mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
  as_pg "$pgbin/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
  as_pg "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null
  as_pg "$pgbin/psql" -h 127.0.0.1 -p "$port" -U postgres -q -c "CREATE ROLE petmesh LOGIN PASSWORD 'petmesh' CREATEDB" >/dev/null
  as_pg "$pgbin/psql" -h 127.0.0.1 -p "$port" -U postgres -q -c "CREATE DATABASE petmesh OWNER petmesh" >/dev/null
  echo "postgres://petmesh:petmesh@127.0.0.1:$port/petmesh?sslmode=disable"
  ;;
stop)
  if [ -d "$dir/data" ]; then as_pg "$pgbin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true; fi
  ;;
*) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
