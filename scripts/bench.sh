#!/usr/bin/env bash
# bench.sh: `make bench`. Installs the peers when missing (Debian wrk,
# nginx-light, haproxy, caddy; needs root or sudo), builds petmesh and the
# harness, optionally Traefik, then runs the side-by-side benchmark
# (bench/cmd/benchrun) and the control-plane scale benchmark
# (BenchmarkScale), writing results/bench/. See BENCHMARKS.md.
#
#   scripts/bench.sh            # both parts
#   scripts/bench.sh proxies    # only the side-by-side part
#   scripts/bench.sh controlplane
#
# Knobs (environment; BENCHMARKS.md documents each):
#   BENCH_ROUNDS (3) BENCH_DURATION (10s) BENCH_WARMUP (3s) BENCH_RATE (1000)
#   BENCH_RATE_DURATION (= BENCH_DURATION) BENCH_THREADS (2) BENCH_CONNS (64)
#   BENCH_TARGETS (all) BENCH_TRAEFIK (auto|1|0) BENCH_PROFILE (1)
#   BENCH_OUT (results/bench) BENCH_KEEP (0) BENCH_CP_BENCHTIME (5x) BENCH_CP_SIZES (all)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
GO=${GO:-go}
OUT=${BENCH_OUT:-$ROOT/results/bench}
BIN=${BIN:-$ROOT/bin}
part=${1:-all}
case $part in all | proxies | controlplane) ;; *) echo "usage: $0 [all|proxies|controlplane]" >&2; exit 2 ;; esac
mkdir -p "$OUT"

install_peers() {
  local need=()
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v caddy >/dev/null || need+=(caddy)
  [ ${#need[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
  echo "bench: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  # policy-rc.d or not, the packaged daemons are stopped: the harness starts its own on loopback.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  for svc in nginx haproxy caddy; do $sudo systemctl stop "$svc" >/dev/null 2>&1 || true; done
}

traefik_bin() {
  # auto (default): use Traefik when it is already in the tool cache;
  # 1: build it if missing (scripts/tool.sh traefik: a long build) and fail if that fails; 0: skip.
  local mode=${BENCH_TRAEFIK:-auto} cache ver
  case $mode in
  0) return 0 ;;
  1) scripts/tool.sh traefik ;;
  auto)
    cache=${PETMESH_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/petmesh}
    ver=$(awk '$1=="github.com/traefik/traefik/v3" {print $2}' tools/traefik/go.mod | head -1)
    if [ -x "$cache/traefik-$ver/traefik" ]; then echo "$cache/traefik-$ver/traefik"; fi ;;
  *) echo "BENCH_TRAEFIK=$mode: want auto, 1 or 0" >&2; return 2 ;;
  esac
}

run_proxies() {
  install_peers
  echo "bench: building petmesh and the harness" >&2
  mkdir -p "$BIN"
  $GO build -o "$BIN/" ./edge/cmd/edge ./sidecar/cmd/sidecar ./controlplane/cmd/controlplane ./bench/cmd/benchrun
  local traefik
  traefik=$(traefik_bin)
  if [ -z "$traefik" ]; then echo "bench: Traefik not in the cache (BENCH_TRAEFIK=1 builds it); skipped" >&2; fi
  local keep=()
  if [ "${BENCH_KEEP:-0}" = 1 ]; then keep=(-keep); fi
  "$BIN/benchrun" -bin "$BIN" -out "$OUT" \
    -rounds "${BENCH_ROUNDS:-3}" -duration "${BENCH_DURATION:-10s}" -warmup "${BENCH_WARMUP:-3s}" \
    -rate "${BENCH_RATE:-1000}" -rate-duration "${BENCH_RATE_DURATION:-0}" \
    -threads "${BENCH_THREADS:-2}" -conns "${BENCH_CONNS:-64}" \
    -targets "${BENCH_TARGETS:-direct,nginx,haproxy,caddy,traefik,petmesh-public,petmesh-jwt,petmesh-mesh}" \
    -traefik "$traefik" -profile="$([ "${BENCH_PROFILE:-1}" = 1 ] && echo true || echo false)" "${keep[@]}"
  if [ "${BENCH_PROFILE:-1}" = 1 ] && ls "$OUT"/profiles/*.pprof >/dev/null 2>&1; then
    # Text summaries beside the profiles (go tool pprof needs the binary for symbols: the profiles carry them).
    for p in "$OUT"/profiles/*-cpu.pprof; do $GO tool pprof -top -nodecount 40 "$p" >"${p%.pprof}.top.txt" 2>/dev/null || true; done
    for p in "$OUT"/profiles/*-allocs.pprof; do $GO tool pprof -sample_index=alloc_space -top -nodecount 40 "$p" >"${p%.pprof}.top.txt" 2>/dev/null || true; done
  fi
}

run_controlplane() {
  local benchtime=${BENCH_CP_BENCHTIME:-5x} sizes=${BENCH_CP_SIZES:-.} raw=$OUT/controlplane.txt
  local cmd="go test ./controlplane/xds -run '^\$' -bench 'Scale/$sizes' -benchtime $benchtime -timeout 60m"
  echo "bench: $cmd" >&2
  mkdir -p "$BIN"
  $GO build -o "$BIN/" ./bench/cmd/benchrun
  set -o pipefail
  $GO test ./controlplane/xds -run '^$' -bench "Scale/$sizes" -benchtime "$benchtime" -timeout 60m | tee "$raw"
  "$BIN/benchrun" controlplane -in "$raw" -out "$OUT" -command "$cmd"
}

case $part in
all) run_proxies; run_controlplane ;;
proxies) run_proxies ;;
controlplane) run_controlplane ;;
esac
