#!/usr/bin/env bash
# Runs every native Go fuzzer of the module briefly, one after the other
# (go test -fuzz takes one target at a time). CI runs it with the default;
# give FUZZTIME=10m for a longer hunt. A finding fails the script and leaves
# the crasher in the package's testdata/fuzz/<Fuzzer>/ (commit it: it becomes
# part of the seed corpus).
#   scripts/fuzz.sh            # every fuzzer, FUZZTIME (default 10s) each
#   scripts/fuzz.sh ./edge/    # only the fuzzers of these packages
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
go=${GO:-go}
fuzztime=${FUZZTIME:-10s}
pkgs=("$@")
if [ ${#pkgs[@]} -eq 0 ]; then
  mapfile -t pkgs < <(git ls-files '*_test.go' | grep -v '^tools/' | xargs grep -l '^func Fuzz' | xargs -n1 dirname | sort -u | sed 's|^|./|')
fi
# Go 1.26's fuzzing coordinator can end a duration-bounded run (-fuzztime
# 10s) with a bare "context deadline exceeded" failure and no failing
# input, when a worker is mid-call as the deadline fires on a loaded
# machine (Go issue 75804, fixed in Go 1.27). A run that fails that way,
# with no "Failing input written" line, is reported as a flake, not a
# finding; any other failure (a crasher, a build error) fails the script.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
ran=0
failed=()
flaked=()
for pkg in "${pkgs[@]}"; do
  for fz in $(grep -h '^func Fuzz' "$pkg"/*_test.go | sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' | sort -u); do
    echo "== $pkg $fz ($fuzztime)"
    ran=$((ran + 1))
    if "$go" test -run '^$' -fuzz "^$fz\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$out"; then
      continue
    fi
    if ! grep -q 'Failing input written' "$out" && grep -A1 -- "^--- FAIL: $fz " "$out" | grep -qx '[[:space:]]*context deadline exceeded'; then
      flaked+=("$pkg $fz")
      continue
    fi
    status=1
    failed+=("$pkg $fz")
  done
done
if [ "$ran" -eq 0 ]; then
  echo "fuzz: no fuzzer found in ${pkgs[*]}" >&2
  exit 1
fi
echo "fuzz: $ran fuzzers, ${#failed[@]} failed, ${#flaked[@]} stopped by the fuzztime deadline race (Go issue 75804; no failing input)"
for f in "${failed[@]}"; do
  echo "  FAIL $f (a crasher is under its testdata/fuzz/; a build failure is above)"
done
for f in "${flaked[@]}"; do
  echo "  FLAKE $f"
done
exit $status
