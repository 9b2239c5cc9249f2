#!/usr/bin/env bash
# bench-edge.sh: wrk through the petmesh edge (JWT-verified route, valid ES256
# token), directly to the backend, and through nginx as a plain reverse proxy
# to the same backend, in one run, alternating targets. Writes a markdown
# table to results/bench-edge.md (override with OUT=...).
#
# Needs wrk and nginx (scripts/deps.sh installs both with WITH_BENCH=1) and Go.
# Knobs (environment): DURATION (10s), WARMUP (3s), ROUNDS (2), THREADS (2),
# CONNS (64), OUT (results/bench-edge.md), KEEP=1 keeps the temp dir, PROFILE=file
# saves a CPU profile of the edge during its first round, EDGE_FLAGS adds edge flags.
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/results/bench-edge.md}

for bin in wrk nginx go curl; do
  command -v "$bin" >/dev/null || { echo "bench-edge: $bin not found (WITH_BENCH=1 scripts/deps.sh installs wrk and nginx)" >&2; exit 1; }
done
NGINX=$(command -v nginx)

TMP=$(mktemp -d /tmp/bench-edge.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$TMP"; else echo "kept $TMP" >&2; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() { # url [expected status]
  local url=$1 want=${2:-200} i
  for i in $(seq 1 200); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "$url" || true) == "$want" ]]; then return 0; fi
    sleep 0.05
  done
  echo "bench-edge: $url did not answer $want" >&2; return 1
}

echo "building the edge" >&2
(cd "$ROOT" && go build -o "$TMP/edge" ./edge/cmd/edge)

BACKEND_PORT=$(free_port)
PROXY_PORT=$(free_port)
EDGE_PORT=$(free_port)
ADMIN_PORT=$(free_port)

# --- backend: nginx answering a small JSON document (the same for all) ----
mkdir -p "$TMP/backend" "$TMP/proxy"
cat >"$TMP/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $TMP/backend; proxy_temp_path $TMP/backend; fastcgi_temp_path $TMP/backend;
  uwsgi_temp_path $TMP/backend; scgi_temp_path $TMP/backend;
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    location / { default_type application/json; return 200 '{"id":"pet_1","name":"Rex","species":"dog"}'; }
  }
}
EOF
"$NGINX" -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -e "$TMP/backend/error.log" &
PIDS+=($!)

# --- nginx as a plain reverse proxy (keep-alive upstream, access log on) ---
cat >"$TMP/proxy/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $TMP/proxy/nginx.pid;
error_log $TMP/proxy/error.log warn;
events { worker_connections 4096; }
http {
  access_log $TMP/proxy/access.log;
  keepalive_requests 1000000;
  client_body_temp_path $TMP/proxy; proxy_temp_path $TMP/proxy; fastcgi_temp_path $TMP/proxy;
  uwsgi_temp_path $TMP/proxy; scgi_temp_path $TMP/proxy;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$PROXY_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
EOF
"$NGINX" -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" -e "$TMP/proxy/error.log" &
PIDS+=($!)

# --- the edge, from a bootstrap file (no control plane) ---------------------
ISSUER="http://127.0.0.1:$EDGE_PORT"
HASH=$(printf 'bench-pw\n' | "$TMP/edge" hash-password -cost 10)
cat >"$TMP/users.yaml" <<EOF
users:
  - username: bench
    password_hash: "$HASH"
    roles: [viewer]
EOF
cat >"$TMP/bootstrap.yaml" <<EOF
static_resources:
  listeners:
    - name: edge-http
      address: {socket_address: {address: 127.0.0.1, port_value: $EDGE_PORT}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: edge-http
                http_filters:
                  - name: envoy.filters.http.jwt_authn
                    typed_config:
                      '@type': type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                      providers:
                        petmesh:
                          issuer: "$ISSUER"
                          audiences: [petmesh]
                          forward: true
                          remote_jwks:
                            http_uri: {uri: "$ISSUER/.well-known/jwks.json", cluster: edge_local, timeout: 5s}
                            cache_duration: 300s
                      requirement_map:
                        petmesh-required: {provider_name: petmesh}
                        petmesh-optional: {requires_any: {requirements: [{provider_name: petmesh}, {allow_missing: {}}]}}
                  - name: envoy.filters.http.router
                    typed_config:
                      '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
                route_config:
                  name: edge-http
                  virtual_hosts:
                    - name: edge
                      domains: ['*']
                      routes:
                        - name: auth
                          match: {prefix: /auth/}
                          route: {cluster: edge_local}
                          typed_per_filter_config:
                            envoy.filters.http.jwt_authn:
                              '@type': type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                              requirement_name: petmesh-optional
                        - name: pets
                          match: {prefix: /}
                          route: {cluster: backend, timeout: 5s}
                          typed_per_filter_config:
                            envoy.filters.http.jwt_authn:
                              '@type': type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                              requirement_name: petmesh-required
  clusters:
    - name: edge_local
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: edge_local
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $EDGE_PORT}}}}]}]
    - name: backend
      type: STATIC
      connect_timeout: 1s
      lb_policy: ROUND_ROBIN
      load_assignment:
        cluster_name: backend
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $BACKEND_PORT}}}}]}]
EOF
"$TMP/edge" -addr "127.0.0.1:$EDGE_PORT" -admin-addr "127.0.0.1:$ADMIN_PORT" -xds-addr "" -bootstrap "$TMP/bootstrap.yaml" \
  -node-id edge~bench -users-file "$TMP/users.yaml" -keys-dir "$TMP/keys" -issuer "$ISSUER" \
  ${EDGE_FLAGS:-} 2>"$TMP/edge.log" &
PIDS+=($!)

wait_http "http://127.0.0.1:$BACKEND_PORT/pets/1"
wait_http "http://127.0.0.1:$PROXY_PORT/pets/1"
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
TOKEN=$(curl -sf -H 'Content-Type: application/json' -d '{"username":"bench","password":"bench-pw"}' \
  "http://127.0.0.1:$EDGE_PORT/auth/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$EDGE_PORT/pets/1") == 401 ]] || { echo "bench-edge: the edge route is not authenticated" >&2; exit 1; }
[[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$EDGE_PORT/pets/1") == 200 ]] || { echo "bench-edge: token refused" >&2; exit 1; }

declare -A URL HDR RPS P99
URL[edge]="http://127.0.0.1:$EDGE_PORT/pets/1";  HDR[edge]="Authorization: Bearer $TOKEN"
URL[direct]="http://127.0.0.1:$BACKEND_PORT/pets/1"; HDR[direct]="X-Bench: 1"
URL[nginx]="http://127.0.0.1:$PROXY_PORT/pets/1";  HDR[nginx]="X-Bench: 1"
TARGETS=(edge direct nginx)

to_ms() { # wrk latency "1.23ms" / "850.00us" / "1.02s" → ms
  awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000} else print v }'
}

run_wrk() { # target duration → "rps p99ms"
  local t=$1 d=$2 out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$d" --latency -H "${HDR[$t]}" "${URL[$t]}")
  if grep -q "Non-2xx" <<<"$out"; then echo "bench-edge: $t answered non-2xx:" >&2; echo "$out" >&2; exit 1; fi
  local rps p99
  rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
  p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  echo "$rps $(to_ms "$p99")"
}

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
echo "warm-up ($WARMUP each)" >&2
for t in "${TARGETS[@]}"; do run_wrk "$t" "$WARMUP" >/dev/null; done

ROWS=""
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    if [[ -n "${PROFILE:-}" && $t == edge && $r == 1 ]]; then
      # CPU profile of the edge during this round (admin port pprof).
      curl -s -o "$PROFILE" "http://127.0.0.1:$ADMIN_PORT/debug/pprof/profile?seconds=${DURATION%s}" &
      PROF_PID=$!
    fi
    read -r rps p99 < <(run_wrk "$t" "$DURATION")
    if [[ -n "${PROF_PID:-}" ]]; then wait "$PROF_PID" || true; PROF_PID=""; fi
    echo "round $r $t: $rps req/s, p99 $p99 ms" >&2
    ROWS+="| $r | $t | $rps | $p99 |"$'\n'
    RPS[$t]="${RPS[$t]:-} $rps"; P99[$t]="${P99[$t]:-} $p99"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
declare -A MR MP
for t in "${TARGETS[@]}"; do MR[$t]=$(median <<<"${RPS[$t]}"); MP[$t]=$(median <<<"${P99[$t]}"); done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
RR=$(ratio "${MR[edge]}" "${MR[nginx]}")
PR=$(ratio "${MP[edge]}" "${MP[nginx]}")
verdict() { awk -v rr="$RR" -v pr="$PR" 'BEGIN{ print ((rr>=0.7 && pr<=1.5) ? "met" : "NOT met") }'; }

mkdir -p "$(dirname "$OUT")"
{
  echo "# bench-edge"
  echo
  echo "Generated by \`scripts/bench-edge.sh\` on $(date -u +%Y-%m-%dT%H:%MZ)."
  echo "Conditions: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average before the run $LOAD"
  echo "(shared machine: figures are noisy; compare ratios within one run). wrk -t$THREADS -c$CONNS, warm-up $WARMUP per target,"
  echo "$ROUNDS rounds of $DURATION per target, targets alternated; medians over rounds. Backend: nginx (1 worker) returning a"
  echo "small JSON document. nginx proxy: 2 workers, keep-alive upstream, access log to a file. Edge: bootstrap config"
  echo "(no control plane), route with jwt_authn required (ES256, verification cache on), access log to a file,"
  echo "GOMAXPROCS=$(nproc). All processes and wrk on the same machine."
  echo
  echo "| target | req/s (median) | p99 ms (median) |"
  echo "| --- | --- | --- |"
  for t in "${TARGETS[@]}"; do echo "| $t | ${MR[$t]} | ${MP[$t]} |"; done
  echo
  echo "| ratio | value | target |"
  echo "| --- | --- | --- |"
  echo "| edge req/s ÷ nginx req/s | $RR | ≥ 0.7 |"
  echo "| edge p99 ÷ nginx p99 | $PR | ≤ 1.5 |"
  echo "| edge req/s ÷ direct req/s | $(ratio "${MR[edge]}" "${MR[direct]}") | |"
  echo
  echo "Target $(verdict)."
  echo
  echo "Every round:"
  echo
  echo "| round | target | req/s | p99 ms |"
  echo "| --- | --- | --- | --- |"
  printf '%s' "$ROWS"
} >"$OUT"
cat "$OUT"
