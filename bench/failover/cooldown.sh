#!/usr/bin/env bash
# Reactive failover with the only spare in failed-target cooldown: a copy fails on the spare
# (it is put in cooldown), then a primary is SIGKILLed with its instances; prints the time from
# the kill to the spare's copy serving, per run. Goal: within policy.failover_after (5 s here) +
# one health interval (200 ms) + 1 s.
#
# Usage: bench/failover/cooldown.sh [RUNS] [> bench/failover/cooldown-last-run.txt]
set -euo pipefail
cd "$(dirname "$0")/../.."
export REJUV_COOLDOWN_RUNS="${1:-5}"
cargo test -p rejuv --test integration \
    -- --ignored --nocapture failover::failover_time_with_the_spare_in_cooldown 2>&1 |
    grep -E '^(run [0-9]+|test result)'
