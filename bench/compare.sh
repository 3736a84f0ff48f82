#!/usr/bin/env bash
# Portcullis vs nginx (and haproxy) proxying the same upstream on this
# machine, in one interleaved run, with the shared peer harness
# (../shared/bench/compare.sh). Plain proxying, 1 route, keep-alive upstream,
# one worker thread each (nginx-w1, haproxy-t1, portcullis --workers 1).
#
#   bench/compare.sh                 # 3 rounds x 10 s, HTTP/1.1 (wrk) + h2c (h2load)
#   bench/compare.sh --rounds 1 --duration 5
# Extra arguments go to the shared harness. Needs: nginx, haproxy, wrk,
# nghttp2-client (apt-get install -y nginx haproxy wrk nghttp2-client).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}"
mkdir -p "$WORK"

cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
# The harness's upstream, built out of its (read-only) tree.
CARGO_TARGET_DIR="$WORK/upstream-target" cargo build --release --manifest-path "$HARNESS/upstream/Cargo.toml" >&2
export UPSTREAM_BIN="$WORK/upstream-target/release/upstream"

PORT=19500
cat >"$WORK/bench.yaml" <<YAML
version: 1
server:
  listeners:
    - name: bench
      address: 127.0.0.1:$PORT
upstreams:
  - name: up
    targets: [{ url: "http://\${BENCH_UPSTREAM}" }]
    keepalive: { max_idle_per_target: 256, idle_timeout: 60s }
routes:
  - name: all
    match: { paths: ["/"] }
    upstream: up
YAML

exec "$HARNESS/compare.sh" --only nginx-w1,haproxy-t1 --h2 \
  --candidate "$ROOT/target/release/portcullis run -c $WORK/bench.yaml --workers 1 --log-level warn" \
  --candidate-port "$PORT" --candidate-h2-port "$PORT" --candidate-name portcullis-w1 \
  --out "${BENCH_OUT:-$WORK/results}" "$@"
