#!/usr/bin/env bash
# Hot reload of a 10,000-route config, and what requests in flight see.
#
#   bench/reload.sh                     # 10k routes, 20 reloads, 10 s load windows
#   ROUTES=1000 RELOADS=5 bench/reload.sh
#   PIN=1 bench/reload.sh               # gateway and load pinned to one core each
#
# 1. Starts the release gateway (2 workers; PIN=1: 1 worker on core 1) on a config of $ROUTES routes
#    (prefix, template and exact paths, spread over 100 services) plus a
#    `/ping` route.
# 2. Times $RELOADS `PUT /config` of the whole config through the admin API
#    (HTTP upload + parse + validate + compile + swap), alternating two
#    versions so each is a real change. The gateway logs its own figure for
#    validate+compile+swap ("config reloaded", elapsed_ms).
# 3. Load (wrk, 32 connections, keep-alive) on `/ping` for
#    $DURATION s three times: without reloads, with one reload a second, and
#    with reloads back to back; compares the latency percentiles.
# Needs: wrk, curl, python3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}/reload"
ROUTES="${ROUTES:-10000}"
RELOADS="${RELOADS:-20}"
DURATION="${DURATION:-10}"
PORT=19600
ADMIN=19601
TOKEN=bench-token
mkdir -p "$WORK"

cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
BIN="${BIN:-$ROOT/target/release/portcullis}"

gen() { # gen VERSION FILE
  python3 - "$ROUTES" "$1" "$PORT" "$ADMIN" "$TOKEN" >"$2" <<'PY'
import sys
n, version, port, admin, token = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
print(f"""version: 1
server:
  listeners: [{{name: bench, address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}", token: {token}, persist: false}}
upstreams:""")
for s in range(100):
    print(f"  - name: svc{s}\n    targets: [{{url: \"http://127.0.0.1:{20000 + s}\"}}]")
print("routes:")
print(f"  - name: ping\n    match: {{paths: [\"= /ping\"]}}\n    respond: {{body: {version}}}")
for i in range(n - 1):
    s = i % 100
    kind = i % 3
    if kind == 0:
        path = f"/api/v1/svc{s}/res{i}"
    elif kind == 1:
        path = f"/api/v1/svc{s}/res{i}/{{id}}"
    else:
        path = f"= /api/v1/svc{s}/exact{i}"
    print(f"  - name: r{i}\n    match: {{paths: [\"{path}\"], methods: [GET, POST]}}\n    upstream: svc{s}")
PY
}
gen a "$WORK/a.yaml"
gen b "$WORK/b.yaml"
cp "$WORK/a.yaml" "$WORK/config.yaml"
echo "config: $ROUTES routes, $(wc -c <"$WORK/a.yaml") bytes"

if [ "${PIN:-0}" = 1 ]; then
  # Like the shared harness: the gateway (one worker) on core 1, the load
  # generator on core 0. The reload then shares the one core with requests.
  GW_CMD=(taskset -c 1 "$BIN" run --workers 1)
  LOAD=(taskset -c 0 wrk -t1 -c32)
else
  # As deployed: workers on every core, the reload on whatever core is free.
  GW_CMD=("$BIN" run --workers 2)
  LOAD=(wrk -t2 -c32)
fi
"${GW_CMD[@]}" -c "$WORK/config.yaml" --no-watch --log-format json 2>"$WORK/gateway.log" &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/ping" >/dev/null && break; sleep 0.1; done

put() { # put FILE -> prints seconds
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X PUT \
    -H "authorization: Bearer $TOKEN" --data-binary "@$1" "http://127.0.0.1:$ADMIN/config"
}
echo "== $RELOADS reloads of the whole config (PUT /config round trip) =="
times=()
for i in $(seq "$RELOADS"); do
  f="$WORK/a.yaml"; [ $((i % 2)) -eq 1 ] && f="$WORK/b.yaml"
  read -r code t < <(put "$f")
  [ "$code" = 200 ] || { echo "reload $i answered $code" >&2; exit 1; }
  times+=("$t")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "round trip: min %.0f ms, median %.0f ms, max %.0f ms\n", a[1]*1000, a[int((NR+1)/2)]*1000, a[NR]*1000}'
grep '"config reloaded"' "$WORK/gateway.log" | python3 -c '
import sys, json
v = sorted(json.loads(l)["elapsed_ms"] for l in sys.stdin)
print(f"in the gateway (validate + compile + swap): min {v[0]:.0f} ms, median {v[len(v)//2]:.0f} ms, max {v[-1]:.0f} ms")'

echo "== latency on /ping: steady, one reload a second, reloads back to back =="
"${LOAD[@]}" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/ping" >"$WORK/steady.txt"
reloader() { # reloader PAUSE -> reloads until DURATION is over, pausing PAUSE s
  local end=$((SECONDS + DURATION)) n=0 f
  while [ $SECONDS -lt $end ]; do
    f="$WORK/a.yaml"; [ $((n % 2)) -eq 1 ] && f="$WORK/b.yaml"; put "$f" >/dev/null; n=$((n + 1))
    sleep "$1"
  done
  echo "$n"
}
for mode in paced back-to-back; do
  pause=1; [ "$mode" = back-to-back ] && pause=0
  ( reloader "$pause" >"$WORK/$mode.count" ) &
  RL=$!
  "${LOAD[@]}" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/ping" >"$WORK/$mode.txt"
  wait $RL
done
for f in steady paced back-to-back; do
  echo "-- $f$( [ -f "$WORK/$f.count" ] && echo " ($(cat "$WORK/$f.count") reloads)")"
  grep -E 'Requests/sec|Non-2xx|Socket errors|^ +(50|90|99)%|Latency ' "$WORK/$f.txt"
done
