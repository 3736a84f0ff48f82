#!/usr/bin/env bash
# Instructions per proxied request, under callgrind: the gateway (one
# worker, the bench config) in front of the shared harness's upstream; two
# runs of `h2load --h1 -c 8`, 2,000 and 22,000 requests, and the difference
# of their totals over 20,000, so start-up and shutdown cancel out.
# Repeatable to about ±300 instructions whatever else the machine does.
#
#   bench/callgrind.sh                      # the current release build
#   BIN=/path/to/portcullis bench/callgrind.sh
# Needs valgrind, h2load (nghttp2-client) and the shared harness's upstream.
set -eu
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}/callgrind"
mkdir -p "$WORK"
. "$ROOT/bench/common.sh"
build_bench
BIN="${BIN:-$ROOT/target/release/portcullis}"
export BENCH_UPSTREAM=127.0.0.1:19900
"$UPSTREAM_BIN" 127.0.0.1:19900 1 >/dev/null 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null || true' EXIT
bench_config 19901 >"$WORK/config.yaml"
total() { # N: the program's instructions after N requests
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$1.out" \
    "$BIN" run -c "$WORK/config.yaml" --workers 1 --no-watch --log-level error >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 300); do curl -fs -o /dev/null http://127.0.0.1:19901/x && break; sleep 0.1; done
  h2load --h1 -n "$1" -c 8 http://127.0.0.1:19901/anything >/dev/null
  kill -TERM $pid
  wait $pid || true
  callgrind_annotate "$WORK/cg.$1.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }'
}
a=$(total 2000)
b=$(total 22000)
echo "instructions per request: $(( (b - a) / 20000 ))"
