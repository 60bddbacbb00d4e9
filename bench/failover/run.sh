#!/usr/bin/env bash
# Leadership handover time of two controllers on a real etcd: SIGKILLs the leader
# REJUV_FAILOVER_KILLS times (default 10) with lease TTL REJUV_FAILOVER_TTL (default 5s) and
# prints the time until the follower's /healthz says `leader` after each kill.
#
# Needs etcd (Debian etcd-server) and protoc (protobuf-compiler).
# Usage: bench/failover/run.sh [> bench/failover/last-run.txt]
set -euo pipefail
cd "$(dirname "$0")/../.."
export REJUV_FAILOVER_KILLS="${REJUV_FAILOVER_KILLS:-10}"
export REJUV_FAILOVER_TTL="${REJUV_FAILOVER_TTL:-5s}"
cargo test -p rejuv --features etcd --test integration \
    -- --ignored --nocapture etcd::etcd_failover_handover_times 2>&1 |
    grep -E '^(kill [0-9]+|handover over|test result)'
