#!/usr/bin/env bash
# Portcullis vs nginx (and haproxy) proxying the same upstream on this
# machine, in one interleaved run, with the shared peer harness
# (../shared/bench/compare.sh). Plain proxying, 1 route, keep-alive upstream,
# one worker thread each (nginx-w1, haproxy-t1, portcullis --workers 1).
#
# The harness's nginx-w1 forwards requests untouched. Portcullis does per
# request what SPEC section 5 requires (X-Forwarded-For/Proto/Host, a
# request id sent upstream and echoed, a W3C traceparent). `nginx-w1-eq` is
# nginx doing the same header work (all but traceparent, which stock nginx
# cannot generate), for a like-for-like figure.
#
# Two builds of Portcullis run side by side: `portcullis-w1`, the plain
# `cargo build --release`, and `portcullis-pgo-w1`, the same sources built
# with profile-guided optimization by bench/pgo.sh (the build we ship and
# hold to the targets; about 20 minutes of building the first time).
# PGO=0 leaves the second out.
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

. "$ROOT/bench/common.sh"
build_bench
# A stale link order (bench/hot-symbols.sh) measures a slower layout.
"$ROOT/bench/hot-symbols.sh" --check || true

PORT=19500 PGO_PORT=19510
bench_config "$PORT" >"$WORK/bench.yaml"
pgo=()
if [ "${PGO:-1}" != 0 ]; then
  PGO_BIN="$("$ROOT/bench/pgo.sh" | tail -n 1)"
  bench_config "$PGO_PORT" >"$WORK/bench-pgo.yaml"
  pgo=(--candidate "$PGO_BIN run -c $WORK/bench-pgo.yaml --workers 1 --log-level warn"
    --candidate-port "$PGO_PORT" --candidate-h2-port "$PGO_PORT" --candidate-name portcullis-pgo-w1)
fi

NGX="$WORK/nginx-eq"
mkdir -p "$NGX"
cat >"$NGX/nginx.conf.in" <<NGINX
worker_processes 1;
daemon off;
master_process on;
pid $NGX/nginx.pid;
error_log $NGX/error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http {
  access_log off;
  server_tokens off;
  client_body_temp_path $NGX/client_body;
  proxy_temp_path $NGX/proxy;
  fastcgi_temp_path $NGX/fastcgi;
  uwsgi_temp_path $NGX/uwsgi;
  scgi_temp_path $NGX/scgi;
  keepalive_timeout 65s;
  keepalive_requests 10000000;
  upstream bench_up {
    server UPSTREAM;
    keepalive 128;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:19520 backlog=4096;
    listen 127.0.0.1:19521 http2 backlog=4096;
    location / {
      proxy_pass http://bench_up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id always;
    }
  }
}
NGINX

exec "$HARNESS/compare.sh" --only nginx-w1,haproxy-t1 --h2 \
  --candidate "$ROOT/target/release/portcullis run -c $WORK/bench.yaml --workers 1 --log-level warn" \
  --candidate-port "$PORT" --candidate-h2-port "$PORT" --candidate-name portcullis-w1 \
  "${pgo[@]}" \
  --candidate "sed 's/UPSTREAM/{upstream}/' $NGX/nginx.conf.in > $NGX/nginx.conf && exec nginx -c $NGX/nginx.conf" \
  --candidate-port 19520 --candidate-h2-port 19521 --candidate-name nginx-w1-eq \
  --out "${BENCH_OUT:-$WORK/results}" "$@"
