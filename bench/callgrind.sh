#!/usr/bin/env bash
# Instructions per proxied request, under callgrind: the gateway (one
# worker, the bench config) in front of the shared harness's upstream; two
# runs of `h2load --h1 -c 8`, 2,000 and 22,000 requests, and the difference
# of their totals over 20,000, so start-up and shutdown cancel out.
# Repeatable to about ±300 instructions whatever else the machine does.
# With CACHE=1 it also simulates this CPU's caches (valgrind reads their
# sizes from the CPU) and prints the L1 misses per request: instruction
# fetches, data reads, data writes.
#
#   bench/callgrind.sh                      # the current release build
#   BIN=/path/to/portcullis bench/callgrind.sh
#   CACHE=1 CONNS=64 bench/callgrind.sh     # L1 misses, 64 connections as in bench/compare.sh
# Needs valgrind, h2load (nghttp2-client) and the shared harness's upstream.
set -eu
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}/callgrind"
mkdir -p "$WORK"
. "$ROOT/bench/common.sh"
# BIN=/path/to/portcullis measures that binary, as built (no cargo build).
if [ -n "${BIN:-}" ]; then build_upstream; else build_bench; fi
BIN="${BIN:-$ROOT/target/release/portcullis}"
export BENCH_UPSTREAM=127.0.0.1:19900
"$UPSTREAM_BIN" 127.0.0.1:19900 1 >/dev/null 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null || true' EXIT
bench_config 19901 >"$WORK/config.yaml"
SIM=""
if [ -n "${CACHE:-}" ]; then SIM=--cache-sim=yes; fi
total() { # N: the program's totals after N requests (Ir, then I1mr D1mr D1mw with CACHE=1)
  under_callgrind "$WORK/cg.$1.out" 19901 "$1" "$SIM" --h1 -c "${CONNS:-8}"
  awk '/^events:/ { for (i = 2; i <= NF; i++) at[$i] = i }
       /^summary:/ { print $at["Ir"], $at["I1mr"] + 0, $at["D1mr"] + 0, $at["D1mw"] + 0 }' "$WORK/cg.$1.out"
}
read -r -a a <<<"$(total 2000)"
read -r -a b <<<"$(total 22000)"
per() { echo $(((b[$1] - a[$1]) / 20000)); }
echo "instructions per request: $(per 0)"
if [ -n "${CACHE:-}" ]; then
  echo "L1 misses per request: instruction $(per 1), data read $(per 2), data write $(per 3)"
fi
