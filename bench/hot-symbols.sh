#!/usr/bin/env bash
# The link order of the release binary's hottest functions
# (link/hot-symbols.txt, read by build.rs; see docs/benchmarks.md,
# "Hot functions placed together").
#
#   bench/hot-symbols.sh            # profile the current release build, write the file
#   bench/hot-symbols.sh --check    # how many listed functions the release binary has
#
# The profile: callgrind (mangled names) on the gateway with the bench
# config, one worker, in front of the shared harness's upstream; runs of
# 2,000 and 22,000 `h2load --h1 -c 64` requests, then the same for h2c.
# A function's cost is the difference of its instructions between the two
# runs, so start-up and shutdown code drop out. Functions that run at
# least one instruction per request on average are listed, HTTP/1.1's
# first, hottest first, then those only h2c runs.
#
# The names carry a hash of the crate's version, the dependencies and the
# compiler, so the file goes stale when any of them change: lld skips the
# names it does not find, and the binary is then only laid out as it would
# be without the file. `--check` tells (bench/compare.sh runs it), and this
# script writes the file again.
# Needs valgrind, h2load (nghttp2-client), nm (binutils).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
ORDER="$ROOT/link/hot-symbols.txt"
# BIN=/path/to/portcullis profiles that binary, as built (no cargo build).
BUILT="${BIN:+yes}"
BIN="${BIN:-$ROOT/target/release/portcullis}"

# check: listed names the binary defines, of all listed names.
check() {
  local listed found
  listed=$(grep -cv '^\s*\(#\|$\)' "$ORDER" || true)
  found=$(nm --defined-only "$BIN" | awk '{ print $3 }' | sort -u |
    comm -12 - <(grep -v '^\s*\(#\|$\)' "$ORDER" | sort -u) | wc -l)
  echo "link/hot-symbols.txt: $found of $listed listed functions are in $BIN"
  if [ "$listed" -eq 0 ] || [ $((found * 10)) -lt $((listed * 9)) ]; then
    echo "link/hot-symbols.txt is stale: run bench/hot-symbols.sh, then rebuild (cargo build --release)" >&2
    return 1
  fi
}
if [ "${1:-}" = "--check" ]; then
  check
  exit
fi

WORK="${BENCH_WORK:-/tmp/portcullis-bench}/hot-symbols"
mkdir -p "$WORK"
. "$ROOT/bench/common.sh"
if [ -n "$BUILT" ]; then build_upstream; else build_bench; fi
export BENCH_UPSTREAM=127.0.0.1:19910
"$UPSTREAM_BIN" 127.0.0.1:19910 1 >/dev/null 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null || true' EXIT
bench_config 19911 >"$WORK/config.yaml"

# profile NAME N [H2LOAD_ARGS]: per-function instructions after N requests
# ("Ir name" lines, names as the binary spells them).
profile() {
  under_callgrind "$WORK/$1.$2.out" 19911 "$2" --demangle=no "${@:3}" -c 64
  callgrind_annotate --threshold=100 "$WORK/$1.$2.out" |
    sed -nE 's/^ *([0-9,]+) \( *[0-9.]+%\)  [^:]*:([^ ]+) \[.*\]$/\1 \2/p' | tr -d , >"$WORK/$1.$2.txt"
}
# hot NAME: functions of the binary, hottest first, with at least 20,000
# more instructions in the long run than in the short one.
hot() {
  awk 'NR == FNR { short[$2] = $1; next } { d = $1 - short[$2]; if (d >= 20000) print d, $2 }' \
    "$WORK/$1.2000.txt" "$WORK/$1.22000.txt" | sort -k1,1nr | awk '{ print $2 }' |
    grep -Fxf <(nm --defined-only "$BIN" | awk '$2 ~ /^[tT]$/ { print $3 }') || true
}
profile h1 2000 --h1
profile h1 22000 --h1
profile h2 2000 -m 10
profile h2 22000 -m 10
hot h1 >"$WORK/h1.hot"
hot h2 >"$WORK/h2.hot"
{
  echo "# The release binary's hottest functions, placed first in .text by lld in"
  echo "# this order (build.rs passes --symbol-ordering-file). Written by"
  echo "# bench/hot-symbols.sh from commit $(git -C "$ROOT" rev-parse --short HEAD) with $(rustc --version | cut -d' ' -f1-2):"
  echo "# $(wc -l <"$WORK/h1.hot") functions of HTTP/1.1 proxying, then those only h2c runs."
  cat "$WORK/h1.hot"
  grep -vFxf "$WORK/h1.hot" "$WORK/h2.hot" || true
} >"$ORDER"
echo "wrote $ORDER ($(grep -cv '^#' "$ORDER") functions); rebuild with cargo build --release"
