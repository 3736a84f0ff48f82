#!/usr/bin/env bash
# Transcoded unary calls against the same call made natively through the
# gateway: one gateway, one route with `grpc_transcode`, one gRPC upstream
# (bench/grpc-upstream: a fixed shop.v1.Item for every call), interleaved
# rounds of h2load over h2c for each:
#
#   native      POST /shop.v1.Inventory/GetItem, a framed GetItemRequest,
#               `content-type: application/grpc` (passed through)
#   transcoded  GET /v1/inventory/abc (JSON out, via google.api.http)
#
# Prints req/s per round and the medians' ratio (target: transcoded at
# least 0.70 of native). One gateway worker; load on CPU 0, gateway and
# upstream on CPU 1.
#
#   bench/grpc.sh                        # 3 rounds x 10 s, -c16 -m10
#   ROUNDS=1 DURATION=5 bench/grpc.sh
# Needs h2load (nghttp2-client) and protoc (protobuf-compiler):
#   apt-get install -y nghttp2-client protobuf-compiler
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}/grpc"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-16}"
STREAMS="${STREAMS:-10}"
PORT=19851 UP_PORT=19850
mkdir -p "$WORK"

cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
CARGO_TARGET_DIR="$WORK/target" cargo build --release --manifest-path "$ROOT/bench/grpc-upstream/Cargo.toml" >&2
protoc --include_imports -I "$ROOT/tests/fixtures/protos" -o "$WORK/inventory.pb" inventory.proto

cat >"$WORK/grpc.yaml" <<YAML
version: 1
server:
  listeners: [{ name: bench, address: "127.0.0.1:$PORT" }]
upstreams:
  - name: inventory
    protocol: grpc
    targets: [{ url: "http://127.0.0.1:$UP_PORT" }]
routes:
  - name: inventory
    match: { paths: ["/v1/inventory", "/shop.v1.Inventory"] }
    upstream: inventory
    grpc_transcode:
      descriptor_set: $WORK/inventory.pb
      services: [shop.v1.Inventory]
YAML
# A framed GetItemRequest { sku: "abc" }.
printf '\x00\x00\x00\x00\x05\x0a\x03abc' >"$WORK/request.bin"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 1 "$WORK/target/release/grpc-upstream" "127.0.0.1:$UP_PORT" &
pids+=($!)
taskset -c 1 "$ROOT/target/release/portcullis" run -c "$WORK/grpc.yaml" --workers 1 --log-level warn --no-watch >"$WORK/gw.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/v1/inventory/abc" && break
  sleep 0.1
done
answer=$(curl -fsS "http://127.0.0.1:$PORT/v1/inventory/abc")
[ "$answer" = '{"sku":"abc","displayName":"Item abc","quantity":"12345678901234","availability":"IN_STOCK"}' ] \
  || { echo "unexpected transcoded answer: $answer" >&2; exit 1; }

native() {
  taskset -c 0 h2load -D "$1" -c "$CONNS" -m "$STREAMS" -d "$WORK/request.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:$PORT/shop.v1.Inventory/GetItem"
}
transcoded() {
  taskset -c 0 h2load -D "$1" -c "$CONNS" -m "$STREAMS" "http://127.0.0.1:$PORT/v1/inventory/abc"
}
# h2load: "finished in 10.00s, 12345.67 req/s, ..." and "... N succeeded, M failed".
rate() { awk '/^finished in/ { gsub(",", "", $4); print $4 }'; }
failed() { awk '/succeeded/ { for (i = 1; i <= NF; i++) if ($i == "failed,") print $(i-1) }'; }

native 2 >/dev/null
transcoded 2 >/dev/null
declare -A results
for r in $(seq "$ROUNDS"); do
  for t in native transcoded; do
    out=$($t "$DURATION")
    rps=$(echo "$out" | rate)
    bad=$(echo "$out" | failed)
    [ "${bad:-0}" = 0 ] || { echo "$t: $bad failed requests" >&2; echo "$out" >&2; exit 1; }
    results[$t]+="$rps "
    echo "round $r $t: $rps req/s" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
n=$(echo "${results[native]}" | median)
t=$(echo "${results[transcoded]}" | median)
printf '%-11s %12s %8s\n' target 'req/s (med)' ratio
printf '%-11s %12.0f %8.3f\n' native "$n" 1
printf '%-11s %12.0f %8.3f\n' transcoded "$t" "$(echo "$t / $n" | bc -l)"
