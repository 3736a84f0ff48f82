#!/usr/bin/env bash
# What metrics and the access log cost: the same proxy path measured
# three ways in one interleaved run of the shared harness
# (../shared/bench/compare.sh), one worker each, HTTP/1.1 keep-alive:
#
#   plain        the gateway at $BASE_REV, the last commit before telemetry
#                (no metrics, no access log), built from a git worktree with
#                this tree's allocator and release profile
#   metrics      this tree: Prometheus metrics (always on), access log off
#   metrics+log  this tree: metrics and the JSON access log to a file
#
#   bench/telemetry.sh                       # 3 rounds x 10 s
#   bench/telemetry.sh --rounds 1 --duration 5
# Extra arguments go to the shared harness. Needs what bench/compare.sh needs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${BENCH_WORK:-/tmp/portcullis-bench}/telemetry"
BASE_REV="${BASE_REV:-c1c5032}"
mkdir -p "$WORK"

if [ ! -d "$WORK/baseline" ]; then
  git -C "$ROOT" worktree add --detach "$WORK/baseline" "$BASE_REV" >&2
  # Built as this tree is (its allocator, its release profile), so the two
  # differ in code only.
  cp "$ROOT/src/main.rs" "$WORK/baseline/src/main.rs"
  grep -q '^mimalloc' "$WORK/baseline/Cargo.toml" ||
    sed -i "/^\[dependencies\]/a $(grep '^mimalloc' "$ROOT/Cargo.toml")" "$WORK/baseline/Cargo.toml"
fi
profile() { # the release profile's value of KEY in this tree's Cargo.toml
  sed -n '/^\[profile.release\]/,/^\[/p' "$ROOT/Cargo.toml" | sed -n "s/^$1 = \"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p"
}
CARGO_PROFILE_RELEASE_LTO="$(profile lto)" CARGO_PROFILE_RELEASE_CODEGEN_UNITS="$(profile codegen-units)" \
  CARGO_TARGET_DIR="$WORK/baseline-target" cargo build --release --manifest-path "$WORK/baseline/Cargo.toml" >&2
. "$ROOT/bench/common.sh"
build_bench
bench_config 19700 >"$WORK/plain.yaml"
bench_config 19701 >"$WORK/metrics.yaml"
bench_config 19702 "  access_log: { enabled: true, path: $WORK/access.log }" >"$WORK/log.yaml"
rm -f "$WORK/access.log"
trap 'rm -f "$WORK/access.log"' EXIT

"$HARNESS/compare.sh" --only nginx-w1 \
  --candidate "$WORK/baseline-target/release/portcullis run -c $WORK/plain.yaml --workers 1 --log-level warn" \
  --candidate-port 19700 --candidate-name plain \
  --candidate "$ROOT/target/release/portcullis run -c $WORK/metrics.yaml --workers 1 --log-level warn" \
  --candidate-port 19701 --candidate-name metrics \
  --candidate "$ROOT/target/release/portcullis run -c $WORK/log.yaml --workers 1 --log-level warn" \
  --candidate-port 19702 --candidate-name metrics+log \
  --out "${BENCH_OUT:-$WORK/results}" "$@"
echo "access log lines written: $(wc -l <"$WORK/access.log" 2>/dev/null || echo 0)"
