#!/usr/bin/env bash
# What an `aggregate` route of three calls costs over one call: the same
# upstream delay d behind both, measured one after the other in one run.
#
#   single     a proxied GET /delay/d
#   aggregate  an aggregate route of three calls, each GET /delay/d, to
#              three upstreams (three ports of the harness's upstream)
#
# Prints p50 / p99 latency per target and d, as wrk reports them, and the
# aggregate's p50 over d: the goal is d + 5 ms, not 3d. Few connections
# (CONNS, default 8), so the figure is latency, not queueing.
# Load generator on CPU 0, everything else on CPU 1.
#
#   bench/aggregate.sh                  # d = 20 and 50 ms, 10 s each
#   DELAYS="10" DURATION=5 bench/aggregate.sh
# Needs wrk and the shared harness's upstream.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}/aggregate"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-8}"
DELAYS="${DELAYS:-20 50}"
PORT=19840
mkdir -p "$WORK"

. "$ROOT/bench/common.sh"
build_bench

{
  cat <<YAML
version: 1
server:
  listeners: [{ name: bench, address: "127.0.0.1:$PORT" }]
upstreams:
YAML
  for i in 1 2 3; do
    echo "  - { name: up$i, targets: [{ url: \"http://127.0.0.1:1984$i\" }], keepalive: { max_idle_per_target: 256 } }"
  done
  echo "routes:"
  echo "  - { name: single, match: { paths: [\"/single/{ms}\"] }, upstream: up1, rewrite: \"/delay/{ms}\" }"
  cat <<YAML
  - name: aggregate
    match: { paths: ["/aggregate/{ms}"] }
    aggregate:
      timeout: 5s
      calls:
        a: { upstream: up1, path: "/delay/{path.ms}", required: true }
        b: { upstream: up2, path: "/delay/{path.ms}", required: true }
        c: { upstream: up3, path: "/delay/{path.ms}", required: true }
YAML
} >"$WORK/aggregate.yaml"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
for i in 1 2 3; do
  taskset -c 1 "$UPSTREAM_BIN" "127.0.0.1:1984$i" 1 >/dev/null 2>&1 &
  pids+=($!)
done
taskset -c 1 "$ROOT/target/release/portcullis" run -c "$WORK/aggregate.yaml" --workers 1 --log-level warn --no-watch >"$WORK/gw.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/aggregate/1" && break
  sleep 0.1
done
body=$(curl -fsS "http://127.0.0.1:$PORT/aggregate/1")
case "$body" in *'"a":'*'"b":'*'"c":'*) ;; *) echo "unexpected aggregate answer: $body" >&2; exit 1 ;; esac

# wrk --latency prints "50% 21.3ms"; in ms.
pct() { awk -v p="$1" '$1 == p { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 } print v }'; }
printf '%-10s %6s %9s %9s %10s\n' target 'd(ms)' 'p50(ms)' 'p99(ms)' 'p50 - d'
for d in $DELAYS; do
  for t in single aggregate; do
    out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/$t/$d")
    p50=$(echo "$out" | pct 50%)
    p99=$(echo "$out" | pct 99%)
    printf '%-10s %6s %9.2f %9.2f %10.2f\n' "$t" "$d" "$p50" "$p99" "$(echo "$p50 - $d" | bc -l)"
  done
done
