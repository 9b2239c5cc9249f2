#!/usr/bin/env bash
# Installs the Debian packages that the tests need (real PostgreSQL and
# Prometheus, docker-compose for offline compose validation, and the
# benchmark peers wrk, nginx, HAProxy and Caddy that bench's TestHarness
# runs for real). Idempotent:
# does nothing when everything is present. Needs root or sudo.
set -euo pipefail

need=()
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v caddy >/dev/null || need+=(caddy)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
echo "deps: installing ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged daemons; tests start their own on loopback.
$SUDO systemctl stop prometheus postgresql nginx haproxy caddy >/dev/null 2>&1 || true
for p in prometheus nginx haproxy caddy; do $SUDO pkill -x "$p" >/dev/null 2>&1 || true; done
