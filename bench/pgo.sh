#!/usr/bin/env bash
# The release binary built with profile-guided optimization (PGO), the way
# we build the binaries we measure and ship:
#
#   1. an instrumented release build (`-Cprofile-generate`);
#   2. it serves a training load (below) on 127.0.0.1 and writes a profile;
#   3. `llvm-profdata merge`, then the release build again with
#      `-Cprofile-use`. LLVM then lays out each function's hot blocks
#      together, moves never-run code out of the way and inlines by what
#      runs (docs/benchmarks.md, "Profile-guided optimization").
#
#   bench/pgo.sh            # prints the binary's path, target/pgo/release/portcullis
#
# Nothing is rebuilt when that binary is newer than the sources. Code the
# training does not run is treated as cold (built for size), so the load
# covers the request paths users run: plain HTTP/1.1 and h2c proxying (the
# bench config), TLS (HTTP/1.1 and HTTP/2 over rustls), and through the demo
# (`portcullis demo`) api_key, jwt, aggregation, rate limiting, the cache,
# compression, the circuit breaker, REST-to-gRPC transcoding and
# problem+json errors, and the waf, request and response transforms,
# request_validation, cors and ip_restriction. Redis-backed stores,
# hmac_auth, phantom_token and WebSockets are not in it.
#
# Needs h2load (nghttp2-client), curl, openssl and rustup's llvm-tools
# component (`rustup component add llvm-tools`: llvm-profdata must match
# rustc's LLVM, which a distribution's llvm-profdata may not).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}/pgo"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET/pgo/release/portcullis"
UP_PORT=19940 PORT=19941 TLS_PORT=19942 PLUGIN_PORT=19943 DEMO_PORT=19945

stale="$(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" "$ROOT/build.rs" "$ROOT/link" \
  "$ROOT/bench/pgo.sh" -newer "$BIN" -print -quit 2>/dev/null || echo missing)"
if [ -x "$BIN" ] && [ -z "$stale" ]; then
  echo "$BIN"
  exit 0
fi

PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
[ -x "$PROFDATA" ] || { echo "no $PROFDATA: rustup component add llvm-tools" >&2; exit 1; }
. "$ROOT/bench/common.sh"
build_upstream
rm -rf "$WORK"
mkdir -p "$WORK/raw"

echo "pgo: instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$WORK/raw" CARGO_TARGET_DIR="$TARGET/pgo-generate" \
  cargo build --release --bin portcullis --manifest-path "$ROOT/Cargo.toml" >&2
GEN="$TARGET/pgo-generate/release/portcullis"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
"$UPSTREAM_BIN" "127.0.0.1:$UP_PORT" 1 >/dev/null 2>&1 &
pids+=($!)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
# The bench config (bench/compare.sh), with a TLS listener beside it.
export BENCH_UPSTREAM="127.0.0.1:$UP_PORT"
bench_config "$PORT" | sed "s|^  listeners: .*|  listeners:\n    - { name: bench, address: \"127.0.0.1:$PORT\" }\n    - { name: tls, address: \"127.0.0.1:$TLS_PORT\", tls: { certificates: [{ cert: \"$WORK/cert.pem\", key: \"$WORK/key.pem\" }] } }|" \
  >"$WORK/train.yaml"

wait_up() { # URL [CURL ARGS...]
  for _ in $(seq 100); do curl -ks -o /dev/null "$@" && return; sleep 0.1; done
  echo "pgo: $1 did not answer" >&2
  exit 1
}
load() { # N CONNS URL [H2LOAD ARGS...]: requests that must all get an answer
  local n=$1 c=$2 url=$3
  shift 3
  local out
  out=$(h2load -n "$n" -c "$c" "$@" "$url")
  case "$out" in *" $n done"*) ;; *) echo "pgo: load on $url failed: $out" >&2; exit 1 ;; esac
}

echo "pgo: training" >&2
"$GEN" run -c "$WORK/train.yaml" --workers 1 --no-watch --log-level error &
gw=$!
pids+=($gw)
wait_up "http://127.0.0.1:$PORT/anything"
load 200000 64 "http://127.0.0.1:$PORT/anything" --h1
load 50000 16 "http://127.0.0.1:$PORT/anything" -m 10
load 20000 16 "https://127.0.0.1:$TLS_PORT/anything" --h1
load 20000 8 "https://127.0.0.1:$TLS_PORT/anything" -m 10
kill -TERM $gw
wait $gw

cat >"$WORK/plugins.yaml" <<YAML
version: 1
server:
  listeners: [{ name: plugins, address: "127.0.0.1:$PLUGIN_PORT" }]
upstreams:
  - { name: up, targets: [{ url: "http://127.0.0.1:$UP_PORT" }] }
routes:
  - { name: waf, match: { paths: ["/waf"] }, upstream: up, plugins: { waf: { paranoia: 1, mode: block } } }
  - name: transform
    match: { paths: ["/transform"] }
    upstream: up
    plugins:
      request_transform: { headers: { remove: [X-Internal], set: { X-Env: prod } }, query: { add: { source: gateway } } }
      response_transform: { headers: { set: { Cache-Control: no-store } }, json: { allow: [/ok, /service] } }
  - name: validate
    match: { paths: ["/validate"], methods: [POST] }
    upstream: up
    plugins:
      request_validation:
        json_schema: { type: object, required: [sku, qty], properties: { sku: { type: string }, qty: { type: integer, minimum: 1 } } }
  - { name: cors, match: { paths: ["/cors"] }, upstream: up, plugins: { cors: { origins: ["https://app.example.com"] } } }
  - { name: ip, match: { paths: ["/ip"] }, upstream: up, plugins: { ip_restriction: { allow: [127.0.0.0/8] } } }
  - { name: rl, match: { paths: ["/rl"] }, upstream: up, plugins: { rate_limit: { rate: 1000000/s, burst: 1000000, key: [ip] } } }
YAML
printf '{"sku":"A-1","qty":2}' >"$WORK/order.json"
printf '{"sku":"A-1","qty":0}' >"$WORK/bad-order.json"
"$GEN" run -c "$WORK/plugins.yaml" --workers 1 --no-watch --log-level error &
gw=$!
pids+=($gw)
P="http://127.0.0.1:$PLUGIN_PORT"
wait_up "$P/ip"
load 10000 16 "$P/waf/search?q=portcullis+gateway" --h1
load 2000 8 "$P/waf/search?q=%3Cscript%3Ealert(1)%3C/script%3E" --h1
load 2000 8 "$P/waf/search?id=1%27%20OR%20%271%27=%271" --h1
load 10000 16 "$P/transform/x?a=1" --h1 -H "X-Internal: 1"
load 5000 16 "$P/validate" --h1 -d "$WORK/order.json" -H "Content-Type: application/json"
load 2000 8 "$P/validate" --h1 -d "$WORK/bad-order.json" -H "Content-Type: application/json"
load 5000 16 "$P/cors" --h1 -H "Origin: https://app.example.com"
load 5000 16 "$P/ip" --h1
load 10000 16 "$P/rl" --h1
kill -TERM $gw
wait $gw

"$GEN" demo --port "$DEMO_PORT" --log-level error >"$WORK/demo.out" 2>&1 &
demo=$!
pids+=($demo)
wait_up "http://127.0.0.1:$DEMO_PORT/api/users/1"
D="http://127.0.0.1:$DEMO_PORT"
jwt=$(sed -n 's/^ *JWT ([^)]*): *//p' "$WORK/demo.out")
[ -n "$jwt" ] || { echo "pgo: no token in the demo's output" >&2; exit 1; }
load 20000 16 "$D/api/users/1" --h1 -H "X-Api-Key: demo-key"
load 10000 4 "$D/api/users/1" -m 10 -H "X-Api-Key: demo-key"
load 5000 8 "$D/api/users/1" --h1
load 10000 16 "$D/api/home" --h1 -H "Authorization: Bearer $jwt"
load 2000 8 "$D/api/home" --h1 -H "Authorization: Bearer not-a-token"
load 10000 16 "$D/api/catalog" --h1 -H "Accept-Encoding: br, gzip"
load 5000 16 "$D/api/catalog" --h1 -H "Accept-Encoding: gzip"
load 10000 16 "$D/v1/inventory/sku-1" --h1
load 2000 8 "$D/v1/inventory/sku-404" --h1
load 5000 8 "$D/api/limited" --h1
load 2000 8 "$D/api/flaky" --h1
load 2000 8 "$D/no/such/route" --h1
load 200 2 "$D/metrics" --h1
kill -INT $demo
wait $demo || true

"$PROFDATA" merge -o "$WORK/portcullis.profdata" "$WORK/raw"
echo "pgo: optimized build" >&2
# From scratch: cargo does not see a new profile, and every crate's code
# (tokio's, hyper's) is built with it.
rm -rf "$TARGET/pgo"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$WORK/portcullis.profdata" CARGO_TARGET_DIR="$TARGET/pgo" \
  cargo build --release --bin portcullis --manifest-path "$ROOT/Cargo.toml" >&2
touch "$BIN"
echo "$BIN"
