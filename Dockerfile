# syntax=docker/dockerfile:1
#
# One image with every petmesh binary; the container's command picks one:
#   docker run --rm petmesh:dev pets -help
# Binaries are static (CGO_ENABLED=0; SQLite is the pure-Go driver) and run
# as the distroless "nonroot" user (uid 65532) from /usr/local/bin.
# petmesh-healthcheck is the HTTP probe used by docker-compose health checks
# (the base image has no shell, curl or wget).

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build <<'SH'
set -eu
mkdir -p /out /data
for b in \
  pets=./services/pets/cmd/pets \
  sync=./services/sync/cmd/sync \
  stats=./services/stats/cmd/stats \
  petfinder-standin=./dev/petfinder-standin/cmd/petfinder-standin \
  controlplane=./controlplane/cmd/controlplane \
  edge=./edge/cmd/edge \
  sidecar=./sidecar/cmd/sidecar \
  petctl=./controlplane/cmd/petctl \
  petmesh-healthcheck=./deploy/healthcheck/cmd/petmesh-healthcheck
do
  go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o "/out/${b%%=*}" "${b#*=}"
done
SH

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="petmesh" \
      org.opencontainers.image.description="petmesh: edge, sidecar, control plane and services (pets, sync, stats)"
COPY --from=build /out/ /usr/local/bin/
# Writable data directory (SQLite files, edge signing keys); named volumes
# mounted here inherit its owner.
COPY --from=build --chown=65532:65532 /data /var/lib/petmesh
WORKDIR /var/lib/petmesh
USER 65532:65532
# No ENTRYPOINT: the command is the binary, e.g. ["pets"] or ["sidecar"].
CMD ["petctl", "-help"]
