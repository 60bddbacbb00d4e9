#!/usr/bin/env bash
# Issue 16, item 4: 1,000 idle and 100 slowloris connections to EACH listener of a running
# agent, controller and builtin proxy (agent API, controller API, proxy admin API, proxy front
# end), all at once; measures when the server closes them and the latency of normal requests
# meanwhile, and prints the tables of bench/RESULTS.md. Not part of CI (it runs about 80 s).
#
#   bash bench/listeners/run.sh
#   REJUV_BIN=/path/to/rejuv IDLE=1000 SLOWLORIS=100 bash bench/listeners/run.sh
#
# Needs a release binary (cargo build --release -p rejuv; REJUV_BIN says where) and python3.
# The parts run with their default limits (header-read 10 s, idle 60 s, the caps), the
# controller paused so that no workflow moves anything during the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(realpath "${REJUV_BIN:-target/release/rejuv}")
idle=${IDLE:-1000}
slowloris=${SLOWLORIS:-100}
dir=$(mktemp -d /tmp/rejuv-bench-listeners-XXXX)

# Four listeners of 1,100 connections each on the client side, 2,200 in the proxy: more than
# the usual soft limit of 1,024. Children (the parts, the client) inherit this.
ulimit -n "$(ulimit -Hn)"
echo "fd limit: $(ulimit -n); state: $dir"

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}
trap stop_all EXIT

free_port() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}
for t in agent api proxy; do
  python3 -c 'import secrets; print(secrets.token_hex(16))' >"$dir/$t.token"
  chmod 600 "$dir/$t.token"
done
controller=127.0.0.1:$(free_port 127.0.0.1)
admin=127.0.0.1:$(free_port 127.0.0.1)
front=127.0.0.1:$(free_port 127.0.0.1)
agent=127.0.0.2:$(free_port 127.0.0.2)
range_lo=$(( $(free_port 127.0.0.2) % 20000 + 30000 ))

cat >"$dir/rejuv.toml" <<EOF
[cluster]
mode = "active-active"

[auth]
agent_token_file = "$dir/agent.token"
api_token_file = "$dir/api.token"
proxy_token_file = "$dir/proxy.token"

[controller]
listen = "$controller"

[traffic]
adapter = "builtin"
admin = "$admin"
listen = { web = "$front" }

[store]
path = "$dir/rejuv.db"

[services.web]
command = "$bin"
args = ["sample-service", "--listen", "{address}:{port}", "--instance-id", "{instance}"]
health = { path = "/healthz", interval = "1s", timeout = "1s" }

[[servers]]
id = "s1"
address = "127.0.0.2"
agent = "$agent"
role = "primary"
port_range = [$range_lo, $((range_lo + 9))]
instances = ["web"]
data_dir = "$dir/agent"
EOF
"$bin" config check "$dir/rejuv.toml" >/dev/null

"$bin" agent --config "$dir/rejuv.toml" --server s1 >"$dir/agent.log" 2>&1 &
pids+=($!); agent_pid=$!
"$bin" proxy --config "$dir/rejuv.toml" >"$dir/proxy.log" 2>&1 &
pids+=($!); proxy_pid=$!
"$bin" controller --config "$dir/rejuv.toml" --paused >"$dir/controller.log" 2>&1 &
pids+=($!); controller_pid=$!

# Ready once the front end answers through the instance the controller placed.
for _ in $(seq 1 300); do
  curl -fsS -o /dev/null "http://$front/" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://$front/" || { echo "the front end never served"; tail "$dir"/*.log; exit 1; }

python3 - "$dir" <<PY >"$dir/spec.json"
import json, sys
d = sys.argv[1]
tok = lambda t: open(f"{d}/{t}.token").read().strip()
def l(name, addr, normal, token=None, idle_path="/healthz"):
    h, p = addr.rsplit(":", 1)
    return {"name": name, "host": h, "port": int(p), "normal": normal, "token": token, "idle_path": idle_path}
print(json.dumps({
  "listeners": [
    l("agent API", "$agent", "/v1/state", tok("agent")),
    l("controller API", "$controller", "/v1/status", tok("api")),
    l("proxy admin API", "$admin", "/v1/status", tok("proxy")),
    l("proxy front end", "$front", "/", None, "/"),
  ],
  "pids": {"agent": $agent_pid, "controller": $controller_pid, "proxy": $proxy_pid},
  "idle": $idle, "slowloris": $slowloris,
  "header_read_timeout": 10, "idle_timeout": 60,
  "stop_file": f"{d}/probe.stop",
}))
PY

status=0
python3 bench/listeners/attack.py "$dir/spec.json" || status=$?

# What the parts counted.
echo
echo "Counted by the parts:"
curl -fsS -H "Authorization: Bearer $(cat "$dir/agent.token")" "http://$agent/metrics" | grep '^rejuv_agent_connections'
curl -fsS -H "Authorization: Bearer $(cat "$dir/api.token")" "http://$controller/metrics" | grep '^rejuv_controller_connections'
curl -fsS -H "Authorization: Bearer $(cat "$dir/proxy.token")" "http://$admin/v1/status" \
  | python3 -c 'import json,sys; s=json.load(sys.stdin); print("proxy admin", s["admin_connections"]); print("proxy front end web", s["services"]["web"]["connections"])'
exit $status
