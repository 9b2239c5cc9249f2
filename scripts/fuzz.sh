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
status=0
ran=0
failed=()
for pkg in "${pkgs[@]}"; do
  for fz in $(grep -h '^func Fuzz' "$pkg"/*_test.go | sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' | sort -u); do
    echo "== $pkg $fz ($fuzztime)"
    ran=$((ran + 1))
    if ! "$go" test -run '^$' -fuzz "^$fz\$" -fuzztime "$fuzztime" "$pkg"; then
      status=1
      failed+=("$pkg $fz")
    fi
  done
done
if [ "$ran" -eq 0 ]; then
  echo "fuzz: no fuzzer found in ${pkgs[*]}" >&2
  exit 1
fi
echo "fuzz: $ran fuzzers, ${#failed[@]} failed"
for f in "${failed[@]}"; do
  echo "  FAIL $f (crasher under its testdata/fuzz/)"
done
exit $status
