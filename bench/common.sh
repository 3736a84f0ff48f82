# Shared by the bench scripts (sourced, not run; they set ROOT and HARNESS).

# build_bench: builds the gateway (release) and the shared harness's
# upstream, out of the harness's read-only tree; exports UPSTREAM_BIN.
build_bench() {
  cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
  build_upstream
}

# build_upstream: the shared harness's upstream only; exports UPSTREAM_BIN.
build_upstream() {
  CARGO_TARGET_DIR="${BENCH_WORK:-/tmp/portcullis-bench}/upstream-target" \
    cargo build --release --manifest-path "$HARNESS/upstream/Cargo.toml" >&2
  export UPSTREAM_BIN="${BENCH_WORK:-/tmp/portcullis-bench}/upstream-target/release/upstream"
}

# bench_config PORT [EXTRA_SERVER_LINES] [ROUTE_PLUGINS]: the one-route
# proxy config every benchmark measures, on 127.0.0.1:PORT, to the
# harness's upstream ($BENCH_UPSTREAM, set by the harness for each
# candidate, substituted by the gateway), with the route's plugins (a YAML
# flow map).
bench_config() {
  cat <<YAML
version: 1
server:
  listeners: [{ name: bench, address: "127.0.0.1:$1" }]
${2:-}
upstreams:
  - name: up
    targets: [{ url: "http://\${BENCH_UPSTREAM}" }]
    keepalive: { max_idle_per_target: 256, idle_timeout: 60s }
routes:
  - name: all
    match: { paths: ["/"] }
    upstream: up
    plugins: ${3:-{\}}
YAML
}

# under_callgrind OUT PORT N VALGRIND_OPTS H2LOAD_ARGS...: the gateway
# ($BIN, one worker, $WORK/config.yaml listening on PORT) under callgrind,
# writing OUT, loaded with N requests by one h2load run, then stopped.
# bench/callgrind.sh and bench/hot-symbols.sh subtract a short run from a
# long one, so start-up and shutdown drop out.
under_callgrind() {
  local out=$1 port=$2 n=$3 opts=$4
  shift 4
  # shellcheck disable=SC2086 # VALGRIND_OPTS is several options, or none
  valgrind --tool=callgrind $opts --callgrind-out-file="$out" \
    "$BIN" run -c "$WORK/config.yaml" --workers 1 --no-watch --log-level error >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 300); do curl -fs -o /dev/null "http://127.0.0.1:$port/x" && break; sleep 0.1; done
  h2load "$@" -n "$n" "http://127.0.0.1:$port/anything" >/dev/null
  kill -TERM $pid
  wait $pid || true
}
