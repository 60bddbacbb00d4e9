#!/usr/bin/env bash
# Runs each fuzz target (fuzz/, cargo fuzz on the nightly toolchain) for SECS seconds and
# prints, per target: seconds, executions, and whether it found a crash (its input is kept
# under fuzz/artifacts/TARGET/). Not part of CI.
#
#   bench/fuzz/run.sh [SECS]        # default 120 s per target
#
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")/../../fuzz"
secs=${1:-120}
cargo +nightly fuzz build >/dev/null 2>&1 || cargo +nightly fuzz build
printf '| target | seconds | executions | exec/s | crashes |\n|---|---|---|---|---|\n'
for t in config api_bodies agent_replies csv; do
  mkdir -p "corpus/$t"
  cp -n ../bench/fuzz/seeds/$t/* "corpus/$t/" 2>/dev/null || true
  log=$(mktemp)
  status=0
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
  runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -1)
  runs=${runs:-$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')}
  crash=0
  if [ "$status" -ne 0 ]; then crash=1; grep -E 'panicked|ERROR|artifact' "$log" | head -5 >&2; fi
  printf '| %s | %s | %s | %s | %s |\n' "$t" "$secs" "${runs:-?}" "$(( ${runs:-0} / secs ))" "$crash"
  rm -f "$log"
done
