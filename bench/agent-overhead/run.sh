#!/usr/bin/env bash
# The agent's own cost beside node_exporter's: a real `rejuv agent` (release binaries, one
# server with no instances) and a real prometheus-node-exporter on loopback, each scraped once
# a second, each's RSS and CPU read from /proc once a second.
#
#   bash bench/agent-overhead/run.sh            # agent sample_interval = "1s", DURATION=120 s
#   bash bench/agent-overhead/run.sh --fast     # sample_interval = "100ms" (the flat-memory check)
#   DURATION=3600 WARMUP=2700 bash bench/agent-overhead/run.sh --fast
#
# Build first (the small agent binary as installed on servers: its own size profile, glibc
# linked statically, its code in the order it runs):
#   cargo build --release -p rejuv                               # target/release/rejuv
#   bash scripts/build-agent.sh                                  # target/agent/rejuv-agent
# `rejuv` and `rejuv-agent` are linked side by side into a temp dir, as installed, and the
# agent is started as `rejuv agent ...`, which executes `rejuv-agent` (same PID).
#
# Env: DURATION (s, default 120), WARMUP (s, default 10), REJUV (default
# $CARGO_TARGET_DIR/release/rejuv, else target/release/rejuv), REJUV_AGENT (default
# target/agent/rejuv-agent, else target/release/rejuv-agent; `none`: no small binary, the agent
# runs in the rejuv process), NODE_EXPORTER (default prometheus-node-exporter).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
interval="1s"
for arg in "$@"; do
    case "$arg" in
        --fast) interval="100ms" ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument '$arg' (want --fast)" >&2; exit 2 ;;
    esac
done
DURATION="${DURATION:-120}"
WARMUP="${WARMUP:-10}"
target="${CARGO_TARGET_DIR:-$root/target}"
REJUV="${REJUV:-$target/release/rejuv}"
if [ -z "${REJUV_AGENT:-}" ]; then
    REJUV_AGENT="$target/agent/rejuv-agent"
    [ -x "$REJUV_AGENT" ] || REJUV_AGENT="$target/release/rejuv-agent"
fi
NODE_EXPORTER="${NODE_EXPORTER:-prometheus-node-exporter}"
[ -x "$REJUV" ] || { echo "no rejuv binary at $REJUV: cargo build --release -p rejuv" >&2; exit 2; }
if [ "$REJUV_AGENT" != none ] && [ ! -x "$REJUV_AGENT" ]; then
    echo "no rejuv-agent binary at $REJUV_AGENT: bash scripts/build-agent.sh (or REJUV_AGENT=none)" >&2
    exit 2
fi
command -v "$NODE_EXPORTER" >/dev/null || { echo "$NODE_EXPORTER not found (apt-get install prometheus-node-exporter)" >&2; exit 2; }
if (( WARMUP >= DURATION )); then echo "WARMUP ($WARMUP) must be below DURATION ($DURATION)" >&2; exit 2; fi

work="$(mktemp -d /tmp/rejuv-agent-overhead.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=../../scripts/idle-agent.sh
. "$root/scripts/idle-agent.sh"
agent_port="$(free_port)"
ne_port="$(free_port)"
while [ "$ne_port" = "$agent_port" ]; do ne_port="$(free_port)"; done
idle_agent_files "$work" "$agent_port" "$interval"
"$REJUV" config check "$work/rejuv.toml" >/dev/null

# The binaries side by side, as installed (`rejuv agent` looks for rejuv-agent beside itself).
mkdir "$work/bin"
place() { ln "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
place "$REJUV" "$work/bin/rejuv"
[ "$REJUV_AGENT" = none ] || place "$REJUV_AGENT" "$work/bin/rejuv-agent"

# Each in its own process group (setsid), ended by group on exit.
RUST_LOG=warn setsid "$work/bin/rejuv" agent --config "$work/rejuv.toml" --server s1 \
    >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
setsid "$NODE_EXPORTER" --web.listen-address="127.0.0.1:$ne_port" \
    >"$work/node_exporter.log" 2>&1 &
ne_pid=$!
pids+=("$ne_pid")

token="$(cat "$work/agent.token")"
wait_up() { # NAME URL PID LOG [curl args]
    local name="$1" url="$2" pid="$3" log="$4"; shift 4
    local deadline=$((SECONDS + 30))
    until curl -fsS -o /dev/null "$@" "$url" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited before answering $url:" >&2; tail -20 "$log" >&2; exit 1
        fi
        if (( SECONDS >= deadline )); then echo "$name did not answer $url within 30 s" >&2; exit 1; fi
        sleep 0.2
    done
}
wait_up "rejuv agent" "http://127.0.0.1:$agent_port/metrics" "$agent_pid" "$work/agent.log" -H "Authorization: Bearer $token"
wait_up "node_exporter" "http://127.0.0.1:$ne_port/metrics" "$ne_pid" "$work/node_exporter.log"

echo "rejuv: $("$REJUV" --version 2>/dev/null || echo "$REJUV"), agent sample_interval = \"$interval\""
echo "the agent process runs: $(basename "$(readlink "/proc/$agent_pid/exe")") ($(stat -c %s "$(readlink "/proc/$agent_pid/exe")") bytes; from ${REJUV_AGENT/#none/$REJUV})"
echo "node_exporter: $("$NODE_EXPORTER" --version 2>&1 | head -1)"
python3 "$here/measure.py" "$DURATION" "$WARMUP" \
    "rejuv-agent:$agent_pid:http://127.0.0.1:$agent_port/metrics|$work/agent.token" \
    "node_exporter:$ne_pid:http://127.0.0.1:$ne_port/metrics"
