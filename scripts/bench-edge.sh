#!/usr/bin/env bash
# bench-edge.sh: wrk through the petmesh edge (JWT-verified route, valid ES256
# token), directly to the backend, and through nginx as a plain reverse proxy
# to the same backend, in one run, alternating targets. Writes a markdown
# table to results/bench-edge.md (override with OUT=...).
#
# Needs wrk and nginx (scripts/deps.sh installs both with WITH_BENCH=1) and Go.
# Knobs (environment): DURATION (10s), WARMUP (3s), ROUNDS (2), THREADS (2),
# CONNS (64), OUT (results/bench-edge.md), KEEP=1 keeps the temp dir, PROFILE=file
# saves a CPU profile of the edge during its first round, EDGE_FLAGS adds edge flags,
# EDGE_ENV adds environment to the edge (e.g. "GOGC=200"), EDGE_BIN uses a built
# edge instead of building one, BASE_EDGE_BIN adds a second edge (target
# edge-base, e.g. an older build) to the same run for a before/after comparison
# (BASE_EDGE_ENV: its environment, default EDGE_ENV),
# BARE=0 drops the target bare (scripts/bareproxy.go: a plain httputil.ReverseProxy
# with a tuned transport, the floor of a net/http proxy).
#
# Besides req/s and p99 (which depend on how much of a shared machine each
# process got), every round records the CPU time per request of the proxy
# (edge or nginx), the backend and wrk, from /proc; the report estimates the
# req/s ratio an idle machine would show from them.
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

if [[ -n "${EDGE_BIN:-}" ]]; then
  cp "$EDGE_BIN" "$TMP/edge"
else
  echo "building the edge" >&2
  (cd "$ROOT" && go build -o "$TMP/edge" ./edge/cmd/edge)
fi
if [[ "${BARE:-1}" == 1 ]]; then
  (cd "$ROOT" && go build -o "$TMP/bareproxy" scripts/bareproxy.go)
fi

BACKEND_PORT=$(free_port)
PROXY_PORT=$(free_port)

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
BACKEND_PID=$!
PIDS+=($BACKEND_PID)

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
PROXY_PID=$!
PIDS+=($PROXY_PID)

# --- the edge, from a bootstrap file (no control plane) ---------------------
declare -A URL HDR PROXY_OF ADMIN_OF
start_edge() { # name binary env: starts an edge, logs in, sets URL[name] HDR[name] PROXY_OF[name] ADMIN_OF[name]
  local name=$1 bin=$2 envs=$3 port admin dir issuer hash token
  port=$(free_port); admin=$(free_port); dir="$TMP/run-$name"; mkdir -p "$dir"
  issuer="http://127.0.0.1:$port"
  hash=$(printf 'bench-pw\n' | "$bin" hash-password -cost 10)
  cat >"$dir/users.yaml" <<EOF
users:
  - username: bench
    password_hash: "$hash"
    roles: [viewer]
EOF
  sed -e "s|@EDGE_PORT@|$port|g" -e "s|@ISSUER@|$issuer|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" "$TMP/bootstrap.tmpl" >"$dir/bootstrap.yaml"
  # shellcheck disable=SC2086
  env $envs "$bin" -addr "127.0.0.1:$port" -admin-addr "127.0.0.1:$admin" -xds-addr "" -bootstrap "$dir/bootstrap.yaml" \
    -node-id "edge~$name" -users-file "$dir/users.yaml" -keys-dir "$dir/keys" -issuer "$issuer" \
    ${EDGE_FLAGS:-} 2>"$dir/edge.log" &
  PROXY_OF[$name]=$!
  PIDS+=($!)
  ADMIN_OF[$name]=$admin
  wait_http "http://127.0.0.1:$admin/readyz"
  token=$(curl -sf -H 'Content-Type: application/json' -d '{"username":"bench","password":"bench-pw"}' \
    "$issuer/auth/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$issuer/pets/1") == 401 ]] || { echo "bench-edge: the $name route is not authenticated" >&2; exit 1; }
  [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$issuer/pets/1") == 200 ]] || { echo "bench-edge: $name refused the token" >&2; exit 1; }
  URL[$name]="$issuer/pets/1"; HDR[$name]="Authorization: Bearer $token"
}
cat >"$TMP/bootstrap.tmpl" <<'EOF'
static_resources:
  listeners:
    - name: edge-http
      address: {socket_address: {address: 127.0.0.1, port_value: @EDGE_PORT@}}
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
                          issuer: "@ISSUER@"
                          audiences: [petmesh]
                          forward: true
                          remote_jwks:
                            http_uri: {uri: "@ISSUER@/.well-known/jwks.json", cluster: edge_local, timeout: 5s}
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
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @EDGE_PORT@}}}}]}]
    - name: backend
      type: STATIC
      connect_timeout: 1s
      lb_policy: ROUND_ROBIN
      load_assignment:
        cluster_name: backend
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @BACKEND_PORT@}}}}]}]
EOF

wait_http "http://127.0.0.1:$BACKEND_PORT/pets/1"
wait_http "http://127.0.0.1:$PROXY_PORT/pets/1"
start_edge edge "$TMP/edge" "${EDGE_ENV:-}"
EDGE_PID=${PROXY_OF[edge]}
ADMIN_PORT=${ADMIN_OF[edge]}
TARGETS=(edge)
if [[ -n "${BASE_EDGE_BIN:-}" ]]; then
  cp "$BASE_EDGE_BIN" "$TMP/edge-base.bin"
  start_edge edge-base "$TMP/edge-base.bin" "${BASE_EDGE_ENV-${EDGE_ENV:-}}"
  TARGETS+=(edge-base)
fi
if [[ "${BARE:-1}" == 1 ]]; then
  # The floor of a net/http + httputil proxy: a bare ReverseProxy with a
  # tuned transport, no routing, auth, metrics or logs.
  BARE_PORT=$(free_port)
  env ${EDGE_ENV:-} "$TMP/bareproxy" -addr "127.0.0.1:$BARE_PORT" -backend "http://127.0.0.1:$BACKEND_PORT" 2>"$TMP/bare.log" &
  PROXY_OF[bare]=$!
  PIDS+=($!)
  wait_http "http://127.0.0.1:$BARE_PORT/pets/1"
  URL[bare]="http://127.0.0.1:$BARE_PORT/pets/1"; HDR[bare]="Authorization: Bearer $(cut -d' ' -f3 <<<"${HDR[edge]}")"
  TARGETS+=(bare)
fi
TARGETS+=(direct nginx)

declare -A RPS P99
URL[direct]="http://127.0.0.1:$BACKEND_PORT/pets/1"; HDR[direct]="X-Bench: 1"
URL[nginx]="http://127.0.0.1:$PROXY_PORT/pets/1";  HDR[nginx]="X-Bench: 1"

to_ms() { # wrk latency "1.23ms" / "850.00us" / "1.02s" → ms
  awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000} else print v }'
}

# CPU accounting: utime+stime (clock ticks) of a process tree (a pid and
# its children: nginx's master and workers), read from /proc before and
# after a wrk run. CPU per request does not depend on how much of the
# shared machine each process got, so it is the figure to compare here.
TICK=$(getconf CLK_TCK)
tree_pids() { echo "$1"; pgrep -P "$1" || true; }
cpu_ticks() { # pid → ticks of the pid and its children
  local sum=0 p f
  for p in $(tree_pids "$1"); do
    if [[ -r /proc/$p/stat ]]; then
      f=$(sed 's/^.*) //' "/proc/$p/stat")
      sum=$(( sum + $(awk '{print $12 + $13}' <<<"$f") ))
    fi
  done
  echo "$sum"
}
PROXY_OF[nginx]=$PROXY_PID; PROXY_OF[direct]=""

run_wrk() { # target duration → "rps p99ms requests proxy_us backend_us wrk_us" (µs of CPU per request)
  local t=$1 d=$2 out p0=0 p1=0 b0 b1
  local proxy=${PROXY_OF[$t]}
  [[ -n $proxy ]] && p0=$(cpu_ticks "$proxy")
  b0=$(cpu_ticks "$BACKEND_PID")
  out=$(/usr/bin/time -f 'WRKCPU %U %S' wrk -t"$THREADS" -c"$CONNS" -d"$d" --latency -H "${HDR[$t]}" "${URL[$t]}" 2>&1)
  b1=$(cpu_ticks "$BACKEND_PID")
  [[ -n $proxy ]] && p1=$(cpu_ticks "$proxy")
  if grep -q "Non-2xx" <<<"$out"; then echo "bench-edge: $t answered non-2xx:" >&2; echo "$out" >&2; exit 1; fi
  local rps p99 n wrkcpu
  rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
  p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  n=$(awk '/requests in/{print $1}' <<<"$out")
  wrkcpu=$(awk '/^WRKCPU/{print $2 + $3}' <<<"$out")
  awk -v rps="$rps" -v p99="$(to_ms "$p99")" -v n="$n" -v pt=$((p1 - p0)) -v bt=$((b1 - b0)) -v w="$wrkcpu" -v tick="$TICK" \
    'BEGIN{ printf "%s %s %d %.1f %.1f %.1f\n", rps, p99, n, pt*1e6/tick/n, bt*1e6/tick/n, w*1e6/n }'
}

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
echo "warm-up ($WARMUP each)" >&2
for t in "${TARGETS[@]}"; do run_wrk "$t" "$WARMUP" >/dev/null; done

ROWS=""
declare -A PCPU BCPU WCPU
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    if [[ -n "${PROFILE:-}" && $t == edge && $r == 1 ]]; then
      # CPU profile of the edge during this round (admin port pprof).
      curl -s -o "$PROFILE" "http://127.0.0.1:$ADMIN_PORT/debug/pprof/profile?seconds=${DURATION%s}" &
      PROF_PID=$!
    fi
    read -r rps p99 n pus bus wus < <(run_wrk "$t" "$DURATION")
    if [[ -n "${PROF_PID:-}" ]]; then wait "$PROF_PID" || true; PROF_PID=""; fi
    echo "round $r $t: $rps req/s, p99 $p99 ms, $n requests; CPU µs/request: proxy $pus, backend $bus, wrk $wus" >&2
    ROWS+="| $r | $t | $rps | $p99 | $n | $pus | $bus | $wus |"$'\n'
    RPS[$t]="${RPS[$t]:-} $rps"; P99[$t]="${P99[$t]:-} $p99"
    PCPU[$t]="${PCPU[$t]:-} $pus"; BCPU[$t]="${BCPU[$t]:-} $bus"; WCPU[$t]="${WCPU[$t]:-} $wus"
  done
done

# SYSCALLS=1: one more short wrk run per proxy with strace -c attached
# (slow: not part of the figures above), reported as system calls per
# request by name.
declare -A SYSC
if [[ "${SYSCALLS:-0}" == 1 ]] && command -v strace >/dev/null; then
  for t in "${TARGETS[@]}"; do
    [[ -z ${PROXY_OF[$t]:-} ]] && continue
    pids=$(tree_pids "${PROXY_OF[$t]}" | paste -sd, -)
    strace -c -f -p "$pids" -o "$TMP/strace-$t.txt" 2>/dev/null &
    spid=$!
    sleep 1
    n=$(wrk -t"$THREADS" -c"$CONNS" -d3s -H "${HDR[$t]}" "${URL[$t]}" | awk '/requests in/{print $1}')
    kill -INT "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    SYSC[$t]=$(awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { c[$NF] = $4 }
      END { for (k in c) if (c[k] / n >= 0.05) printf "%s %.2f, ", k, c[k] / n }' "$TMP/strace-$t.txt" | sed 's/, $//')
    echo "system calls per request ($t, under strace): ${SYSC[$t]}" >&2
  done
fi

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
declare -A MR MP MPC MBC MWC
for t in "${TARGETS[@]}"; do
  MR[$t]=$(median <<<"${RPS[$t]}"); MP[$t]=$(median <<<"${P99[$t]}")
  MPC[$t]=$(median <<<"${PCPU[$t]}"); MBC[$t]=$(median <<<"${BCPU[$t]}"); MWC[$t]=$(median <<<"${WCPU[$t]}")
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
sum3() { awk -v a="$1" -v b="$2" -v c="$3" 'BEGIN{ printf "%.1f", a+b+c }'; }
RR=$(ratio "${MR[edge]}" "${MR[nginx]}")
PR=$(ratio "${MP[edge]}" "${MP[nginx]}")
# On an idle machine where the proxy, the backend and wrk share the CPUs
# and all are busy, req/s is about CPUs ÷ (CPU per request of all three):
# the load-independent estimate of the req/s ratio.
TN=$(sum3 "${MPC[nginx]}" "${MBC[nginx]}" "${MWC[nginx]}")
est() { ratio "$TN" "$(sum3 "${MPC[$1]}" "${MBC[$1]}" "${MWC[$1]}")"; }
ER=$(est edge)
verdict() { awk -v rr="$RR" -v pr="$PR" 'BEGIN{ print ((rr>=0.7 && pr<=1.5) ? "met" : "NOT met") }'; }
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
peak_rss_mb() { # pid → peak RSS (VmHWM) of the pid and its children, MB
  local sum=0 p kb
  for p in $(tree_pids "$1"); do
    kb=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    sum=$(( sum + ${kb:-0} ))
  done
  awk -v k="$sum" 'BEGIN{ printf "%.1f", k/1024 }'
}
declare -A RSS
for t in "${TARGETS[@]}"; do
  if [[ -n ${PROXY_OF[$t]:-} ]]; then RSS[$t]=$(peak_rss_mb "${PROXY_OF[$t]}"); else RSS[$t]="–"; fi
done

mkdir -p "$(dirname "$OUT")"
{
  echo "# bench-edge"
  echo
  echo "Generated by \`scripts/bench-edge.sh\` on $(date -u +%Y-%m-%dT%H:%MZ)."
  echo "Conditions: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average before the run $LOAD,"
  echo "after $LOAD_END (shared machine: req/s and p99 are noisy; compare ratios within one run, and prefer CPU per request)."
  echo "wrk -t$THREADS -c$CONNS, warm-up $WARMUP per target, $ROUNDS rounds of $DURATION per target, targets alternated; medians over rounds."
  echo "Backend: nginx (1 worker) returning a small JSON document. nginx proxy: 2 workers, keep-alive upstream, access log to a file."
  echo "Edge: bootstrap config (no control plane), route with jwt_authn required (ES256, verification cache on), access log to a file,"
  echo "GOMAXPROCS=$(nproc) unless set${EDGE_ENV:+, environment $EDGE_ENV}${EDGE_FLAGS:+, flags $EDGE_FLAGS}.${BASE_EDGE_BIN:+ edge-base: $(basename "$BASE_EDGE_BIN")${BASE_EDGE_ENV:+ with $BASE_EDGE_ENV}.} All processes and wrk on the same machine."
  echo
  echo "| target | req/s (median) | p99 ms (median) | proxy CPU µs/request | backend CPU µs/request | wrk CPU µs/request | proxy peak RSS MB |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  for t in "${TARGETS[@]}"; do echo "| $t | ${MR[$t]} | ${MP[$t]} | ${MPC[$t]} | ${MBC[$t]} | ${MWC[$t]} | ${RSS[$t]} |"; done
  echo
  echo "| ratio | value | target |"
  echo "| --- | --- | --- |"
  echo "| edge req/s ÷ nginx req/s (measured, load-dependent) | $RR | ≥ 0.7 |"
  echo "| edge p99 ÷ nginx p99 (measured, load-dependent) | $PR | ≤ 1.5 |"
  echo "| edge req/s ÷ direct req/s | $(ratio "${MR[edge]}" "${MR[direct]}") | |"
  for t in "${TARGETS[@]}"; do
    [[ $t == nginx || $t == direct ]] && continue
    echo "| proxy CPU per request, $t ÷ nginx | $(ratio "${MPC[$t]}" "${MPC[nginx]}") | |"
  done
  for t in "${TARGETS[@]}"; do
    [[ $t == nginx || $t == direct ]] && continue
    echo "| estimated req/s ratio $t ÷ nginx on an idle machine: (nginx + backend + wrk CPU/request) ÷ ($t + backend + wrk) = $TN ÷ $(sum3 "${MPC[$t]}" "${MBC[$t]}" "${MWC[$t]}") | $(est "$t") | $([[ $t == edge ]] && echo "≥ 0.7") |"
  done
  echo
  if [[ ${#SYSC[@]} -gt 0 ]]; then
    echo "System calls per request (strace -c over a separate 3 s wrk run per proxy; ≥ 0.05 per request):"
    echo
    for t in "${TARGETS[@]}"; do [[ -n ${SYSC[$t]:-} ]] && echo "- $t: ${SYSC[$t]}"; done
    echo
  fi
  echo "Target (measured req/s and p99 ratios) $(verdict)."
  echo
  echo "Every round (CPU: utime+stime from /proc over the round, µs per request; proxy = the edge or nginx's master and workers):"
  echo
  echo "| round | target | req/s | p99 ms | requests | proxy CPU µs/req | backend CPU µs/req | wrk CPU µs/req |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s' "$ROWS"
} >"$OUT"
cat "$OUT"
