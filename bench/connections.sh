#!/usr/bin/env bash
# Memory per open connection: the gateway (release, one worker, the bench
# config) with N client connections open that have sent nothing, then the
# same connections after one keep-alive request each. RSS from
# /proc/PID/status before and after; the difference over N is the cost of
# one connection.
#
#   bench/connections.sh            # 5,000 connections
#   N=2000 bench/connections.sh
# Needs python3 and the shared harness's upstream. N must stay under the
# open-file limit (ulimit -n) less a few hundred.
set -eu
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}/connections"
mkdir -p "$WORK"
. "$ROOT/bench/common.sh"
build_bench
N="${N:-5000}"
export BENCH_UPSTREAM=127.0.0.1:19910
"$UPSTREAM_BIN" "$BENCH_UPSTREAM" 1 >/dev/null 2>&1 &
UP=$!
bench_config 19911 >"$WORK/config.yaml"
"$ROOT/target/release/portcullis" run -c "$WORK/config.yaml" --workers 1 --no-watch --log-level error >/dev/null 2>&1 &
GW=$!
trap 'kill $GW $UP 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:19911/x && break; sleep 0.1; done
python3 - "$GW" "$N" <<'PY'
import socket, sys, time
pid, n = sys.argv[1], int(sys.argv[2])
def rss_kb():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
base = rss_kb()
socks = [socket.create_connection(("127.0.0.1", 19911)) for _ in range(n)]
time.sleep(1)
idle = rss_kb()
for s in socks:
    s.sendall(b"GET /x HTTP/1.1\r\nHost: bench\r\n\r\n")
answered = 0
for s in socks:
    s.settimeout(10)
    if s.recv(65536).startswith(b"HTTP/1.1 200"):
        answered += 1
time.sleep(1)
kept = rss_kb()
# VmRSS is in KiB.
print(f"RSS at start: {base / 1024:.1f} MiB")
print(f"{n} connections open, nothing sent: {idle / 1024:.1f} MiB, {(idle - base) / n:.1f} KiB each")
print(f"after one keep-alive request each ({answered} answered 200): {kept / 1024:.1f} MiB, {(kept - base) / n:.1f} KiB each")
PY
