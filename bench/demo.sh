#!/usr/bin/env bash
# The demo's start-up time (spawn to the first answered request through the
# gateway) over 5 starts, and its memory (VmRSS, VmHWM) after the whole tour
# and 200 transcoded requests.
#
#   bench/demo.sh
# Needs curl.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
BIN="$ROOT/target/release/portcullis"
PORT="${PORT:-18090}"
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
for run in 1 2 3 4 5; do
  start=$(date +%s%N)
  "$BIN" demo --port "$PORT" --log-level warn >"$OUT" 2>&1 &
  pid=$!
  until curl -s -o /dev/null -H 'X-Api-Key: demo-key' "http://127.0.0.1:$PORT/api/users/1"; do sleep 0.005; done
  end=$(date +%s%N)
  echo "start $run: first answer after $(( (end - start) / 1000000 )) ms"
  if [ "$run" = 5 ]; then
    grep -E "^ *[0-9]+\. " "$OUT" | sed -E 's/^ *[0-9]+\. //' | while read -r cmd; do bash -c "$cmd" >/dev/null 2>&1; done
    for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$PORT/v1/inventory/sku-1"; done
    grep -E "VmRSS|VmHWM" "/proc/$pid/status"
  fi
  kill -INT "$pid"
  wait "$pid" || true
done
