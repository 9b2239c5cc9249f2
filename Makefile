# petmesh — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO       ?= go
# The Go release the project is built and checked with: a patch release of
# the go.mod version that fixes the standard-library vulnerabilities
# govulncheck reports for 1.26.8. The go command fetches it through the
# module proxy once (about 70 MB) and caches it; GOTOOLCHAIN=local keeps
# the installed Go.
export GOTOOLCHAIN ?= go1.26.10
BIN      := $(CURDIR)/bin
RUN_DIR  ?= $(CURDIR)/.run
# Tool binaries (Consul, Jaeger) are built once per version into this cache.
CACHE    ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/petmesh
PG_PORT  ?= 55432
PG_DIR   ?= /tmp/petmesh-pg-$(PG_PORT)
TEST_TIMEOUT ?= 60m
GOTEST_FLAGS ?= -race -count=1

export PETMESH_TOOLS_CACHE := $(CACHE)

BINARIES := pets=./services/pets/cmd/pets \
            sync=./services/sync/cmd/sync \
            stats=./services/stats/cmd/stats \
            petfinder-standin=./dev/petfinder-standin/cmd/petfinder-standin \
            controlplane=./controlplane/cmd/controlplane \
            petctl=./controlplane/cmd/petctl \
            edge=./edge/cmd/edge \
            sidecar=./sidecar/cmd/sidecar \
            petmesh-dev=./dev/launcher/cmd/petmesh-dev

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build every binary into bin/.
	@mkdir -p $(BIN)
	@for b in $(BINARIES); do name=$${b%%=*}; pkg=$${b#*=}; \
	  if [ -d "$$pkg" ]; then $(GO) build -o $(BIN)/$$name $$pkg || exit 1; fi; done
	@ls $(BIN)

.PHONY: run
REGISTRY ?= builtin
CONSUL_ENV = $(if $(filter consul,$(REGISTRY)),PETMESH_CONSUL_BIN=$$(scripts/tool.sh consul),)
# OBS=1: also a real Jaeger (built once by scripts/tool.sh) and Prometheus
# (make deps), every process's OTLP exporter pointed at that Jaeger.
OBS ?=
TRACE_RATIO ?= 1
OBS_ON = $(filter 1 true,$(OBS))
OBS_ENV = $(if $(OBS_ON),PETMESH_JAEGER_BIN=$$(scripts/tool.sh jaeger),)
RUN_FLAGS = -bin $(BIN) -dir $(RUN_DIR) -registry $(REGISTRY) -trace-ratio $(TRACE_RATIO) \
            $(if $(OBS_ON),-obs -prometheus-config $(CURDIR)/observability/prometheus/prometheus.local.yml)

run: build ## Run the whole topology in the foreground (Ctrl-C stops it). REGISTRY=consul: a real Consul; OBS=1: also Jaeger and Prometheus (TRACE_RATIO=0..1).
	$(CONSUL_ENV) $(OBS_ENV) $(BIN)/petmesh-dev $(RUN_FLAGS)

.PHONY: start
start: build ## Start the same topology in the background (logs and pids under .run/; OBS=1 likewise).
	@mkdir -p $(RUN_DIR)
	@if [ -f $(RUN_DIR)/petmesh-dev.pid ] && kill -0 $$(cat $(RUN_DIR)/petmesh-dev.pid) 2>/dev/null; then \
	  echo "already running (pid $$(cat $(RUN_DIR)/petmesh-dev.pid))"; exit 1; fi
	@$(if $(filter consul,$(REGISTRY)),scripts/tool.sh consul >/dev/null &&) $(if $(OBS_ON),scripts/tool.sh jaeger >/dev/null &&) true
	@$(CONSUL_ENV) $(OBS_ENV) nohup $(BIN)/petmesh-dev $(RUN_FLAGS) > $(RUN_DIR)/petmesh-dev.log 2>&1 & echo $$! > $(RUN_DIR)/petmesh-dev.pid
	@for i in $$(seq 1 900); do grep -q "petmesh is up" $(RUN_DIR)/petmesh-dev.log 2>/dev/null && break; \
	  kill -0 $$(cat $(RUN_DIR)/petmesh-dev.pid) 2>/dev/null || { cat $(RUN_DIR)/petmesh-dev.log; exit 1; }; sleep 0.2; done
	@cat $(RUN_DIR)/petmesh-dev.log | grep -v '^{' || true

.PHONY: stop
stop: ## Stop the background topology started by `make start`.
	@if [ -f $(RUN_DIR)/petmesh-dev.pid ]; then pid=$$(cat $(RUN_DIR)/petmesh-dev.pid); \
	  kill -TERM $$pid 2>/dev/null || true; \
	  for i in $$(seq 1 150); do kill -0 $$pid 2>/dev/null || break; sleep 0.2; done; \
	  rm -f $(RUN_DIR)/petmesh-dev.pid; echo stopped; else echo "not running"; fi

.PHONY: deps
deps: ## Install what the tests need (Debian: PostgreSQL, Prometheus, docker-compose, wrk, nginx, HAProxy, Caddy).
	@scripts/deps.sh

.PHONY: tools
tools: ## Build the pinned Consul and Jaeger into the cache (slow the first time).
	@scripts/tool.sh consul >/dev/null
	@scripts/tool.sh jaeger >/dev/null

.PHONY: test
test: deps tools ## Run every test (real PostgreSQL, Consul, Jaeger, Prometheus included).
	@scripts/postgres.sh start $(PG_DIR) $(PG_PORT) > $(PG_DIR).dsn
	@set -o pipefail; trap 'scripts/postgres.sh stop $(PG_DIR)' EXIT; \
	  PETMESH_TEST_POSTGRES_DSN=$$(cat $(PG_DIR).dsn) \
	  PETMESH_CONSUL_BIN=$$(scripts/tool.sh consul) \
	  PETMESH_JAEGER_BIN=$$(scripts/tool.sh jaeger) \
	  PETMESH_REQUIRE_REAL=1 \
	  $(GO) test $(GOTEST_FLAGS) -timeout $(TEST_TIMEOUT) ./...
	@$(MAKE) --no-print-directory compose-check

.PHONY: compose-check
compose-check: ## Validate docker-compose.yml offline.
	@if [ -f docker-compose.yml ]; then docker-compose -f docker-compose.yml config -q && echo "docker-compose.yml ok"; fi

.PHONY: lint
lint: ## gofmt, go vet, staticcheck, govulncheck (offline database: scripts/vulndb.sh) and go mod tidy must be clean.
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^tools/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@db=$$(GO=$(GO) scripts/vulndb.sh) && echo "$(GO) tool govulncheck -db $$db ./..." && $(GO) tool govulncheck -db "$$db" ./...
	@cp go.mod /tmp/petmesh-go.mod.bak; cp go.sum /tmp/petmesh-go.sum.bak; $(GO) mod tidy; \
	  if ! cmp -s go.mod /tmp/petmesh-go.mod.bak || ! cmp -s go.sum /tmp/petmesh-go.sum.bak; then \
	  echo "go mod tidy changes go.mod/go.sum; run it and commit"; cp /tmp/petmesh-go.mod.bak go.mod; cp /tmp/petmesh-go.sum.bak go.sum; exit 1; fi

.PHONY: bench
bench: ## Side-by-side benchmark (direct, nginx, HAProxy, Caddy, Traefik, petmesh) and control-plane scale; writes results/bench/ (BENCHMARKS.md).
	@scripts/bench.sh all

.PHONY: bench-proxies
bench-proxies: ## Only the side-by-side part of make bench (knobs: BENCH_ROUNDS, BENCH_DURATION, ... in BENCHMARKS.md).
	@scripts/bench.sh proxies

.PHONY: bench-controlplane
bench-controlplane: ## Only the control-plane scale part of make bench (BenchmarkScale: 100/1,000/2,000 clients, 10,000 endpoints).
	@scripts/bench.sh controlplane

.PHONY: bench-go
bench-go: ## Go microbenchmarks of the hot paths (conditions in each component's README).
	@scripts/postgres.sh start $(PG_DIR) $(PG_PORT) > $(PG_DIR).dsn
	@trap 'scripts/postgres.sh stop $(PG_DIR)' EXIT; \
	  PETMESH_TEST_POSTGRES_DSN=$$(cat $(PG_DIR).dsn) \
	  $(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./...

.PHONY: bench-edge
bench-edge: ## wrk through the edge (ES256 JWT), directly and via nginx, in one run; writes results/bench-edge.md.
	@WITH_BENCH=1 scripts/deps.sh
	@$(MAKE) --no-print-directory build
	scripts/bench-edge.sh

.PHONY: chaos
CHAOS_RPS ?= 200
chaos: ## Fault scenarios under a fixed-rate load, faults held 60 s, real Consul; writes results/chaos/ and the table in RESILIENCE.md (CHAOS_RPS, CHAOS_FAULT).
	@mkdir -p results/chaos
	@set -o pipefail; PETMESH_CONSUL_BIN=$$(scripts/tool.sh consul) PETMESH_REQUIRE_REAL=1 \
	  PETMESH_CHAOS_FULL=1 PETMESH_CHAOS_RPS=$(CHAOS_RPS) $(if $(CHAOS_FAULT),PETMESH_CHAOS_FAULT=$(CHAOS_FAULT)) \
	  PETMESH_CHAOS_RESULTS=$(CURDIR)/results/chaos PETMESH_CHAOS_DOC=$(CURDIR)/RESILIENCE.md \
	  $(GO) test -count=1 -timeout 60m -run '^TestChaos$$' -v ./e2e/ 2>&1 | tee results/chaos/chaos.log

.PHONY: fuzz
FUZZTIME ?= 10s
fuzz: ## Run every native Go fuzzer for FUZZTIME each (default 10s; FUZZ_PKGS=./edge/ for some packages); a finding fails and is kept in testdata/fuzz/.
	@FUZZTIME=$(FUZZTIME) GO=$(GO) scripts/fuzz.sh $(FUZZ_PKGS)

.PHONY: clean
clean: ## Remove build outputs and the run directory.
	rm -rf $(BIN) $(RUN_DIR)
