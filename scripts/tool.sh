#!/usr/bin/env bash
# Builds a pinned tool (consul, jaeger, traefik) from its Go module into the cache,
# keyed by version, and prints the binary's path. Cached after the first
# build; CI on a fresh machine builds it from scratch.
#   scripts/tool.sh consul|jaeger|traefik
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${PETMESH_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/petmesh}
name=$1
case $name in
consul) pkg=github.com/hashicorp/consul ;;
jaeger) pkg=github.com/jaegertracing/jaeger/cmd/jaeger ;;
traefik) pkg=github.com/traefik/traefik/v3/cmd/traefik ;; # optional: make bench BENCH_TRAEFIK=1
*) echo "unknown tool $name" >&2; exit 2 ;;
esac
moddir=$root/tools/$name
version=$(cd "$moddir" && awk -v m="${pkg%%/cmd/*}" '$1==m {print $2}' go.mod | head -1)
if [ -z "$version" ]; then echo "tool $name: no version of ${pkg%%/cmd/*} in $moddir/go.mod" >&2; exit 1; fi
out=$cache/$name-$version/$name
if [ ! -x "$out" ]; then
  mkdir -p "$(dirname "$out")"
  echo "building $name $version into $out (first time only; takes minutes)" >&2
  (cd "$moddir" && GONOSUMDB='github.com/hashicorp/consul/*' GOFLAGS=-mod=mod go build -o "$out.tmp" "$pkg" >&2)
  mv "$out.tmp" "$out"
fi
echo "$out"
