#!/usr/bin/env bash
# One of two targets hangs (accepts connections, never answers): what a
# steady client sees. Passive ejection (on by default: 3 timeouts in a row)
# takes the hanging target out for 30 s, then it is tried again, so a 40 s
# run sees the ejection happen twice.
#
#   default    retries as SPEC defaults them (connect failures only): the
#              requests caught on the hanging target answer 504 after the
#              read timeout
#   retry-504  `retries: { on: [connect_failure, 504] }`: those requests
#              are sent again to the good target
#
# Prints, per variant: requests, errors (non-2xx and socket errors), error
# rate, p50 / p99 / max latency as wrk reports them, and `slow`: the requests
# the gateway itself took over 10 ms for (its request_duration_seconds
# histogram). wrk corrects for coordinated omission: a connection stalled
# 500 ms on the hanging target adds the samples a steady client would have
# waited, so its p99 reflects those stalls, not only the 504s themselves.
# Load generator on CPU 0, everything else on CPU 1.
#
#   bench/hanging.sh                          # 40 s per variant, read timeout 500ms
#   DURATION=20 READ_TIMEOUT=200ms bench/hanging.sh
# Needs wrk, python3 and the shared harness's upstream.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}/hanging"
DURATION="${DURATION:-40}"
CONNS="${CONNS:-64}"
READ_TIMEOUT="${READ_TIMEOUT:-500ms}"
UP_PORT=19820 HANG_PORT=19821
mkdir -p "$WORK"

. "$ROOT/bench/common.sh"
build_bench

config() { # PORT ADMIN_PORT RETRIES_LINE
  cat <<YAML
version: 1
admin: { address: "127.0.0.1:$2", token: bench }
server:
  listeners: [{ name: bench, address: "127.0.0.1:$1" }]
upstreams:
  - name: up
    targets: [{ url: "http://127.0.0.1:$UP_PORT" }, { url: "http://127.0.0.1:$HANG_PORT" }]
    timeouts: { connect: 1s, read: $READ_TIMEOUT, write: 1s }
    keepalive: { max_idle_per_target: 256, idle_timeout: 60s }
$3
routes:
  - name: all
    match: { paths: ["/"] }
    upstream: up
YAML
}
config 19822 19832 "" >"$WORK/default.yaml"
config 19823 19833 "    retries: { on: [connect_failure, 504] }" >"$WORK/retry-504.yaml"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 1 "$UPSTREAM_BIN" "127.0.0.1:$UP_PORT" 1 >/dev/null 2>&1 &
pids+=($!)
# The hanging target: reads whatever comes and never answers.
taskset -c 1 python3 - "$HANG_PORT" <<'PY' &
import asyncio, sys
async def hold(reader, writer):
    while await reader.read(65536):
        pass
async def main():
    server = await asyncio.start_server(hold, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
asyncio.run(main())
PY
pids+=($!)
sleep 0.5

printf '%-10s %9s %7s %8s %9s %9s %9s %6s\n' variant requests errors 'error%' p50 p99 max slow
for n in default retry-504; do
  port=$([ $n = default ] && echo 19822 || echo 19823)
  taskset -c 1 "$ROOT/target/release/portcullis" run -c "$WORK/$n.yaml" --workers 1 --log-level warn --no-watch >"$WORK/$n.log" 2>&1 &
  gw=$!
  pids+=($gw)
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/ready" -m 2 && break
    sleep 0.1
  done
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 10s --latency "http://127.0.0.1:$port/anything")
  echo "$out" >"$WORK/$n.wrk"
  metrics=$(curl -s -H "Authorization: Bearer bench" "http://127.0.0.1:$((port + 10))/metrics")
  fast=$(echo "$metrics" | awk '/^portcullis_request_duration_seconds_bucket\{le="0.01",route="all"\}/ {print $2}')
  all=$(echo "$metrics" | awk '/^portcullis_request_duration_seconds_count\{route="all"\}/ {print $2}')
  echo "$out" | awk -v n="$n" -v slow=$((all - fast)) '
    /requests in/ { total = $1 }
    /Non-2xx or 3xx responses/ { bad += $NF }
    /Socket errors/ { gsub(",", ""); bad += $4 + $6 + $8 + $10 }
    $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 }
    /^    Latency/ { max = $4 }
    END { printf "%-10s %9d %7d %8.4f %9s %9s %9s %6d\n", n, total, bad, 100 * bad / total, p50, p99, max, slow }'
  kill "$gw" 2>/dev/null || true
done
