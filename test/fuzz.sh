#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME (default 5s) each, one at a time.
#
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline exceeded" at the -fuzztime
# boundary on a loaded machine (golang/go#75804, fixed in Go 1.27): no failing input is written. A target
# that fails WITHOUT writing a new input under testdata/fuzz/<Target>/ is run once more; a target that
# writes a failing input fails at once, and the input is kept for `go test -run <Target>/<file>`.
set -euo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-5s}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

corpus_count() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }

n=0
while IFS= read -r file; do
  dir=$(dirname "$file")
  for target in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)\(' "$file" | sed -E 's/^func (Fuzz[A-Za-z0-9_]+)\(/\1/'); do
    corpus="$dir/testdata/fuzz/$target"
    for attempt in 1 2; do
      before=$(corpus_count "$corpus")
      echo "fuzz: $dir $target ($FUZZTIME)"
      if $GO test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "./$dir" >"$log" 2>&1; then
        break
      fi
      if [ "$(corpus_count "$corpus")" -gt "$before" ] || ! grep -q 'context deadline exceeded' "$log" || [ "$attempt" = 2 ]; then
        cat "$log"
        echo "fuzz: $target FAILED (a new failing input, if any, is under $corpus)" >&2
        exit 1
      fi
      echo "fuzz: $target stopped with Go's fuzztime race (golang/go#75804, no failing input written); running it again"
    done
    n=$((n+1))
  done
done < <(grep -rlE '^func Fuzz' --include='*_test.go' . | sort)
echo "fuzz: $n targets ran for $FUZZTIME each, no failures"
