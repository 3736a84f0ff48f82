#!/usr/bin/env bash
# What plugins cost on the proxy path: one gateway build, one config per
# target, measured in one interleaved run (plain, jwt, phantom, ..., plain,
# ...), one worker each, HTTP/1.1 keep-alive, every request carrying the same
# kind of `Authorization: Bearer` header:
#
#   plain      the route without plugins
#   jwt        `jwt` with an inline RS256 key (verified tokens cached)
#   phantom    `phantom_token` from a real redis-server (warm local cache)
#   rl-local   `rate_limit`, token bucket, `store: local`, key [ip] (never trips)
#   rl-redis   the same with `store: redis` (one Lua script run per request)
#   rl-hybrid  the same with `store: hybrid` (synced every 100 ms)
#   cache-mem  `cache`, `store: memory`: every request after the first a hit
#   cache-redis `cache`, `store: redis`: a hit is one HGET
#
# (The cache targets send `X-Bench` instead of `Authorization`, which would
# make every request a BYPASS.)
#
#   TARGETS="plain rl-local" bench/plugins.sh     # a subset (plain is the base)
#
# Load generator on CPU 0, everything else on CPU 1 (like ../shared/bench).
#
#   bench/plugins.sh                      # 3 rounds x 10 s
#   ROUNDS=1 DURATION=5 bench/plugins.sh
# Needs wrk, redis-server, openssl, and the shared harness's upstream.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}/plugins"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-64}"
UP_PORT=19810 REDIS_PORT=19879
mkdir -p "$WORK"

. "$ROOT/bench/common.sh"
build_bench

# An RS256 key and a token signed with it (openssl, so nothing here shares
# code with the gateway).
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
openssl genrsa -out "$WORK/key.pem" 2048 2>/dev/null
openssl rsa -in "$WORK/key.pem" -pubout -out "$WORK/pub.pem" 2>/dev/null
exp=$(($(date +%s) + 86400))
head=$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url)
body=$(printf '{"sub":"bench-user","iss":"https://idp.bench","exp":%d}' "$exp" | b64url)
sig=$(printf '%s.%s' "$head" "$body" | openssl dgst -sha256 -sign "$WORK/key.pem" | b64url)
TOKEN="$head.$body.$sig"
PEM_JSON=$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$WORK/pub.pem")

export BENCH_UPSTREAM="127.0.0.1:$UP_PORT"
redis_line="redis: { url: \"redis://127.0.0.1:$REDIS_PORT/0\" }"
{ bench_config 19811; echo "$redis_line"; } >"$WORK/plain.yaml"
{ bench_config 19812 "" "{ jwt: { issuer: \"https://idp.bench\", algorithms: [RS256], keys: [{ kid: bench, alg: RS256, pem: $PEM_JSON }] } }"; echo "$redis_line"; } >"$WORK/jwt.yaml"
{ bench_config 19813 "" "{ phantom_token: { source: redis, cache_ttl: 30s } }"; echo "$redis_line"; } >"$WORK/phantom.yaml"
never_trips="rate: 1000000/s, burst: 1000000, key: [ip]"
{ bench_config 19814 "" "{ rate_limit: { $never_trips } }"; echo "$redis_line"; } >"$WORK/rl-local.yaml"
{ bench_config 19815 "" "{ rate_limit: { $never_trips, store: redis, on_store_error: deny } }"; echo "$redis_line"; } >"$WORK/rl-redis.yaml"
{ bench_config 19816 "" "{ rate_limit: { $never_trips, store: hybrid, sync_interval: 100ms } }"; echo "$redis_line"; } >"$WORK/rl-hybrid.yaml"
{ bench_config 19817 "" "{ cache: { ttl: 1h } }"; echo "$redis_line"; } >"$WORK/cache-mem.yaml"
{ bench_config 19818 "" "{ cache: { ttl: 1h, store: redis } }"; echo "$redis_line"; } >"$WORK/cache-redis.yaml"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 1 redis-server --bind 127.0.0.1 --port $REDIS_PORT --save '' --appendonly no >/dev/null &
pids+=($!)
taskset -c 1 "$UPSTREAM_BIN" "127.0.0.1:$UP_PORT" 1 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
redis-cli -p $REDIS_PORT SET phantom:bench-opaque "$TOKEN" EX 86400 >/dev/null

declare -A port=([plain]=19811 [jwt]=19812 [phantom]=19813 [rl-local]=19814 [rl-redis]=19815 [rl-hybrid]=19816 [cache-mem]=19817 [cache-redis]=19818)
declare -A header
for n in plain jwt rl-local rl-redis rl-hybrid; do header[$n]="Authorization: Bearer $TOKEN"; done
header[phantom]="Authorization: Bearer bench-opaque"
header[cache-mem]="X-Bench: $TOKEN"
header[cache-redis]="X-Bench: $TOKEN"
read -r -a names <<<"${TARGETS:-plain jwt phantom rl-local rl-redis rl-hybrid}"
[ "${names[0]}" = plain ] || names=(plain "${names[@]}")
for n in "${names[@]}"; do
  taskset -c 1 "$ROOT/target/release/portcullis" run -c "$WORK/$n.yaml" --workers 1 --log-level warn --no-watch >"$WORK/$n.log" 2>&1 &
  pids+=($!)
done
for n in "${names[@]}"; do
  for _ in $(seq 100); do
    curl -fsS -o /dev/null -H "${header[$n]}" "http://127.0.0.1:${port[$n]}/anything" && break
    sleep 0.1
  done
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "${header[$n]}" "http://127.0.0.1:${port[$n]}/anything")
  [ "$status" = 200 ] || { echo "$n answers $status" >&2; cat "$WORK/$n.log" >&2; exit 1; }
  # Warm-up (and the one cold lookup or verification).
  taskset -c 0 wrk -t1 -c"$CONNS" -d2s -H "${header[$n]}" "http://127.0.0.1:${port[$n]}/anything" >/dev/null
done

declare -A results
for r in $(seq "$ROUNDS"); do
  for n in "${names[@]}"; do
    rps=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "${header[$n]}" \
      "http://127.0.0.1:${port[$n]}/anything" | awk '/Requests\/sec/ {print $2}')
    results[$n]+="$rps "
    echo "round $r $n: $rps req/s" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
plain=$(echo "${results[plain]}" | median)
printf '%-12s %12s %8s\n' target 'req/s (med)' ratio
for n in "${names[@]}"; do
  m=$(echo "${results[$n]}" | median)
  printf '%-12s %12.0f %8.3f\n' "$n" "$m" "$(echo "$m / $plain" | bc -l)"
done
