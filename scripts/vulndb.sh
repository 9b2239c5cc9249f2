#!/usr/bin/env bash
# Builds a local Go vulnerability database for govulncheck and prints its
# file:// URL (for `go tool govulncheck -db <url>`).
#
# The data comes from a pinned version of the golang.org/x/vulndb module,
# fetched through the Go module proxy like any module (checksum verified by
# the go command): its data/osv/*.json are the OSV entries of the Go
# vulnerability database. vulndb's own cmd/indexdb, at the same version,
# writes them in the v1 database layout govulncheck reads (index/db.json,
# index/modules.json, index/vulns.json, ID/<id>.json). So `make lint` needs
# only the module proxy, not the vulnerability database's own host.
#
# The database is built once per version into the cache, like scripts/tool.sh:
#   ${PETMESH_TOOLS_CACHE:-${XDG_CACHE_HOME:-~/.cache}/petmesh}/govulndb-<version>/
# Bump VULNDB_VERSION (and VULNDB_SUM, printed by
# `go mod download -json golang.org/x/vulndb@<version>`) for newer data.
set -euo pipefail

VULNDB_VERSION=v0.0.0-20261105234957-e22db6528018
VULNDB_SUM=h1:mfngRv0Yoh0VApsXKEN82CjD99kl7mtparN3bs3JnqI=

go=${GO:-go}
cache=${PETMESH_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/petmesh}
out=$cache/govulndb-$VULNDB_VERSION
if [ ! -f "$out/index/db.json" ]; then
  echo "building the Go vulnerability database $VULNDB_VERSION into $out (first time only; takes minutes)" >&2
  tmp=$(mktemp -d "$cache/.govulndb.XXXXXX" 2>/dev/null || { mkdir -p "$cache" && mktemp -d "$cache/.govulndb.XXXXXX"; })
  trap 'rm -rf "$tmp"' EXIT
  # Outside any module, so that the main module's go.mod is never touched.
  json=$(cd "$tmp" && GOTOOLCHAIN=local GOFLAGS=-mod=mod "$go" mod download -json "golang.org/x/vulndb@$VULNDB_VERSION")
  field() { printf '%s\n' "$json" | sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" | head -1; }
  dir=$(field Dir)
  sum=$(field Sum)
  if [ "$sum" != "$VULNDB_SUM" ]; then
    echo "vulndb.sh: golang.org/x/vulndb@$VULNDB_VERSION has sum $sum, want $VULNDB_SUM" >&2
    exit 1
  fi
  if [ ! -d "$dir/data/osv" ]; then
    echo "vulndb.sh: $dir/data/osv missing: this vulndb version does not ship OSV data" >&2
    exit 1
  fi
  (cd "$tmp" && GOTOOLCHAIN=local GOBIN="$tmp/bin" "$go" install "golang.org/x/vulndb/cmd/indexdb@$VULNDB_VERSION" >&2)
  "$tmp/bin/indexdb" -vulns "$dir/data/osv" -out "$tmp/db" >&2
  for f in index/db.json index/modules.json index/vulns.json; do
    [ -s "$tmp/db/$f" ] || { echo "vulndb.sh: indexdb wrote no $f" >&2; exit 1; }
  done
  rm -rf "$out"
  mv "$tmp/db" "$out"
fi
echo "file://$out"
