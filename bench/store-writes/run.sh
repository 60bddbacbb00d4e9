#!/usr/bin/env bash
# Bytes the controller writes per poll round, with N real agents on loopback addresses
# (127.0.1.x), each primary running one idle instance of the sample service, the builtin proxy
# in front, and the controller polling every agent once a second with the SQLite store.
#
#   bash bench/store-writes/run.sh [REJUV_BINARY] [SERVERS] [SECONDS]
#
# Prints the controller's bytes written to storage (/proc/PID/io write_bytes: the SQLite file,
# its WAL and the controller's log) over the measured window, per second and per poll round,
# after a warm-up in which every instance started and turned healthy. Nothing ages, nothing is
# judged: a poll changes no judgement, role or workflow.
set -euo pipefail
BIN=${1:-target/release/rejuv}
N=${2:-100}
SECS=${3:-60}
WARM=${WARM:-30}
BIN=$(realpath "$BIN")
DIR=$(mktemp -d /tmp/rejuv-store-writes.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }

head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/token"; chmod 600 "$DIR/token"
CTL=127.0.0.1:$(free_port 127.0.0.1)
ADMIN=127.0.0.1:$(free_port 127.0.0.1)
FRONT=127.0.0.1:$(free_port 127.0.0.1)
primaries=$(( N * 4 / 5 ))
cat > "$DIR/rejuv.toml" <<TOML
[cluster]
name = "bench"
mode = "active-standby"
[auth]
agent_token_file = "$DIR/token"
api_token_file = "$DIR/token"
[controller]
listen = "$CTL"
poll_interval = "1s"
agent_timeout = "2s"
[agent]
sample_interval = "1s"
[budget]
max_concurrent = 1
min_available_capacity = 1
[traffic]
adapter = "builtin"
admin = "$ADMIN"
listen = { web = "$FRONT" }
[store]
path = "$DIR/rejuv.db"
[services.web]
command = "$BIN"
args = ["sample-service", "--listen", "{address}:{port}", "--instance-id", "{instance}"]
env = { REJUV_LOG = "warn" }
health = { path = "/healthz", interval = "1s", timeout = "1s" }
drain = "1s"
TOML
for i in $(seq 1 "$N"); do
  ip=127.0.1.$i
  role=spare; inst="[]"
  if [ "$i" -le "$primaries" ]; then role=primary; inst='["web"]'; fi
  cat >> "$DIR/rejuv.toml" <<TOML
[[servers]]
id = "s$i"
address = "$ip"
agent = "$ip:7001"
role = "$role"
capacity = 4
port_range = [21000, 21009]
instances = $inst
data_dir = "$DIR/agents/s$i"
TOML
done
mkdir -p "$DIR/logs"
export REJUV_LOG=warn RUST_LOG=warn
for i in $(seq 1 "$N"); do
  setsid "$BIN" agent --config "$DIR/rejuv.toml" --server "s$i" >"$DIR/logs/s$i.log" 2>&1 &
  pids+=($!)
done
setsid "$BIN" proxy --config "$DIR/rejuv.toml" >"$DIR/logs/proxy.log" 2>&1 &
pids+=($!)
setsid "$BIN" controller --config "$DIR/rejuv.toml" >"$DIR/logs/controller.log" 2>&1 &
ctl=$!
pids+=($ctl)
sleep "$WARM"
healthy=$(curl -s -H "Authorization: Bearer $(cat "$DIR/token")" "http://$CTL/v1/status" \
  | python3 -c 'import json,sys; c=json.load(sys.stdin); print(sum(1 for s in c["servers"] for i in s["instances"] if i["healthy"]))')
w0=$(awk '/^write_bytes/ {print $2}' "/proc/$ctl/io")
t0=$(date +%s.%N)
sleep "$SECS"
w1=$(awk '/^write_bytes/ {print $2}' "/proc/$ctl/io")
t1=$(date +%s.%N)
python3 - "$w0" "$w1" "$t0" "$t1" "$N" "$healthy" "$primaries" <<'PY'
import sys
w0, w1, t0, t1, n, healthy, primaries = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
secs = t1 - t0
b = w1 - w0
print(f"servers {n} (instances healthy {healthy}/{primaries}) | {secs:.0f} s | written {b} B | {b/secs/1024:.1f} KiB/s | {b/secs:.0f} B per poll round (1 s) | {b/secs/n:.1f} B per agent poll")
PY
