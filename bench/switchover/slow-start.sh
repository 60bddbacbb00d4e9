#!/usr/bin/env bash
# The switchover benchmark with a service that starts slowly and holds state: the sample
# service with --startup-delay (it listens at once, answers 503 and reports unhealthy until it
# has started) and its counter (POST /counter), under a fixed-rate outside load of GETs and
# counter POSTs (h2load --h1 --rps, bounded), with six ways of dealing with its aging:
#
#   rejuv-instance  rejuv at instance scope: 2 primaries, each running the aging web instance
#                   and a steady one; the aging instance's copy starts beside it (in place)
#   rejuv-inplace   rejuv at server scope in place: 1 server, 2 web instances, no spare
#                   ([rejuvenation] in_place = true, instance_scope = false)
#   rejuv-server    rejuv at server scope onto a spare: 2 primaries with 1 web instance each,
#                   1 spare ([rejuvenation] in_place = false)
#   monit           Debian monit restarting each copy in place at a memory threshold
#   cron            each copy restarted in place every CRON_PERIOD seconds (staggered)
#   none            no rejuvenation: a copy dies at its leak limit and a supervisor restarts it
#
# Every strategy serves the measured service with 2 instances (copies). rejuv runs its own
# cluster here (agents on 127.0.0.x, the controller with SQLite, the builtin proxy in front: it
# holds requests while the counter is handed off); monit, cron and none run behind HAProxy with
# health checks, as in run.sh. Prints a table (analyze_slow.py) and leaves every log, h2load
# per-request log and summary in OUT.
#
#   bash bench/switchover/slow-start.sh                  # everything, about 7 minutes
#   STRATEGIES="rejuv-inplace none" bash bench/switchover/slow-start.sh
#
# Needs: a release build of rejuv (REJUV_BIN, default $CARGO_TARGET_DIR/release/rejuv or
# target/release/rejuv), haproxy, h2load (nghttp2-client), monit, curl, python3. Loopback only;
# every port is picked free at start; every process is ended by process group at exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
here=$root/bench/switchover

# ---- parameters (environment overrides) -------------------------------------------------------
LOAD_SECONDS=${LOAD_SECONDS:-60}
GET_CONNS=${GET_CONNS:-4}             # keep-alive connections sending GET /
POST_CONNS=${POST_CONNS:-2}           # keep-alive connections sending POST /counter
RPS_PER_CONN=${RPS_PER_CONN:-50}      # per connection: 6 x 50 = 300 req/s, 100 of them POSTs
STARTUP_DELAY=${STARTUP_DELAY:-5}     # seconds the service takes to start
COPIES=2                              # instances of the measured service, every strategy
LEAK_PER_REQUEST=${LEAK_PER_REQUEST:-16384}
LEAK_PER_SECOND=${LEAK_PER_SECOND:-409600}
LEAK_LIMIT=${LEAK_LIMIT:-104857600}
LATENCY_PER_MIB_US=${LATENCY_PER_MIB_US:-20}
MONIT_MB=${MONIT_MB:-58}
CRON_PERIOD=${CRON_PERIOD:-20}
STOP_GRACE=${STOP_GRACE:-3}
WINDOW=${WINDOW:-5}
# rejuv: the longest wait for a copy to be healthy before the workflow rolls back. The demo's
# 15 s leaves the slow service 10 s of margin.
DUPLEX_TIMEOUT=${DUPLEX_TIMEOUT:-15s}
STRATEGIES=${STRATEGIES:-"rejuv-instance rejuv-inplace rejuv-server monit cron none"}
OUT=${OUT:-$(mktemp -d /tmp/rejuv-slow-start-XXXX)}

bin=${REJUV_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/rejuv}
mkdir -p "$OUT"
echo "artifacts: $OUT"
started_at=$(date +%s)
log() { printf '[%5ds] %s\n' "$(($(date +%s) - started_at))" "$*"; }
now() { date +%s.%N; }
loadavg() { cut -d' ' -f1 /proc/loadavg; }

for t in haproxy h2load monit curl python3; do
  command -v "$t" >/dev/null || { echo "missing: $t (apt-get install haproxy nghttp2-client monit curl python3)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p rejuv (or set REJUV_BIN)" >&2; exit 1; }
stale=false
if [ -n "$(find crates Cargo.toml Cargo.lock -newer "$bin" \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) -print -quit)" ]; then
  log "warning: $bin is older than the sources; results are for that binary"
  stale=true
fi
cat >"$OUT/run.json" <<EOF
{"git_head": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)",
 "binary_sha256": "$(sha256sum "$bin" | cut -c1-16)", "binary_mtime": "$(date -u -r "$bin" +%FT%TZ)",
 "binary_older_than_sources": $stale, "cores": $(nproc), "haproxy": "$(haproxy -v | head -1 | cut -d' ' -f3)",
 "load_seconds": $LOAD_SECONDS, "get_conns": $GET_CONNS, "post_conns": $POST_CONNS,
 "rps_per_conn": $RPS_PER_CONN, "copies": $COPIES, "startup_delay_s": $STARTUP_DELAY,
 "leak_per_request": $LEAK_PER_REQUEST, "leak_per_second": $LEAK_PER_SECOND, "leak_limit": $LEAK_LIMIT,
 "latency_per_mib_us": $LATENCY_PER_MIB_US, "monit_mb": $MONIT_MB, "cron_period": $CRON_PERIOD,
 "stop_grace": $STOP_GRACE, "duplex_timeout": "$DUPLEX_TIMEOUT"}
EOF

# ---- process bookkeeping ----------------------------------------------------------------------
# Every process this script starts runs in its own session (setsid) and its process group is
# appended to $OUT/pgids. rejuv's agents start each instance in a process group of its own:
# those groups are recorded while the agents run ($OUT/child-pgids, see remember_children), the
# agents are asked to stop first (SIGTERM: each stops its instances), and every recorded group
# is then sent SIGTERM and SIGKILL.
: >"$OUT/pgids"
: >"$OUT/child-pgids"
remember_children() { # the process groups of every process below our recorded groups
  local g
  while read -r g; do
    [ -n "$g" ] || continue
    ps -e -o pid=,ppid=,pgid= | awk -v root="$g" '
      { parent[$1] = $2; group[$1] = $3 }
      END { n = 0
            for (p in group) if (group[p] == root) { q[++n] = p; seen[p] = 1 }
            for (i = 1; i <= n; i++) for (p in parent) if (parent[p] == q[i] && !(p in seen)) {
              seen[p] = 1; q[++n] = p; if (group[p] != root) print group[p] } }'
  done <"$OUT/pgids" >>"$OUT/child-pgids" || true
  sort -u -o "$OUT/child-pgids" "$OUT/child-pgids"
}
kill_groups() { # file
  local g
  sort -u "$1" | while read -r g; do [ -n "$g" ] && kill -TERM -- "-$g" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    while read -r g; do [ -n "$g" ] && kill -0 -- "-$g" 2>/dev/null && alive=1; done <"$1"
    [ $alive = 0 ] && break
    sleep 0.1
  done
  sort -u "$1" | while read -r g; do [ -n "$g" ] && kill -KILL -- "-$g" 2>/dev/null || true; done
  : >"$1"
}
# Agents first and alone (their clean stop ends their instances), then the rest.
agent_pgids=()
stop_agents() {
  local g
  remember_children
  for g in "${agent_pgids[@]}"; do kill -TERM "$g" 2>/dev/null || true; done
  for _ in $(seq 1 200); do
    local alive=0
    for g in "${agent_pgids[@]}"; do kill -0 "$g" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  agent_pgids=()
}
cleanup() {
  stop_agents
  kill_groups "$OUT/pgids"
  kill_groups "$OUT/child-pgids"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

spawned=
spawn() { # out-file command...: its own session; sets $spawned (= its process group)
  local out=$1; shift
  setsid "$@" </dev/null >>"$out" 2>&1 &
  spawned=$!
  echo "$spawned" >>"$OUT/pgids"
}

free_ports() { # ip n -> n free TCP ports on ip
  python3 - "$1" "$2" <<'PY'
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[2]))]
for s in ss:
    s.bind((sys.argv[1], 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
PY
}
free_range() { # ip n -> "low high": n consecutive free ports on ip
  python3 - "$1" "$2" <<'PY'
import random, socket, sys
ip, n = sys.argv[1], int(sys.argv[2])
for _ in range(200):
    base = random.randrange(20000, 60000 - n)
    ss = []
    try:
        for p in range(base, base + n):
            s = socket.socket()
            ss.append(s)
            s.bind((ip, p))
    except OSError:
        continue
    finally:
        for s in ss:
            s.close()
    print(base, base + n - 1)
    sys.exit(0)
sys.exit(f"no {n} free consecutive ports on {ip}")
PY
}

wait_http() { # url seconds what
  local i
  for i in $(seq 1 $(($2 * 10))); do
    curl -fsS -m 1 -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$3 did not answer at $1 within $2 s" >&2
  return 1
}

haproxy_cmd() { # socket command -> answer of HAProxy's runtime API
  python3 - "$1" "$2" <<'PY' 2>/dev/null || true
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
sys.stdout.write(out.decode(errors="replace"))
PY
}

# The measured load, its own process group: GET_CONNS connections of GET /, POST_CONNS of
# POST /counter, RPS_PER_CONN each, LOAD_SECONDS (load.py).
measure() { # dir front-port
  mkdir -p "$1/load"
  spawn "$1/load.out" python3 "$here/load.py" --url "http://127.0.0.1:$2/" --conns "$GET_CONNS" \
    --post-url "http://127.0.0.1:$2/counter" --post-conns "$POST_CONNS" \
    --rps "$RPS_PER_CONN" --duration "$LOAD_SECONDS" --out "$1/load"
  wait "$spawned" 2>/dev/null || true
}

service_args() { # instance-id-expr port-expr aging(1|0) -> the sample service's arguments
  local lpr=$LEAK_PER_REQUEST lps=$LEAK_PER_SECOND limit=$LEAK_LIMIT
  [ "$3" = 1 ] || { lpr=0; lps=0; limit=0; }
  echo "--listen 127.0.0.1:$2 --instance-id $1 --startup-delay ${STARTUP_DELAY}s" \
    "--leak-per-request $lpr --leak-per-second $lps --limit $limit" \
    "--latency-per-mib-us $LATENCY_PER_MIB_US"
}

# ---- rejuv ------------------------------------------------------------------------------------
# layout: instance | inplace | server
write_rejuv_config() { # dir layout front admin controller -> rejuv.toml; agent addresses in dir/agents.txt
  local dir=$1 layout=$2 front=$3 admin=$4 ctl=$5
  local primaries spares instances in_place instance_scope per_server
  case $layout in
  instance) primaries=2 spares=0 instances='["web", "steady"]' in_place=true instance_scope=true per_server=2 ;;
  inplace) primaries=1 spares=0 instances='["web", "web"]' in_place=true instance_scope=false per_server=2 ;;
  server) primaries=2 spares=1 instances='["web"]' in_place=false instance_scope=true per_server=1 ;;
  esac
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/token"
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/proxy.token"
  chmod 600 "$dir/token" "$dir/proxy.token"
  # Each instance's memory share is 112 MiB (the demo's budget for one instance).
  local budget=$((112 * 1024 * 1024 * per_server))
  local args_web args_steady
  q() { local a out=; for a in $1; do out+="\"$a\", "; done; echo "[${out%, }]"; }
  args_web=$(q "sample-service $(service_args '{instance}' '{port}' 1)")
  args_steady=$(q "sample-service $(service_args '{instance}' '{port}' 0)")
  args_web=${args_web//127.0.0.1:\{port\}/\{address\}:\{port\}}
  args_steady=${args_steady//127.0.0.1:\{port\}/\{address\}:\{port\}}
  cat >"$dir/rejuv.toml" <<EOF
# Written by bench/switchover/slow-start.sh (layout: $layout), after rejuv demo's config.
[cluster]
name = "slow-start-$layout"
mode = "active-standby"

[auth]
agent_token_file = "$dir/token"
api_token_file = "$dir/token"
proxy_token_file = "$dir/proxy.token"

[controller]
listen = "$ctl"
poll_interval = "500ms"
agent_timeout = "2s"

[policy]
hold_down = "1s"
rules = [
  { resource = "instance-rss", above = 0.8 },
  { resource = "memory-used", above = 0.97 },
]

[policy.trend]
window = "48s"
min_window = "8s"
horizon = "60s"
min_persistence = "2s"
resources = ["instance-rss", "health-latency-ms"]

[gate]
max_load = 64.0
min_running_time = "5s"
max_wait = "10s"

[budget]
max_concurrent = 1
min_available_capacity = $(((primaries - 1) * 4))

[rejuvenation]
actions = ["stop-instances", "clear-scratch", "drop-caches", "compact-memory", "restart-agent"]
duplex_timeout = "$DUPLEX_TIMEOUT"
verify_timeout = "20s"
failed_target_cooldown = "30s"
instance_scope = $instance_scope
instance_escalation_window = "10s"
in_place = $in_place

[agent]
host_actions = $([ "$(id -u)" = 0 ] && echo true || echo false)
sample_interval = "500ms"

[traffic]
adapter = "builtin"
admin = "$admin"
listen = { web = "127.0.0.1:$front" }

[store]
path = "$dir/rejuv.db"

# The slow-starting, stateful, aging service: its counter is handed off while the proxy holds
# its requests.
[services.web]
command = "$bin"
args = $args_web
env = { REJUV_LOG = "warn" }
health = { path = "/healthz", interval = "250ms", timeout = "1s" }
drain = "5s"
stop_grace = "${STOP_GRACE}s"
handoff = { export = "/_rejuv/state", import = "/_rejuv/state", hold = "3s" }

# The same service without a leak, beside web on the instance layout's servers.
[services.steady]
command = "$bin"
args = $args_steady
env = { REJUV_LOG = "warn" }
health = { path = "/healthz", interval = "250ms", timeout = "1s" }
drain = "2s"
stop_grace = "${STOP_GRACE}s"
EOF
  : >"$dir/agents.txt"
  local i id ip role agent range
  for i in $(seq 1 $((primaries + spares))); do
    id=s$i
    ip=127.0.0.$((i + 1))
    role=primary
    [ "$i" -le "$primaries" ] || role=spare
    agent="$ip:$(free_ports "$ip" 1)"
    range=$(free_range "$ip" 16)
    cat >>"$dir/rejuv.toml" <<EOF

[[servers]]
id = "$id"
address = "$ip"
agent = "$agent"
role = "$role"
capacity = 4
port_range = [${range/ /, }]
memory_budget_bytes = $budget
instances = $([ "$role" = primary ] && echo "$instances" || echo "[]")
data_dir = "$dir/agents/$id"
EOF
    echo "$id $agent" >>"$dir/agents.txt"
  done
}

ctl_get() { # dir path -> JSON from the controller
  curl -fsS -m 3 -H "Authorization: Bearer $(cat "$1/token")" "http://$(cat "$1/controller")$2"
}

# Serving web instances, healthy, as the controller sees them: "N" on stdout.
serving_web() { # dir
  ctl_get "$1" /v1/status 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(sum(1 for v in s["servers"] for i in v["instances"]
          if i["service"] == "web" and i["traffic"] == "serving" and i["healthy"]))' 2>/dev/null || echo 0
}

# The counters of the web instances that serve, summed (GET /stats: no aging, answers while
# starting); writes dir/counters.json.
read_rejuv_counters() { # dir
  ctl_get "$1" /v1/status >"$1/status.json"
  python3 - "$1" <<'PY'
import json, sys, urllib.request
d = sys.argv[1]
s = json.load(open(f"{d}/status.json"))
out = {"instances": [], "actual": 0}
for v in s["servers"]:
    for i in v["instances"]:
        if i["service"] != "web" or i["traffic"] != "serving" or not i.get("addr"):
            continue
        try:
            st = json.load(urllib.request.urlopen(f"http://{i['addr']}/stats", timeout=3))
            c = st["counter"]
        except Exception as e:  # an instance that does not answer holds no state we can count
            st, c = {"error": str(e)}, 0
        out["instances"].append({"server": v["id"], "instance": i["id"], "counter": c})
        out["actual"] += c
out["completed_total"] = s["completed_total"]
out["rolled_back_total"] = s["rolled_back_total"]
out["failed_total"] = s["failed_total"]
out["crashes"] = sum(v["crashes_total"] for v in s["servers"])
json.dump(out, open(f"{d}/counters.json", "w"), indent=2)
PY
}

run_rejuv() { # name layout
  local name=$1 layout=$2 dir=$OUT/$1 front admin ctl
  mkdir -p "$dir/logs"
  read -r front admin ctl <<<"$(free_ports 127.0.0.1 3)"
  echo "127.0.0.1:$ctl" >"$dir/controller"
  write_rejuv_config "$dir" "$layout" "$front" "127.0.0.1:$admin" "127.0.0.1:$ctl"
  "$bin" config check "$dir/rejuv.toml" >"$dir/config-check.log" 2>&1 ||
    { log "$name: rejuv config check failed"; cat "$dir/config-check.log"; return 1; }
  log "$name: layout $layout; agents, builtin proxy on 127.0.0.1:$front, controller"
  local id addr
  while read -r id addr; do
    spawn "$dir/logs/agent-$id.log" "$bin" agent --config "$dir/rejuv.toml" --server "$id"
    agent_pgids+=("$spawned")
  done <"$dir/agents.txt"
  while read -r id addr; do wait_http "http://$addr/healthz" 30 "agent $id"; done <"$dir/agents.txt"
  spawn "$dir/logs/proxy.log" "$bin" proxy --config "$dir/rejuv.toml"
  wait_http "http://127.0.0.1:$admin/healthz" 30 "proxy"
  spawn "$dir/logs/controller.log" "$bin" controller --config "$dir/rejuv.toml"
  wait_http "http://127.0.0.1:$ctl/healthz" 30 "controller"
  # Both web instances serving, healthy (each took STARTUP_DELAY to start), the front end too.
  local ok=0
  for _ in $(seq 1 1200); do
    if [ "$(serving_web "$dir")" -ge "$COPIES" ] &&
      curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$front/" 2>/dev/null; then
      ok=1
      break
    fi
    sleep 0.1
  done
  remember_children
  if [ $ok = 0 ]; then
    log "$name: the web instances were not serving within 120 s; see $dir/logs"
    stop_agents
    kill_groups "$OUT/pgids"
    kill_groups "$OUT/child-pgids"
    return 0
  fi
  log "$name: serving; h2load ${GET_CONNS} GET + ${POST_CONNS} POST connections x ${RPS_PER_CONN} req/s for ${LOAD_SECONDS}s"
  echo "{\"strategy\": \"$name\", \"kind\": \"rejuv\", \"layout\": \"$layout\", \"load_start\": $(now)}" >"$dir/meta.json"
  ( # remember instance groups while the load runs (agents re-execute; copies come and go)
    for _ in $(seq 1 $((LOAD_SECONDS + 10))); do remember_children; sleep 1; done
  ) &
  local rememberer=$!
  measure "$dir" "$front"
  kill "$rememberer" 2>/dev/null || true
  wait "$rememberer" 2>/dev/null || true
  loadavg >"$dir/loadavg"
  # No state mid-move when counting: pause new workflows, let running ones finish (60 s).
  curl -fsS -m 3 -X POST -H "Authorization: Bearer $(cat "$dir/token")" "http://127.0.0.1:$ctl/v1/pause" >/dev/null ||
    log "$name: pausing the controller failed"
  for _ in $(seq 1 600); do
    ctl_get "$dir" /v1/status 2>/dev/null | python3 -c 'import json,sys; sys.exit(1 if json.load(sys.stdin)["workflows"] else 0)' && break
    sleep 0.1
  done
  remember_children
  read_rejuv_counters "$dir" || log "$name: reading the counters failed"
  ctl_get "$dir" /v1/workflows >"$dir/workflows.json" 2>/dev/null || true
  log "$name: $(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print("completed {completed_total}, rolled back {rolled_back_total}, failed {failed_total}, counter {actual}".format(**c))' "$dir/counters.json" 2>/dev/null || echo 'no counters')"
  stop_agents
  kill_groups "$OUT/pgids"
  kill_groups "$OUT/child-pgids"
}

# ---- baselines: COPIES static copies behind HAProxy (as run.sh) ------------------------------
write_svc() { # dir ports...
  local dir=$1; shift
  cat >"$dir/svc.sh" <<EOF
#!/usr/bin/env bash
# Written by bench/switchover/slow-start.sh.
set -u
dir=$dir
bin=$bin
ports=($*)
stop_grace=$STOP_GRACE
EOF
  echo "service_args() { echo \"--instance-id c\$1 $(service_args X Y 1 | sed 's/--instance-id X //; s/--listen 127.0.0.1:Y //')\"; }" >>"$dir/svc.sh"
  cat >>"$dir/svc.sh" <<'EOF'
i=$2
port=${ports[$((i - 1))]}
ev() { echo "$(date +%s.%N) $*" >>"$dir/events.tsv"; }
case $1 in
start)
  rm -f "$dir/stopping.$i" "$dir/dead.$i" "$dir/svc$i.pid"
  # shellcheck disable=SC2046
  setsid bash -c '
    dir=$1 bin=$2 i=$3 port=$4; shift 4
    echo $$ >>"$dir/../pgids"
    "$bin" sample-service --listen "127.0.0.1:$port" "$@" &
    c=$!
    echo $c >"$dir/svc$i.pid"
    echo "$(date +%s.%N) start $i pid=$c" >>"$dir/events.tsv"
    wait $c; rc=$?
    if [ -e "$dir/stopping.$i" ]; then kind=stopped; else kind=crashed; fi
    echo "$(date +%s.%N) $kind $i rc=$rc" >>"$dir/events.tsv"
    touch "$dir/dead.$i"
  ' svc "$dir" "$bin" "$i" "$port" $(service_args "$i") </dev/null >>"$dir/svc$i.log" 2>&1 &
  for _ in $(seq 1 50); do [ -s "$dir/svc$i.pid" ] && exit 0; sleep 0.1; done
  exit 1
  ;;
stop)
  pid=$(cat "$dir/svc$i.pid" 2>/dev/null || true)
  touch "$dir/stopping.$i"
  ev stop "$i" "pid=$pid"
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || pid=
  for _ in $(seq 1 $((stop_grace * 20))); do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    ev kill "$i" "pid=$pid"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  ;;
esac
for _ in $(seq 1 40); do [ -e "$dir/dead.$i" ] && exit 0; sleep 0.05; done
exit 0
EOF
  chmod 755 "$dir/svc.sh"
}

write_haproxy() { # dir front ports...
  local dir=$1 front=$2; shift 2
  {
    cat <<EOF
# Written by bench/switchover/slow-start.sh: run.sh's HAProxy settings (the demo's, plus
# health checks of /healthz).
global
    stats socket $dir/haproxy.sock mode 600 level admin
    stats timeout 10s

defaults
    mode http
    option redispatch
    retries 3
    retry-on conn-failure
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue 5s
    timeout http-request 10s
    timeout http-keep-alive 10s

frontend web
    bind 127.0.0.1:$front
    default_backend be_web

backend be_web
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter 1s fall 2 rise 2
EOF
    local i=1 p
    for p in "$@"; do echo "    server c$i 127.0.0.1:$p"; i=$((i + 1)); done
  } >"$dir/haproxy.cfg"
}

# The counters of the copies (GET /stats), summed; writes dir/counters.json.
read_copy_counters() { # dir ports...
  local dir=$1; shift
  python3 - "$dir" "$@" <<'PY'
import json, sys, urllib.request
d, ports = sys.argv[1], sys.argv[2:]
out = {"instances": [], "actual": 0}
for k, p in enumerate(ports, 1):
    try:
        st = json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/stats", timeout=3))
        c = st["counter"]
    except Exception as e:  # a copy that is down holds no state
        st, c = {"error": str(e)}, 0
    out["instances"].append({"copy": k, "counter": c, "stats": st})
    out["actual"] += c
json.dump(out, open(f"{d}/counters.json", "w"), indent=2)
PY
}

run_baseline() { # name
  local name=$1 dir=$OUT/$1 ports front i
  mkdir -p "$dir"
  : >"$dir/events.tsv"
  read -r front ports <<<"$(free_ports 127.0.0.1 $((COPIES + 1)))"
  write_svc "$dir" $ports
  write_haproxy "$dir" "$front" $ports
  haproxy -c -f "$dir/haproxy.cfg" >"$dir/haproxy-check.log" 2>&1 ||
    { log "$name: bad haproxy.cfg"; cat "$dir/haproxy-check.log"; return 1; }
  for i in $(seq 1 "$COPIES"); do bash "$dir/svc.sh" start "$i"; done
  spawn "$dir/haproxy.log" haproxy -db -f "$dir/haproxy.cfg"
  # Started: the copies' health checks answer 200 once STARTUP_DELAY has passed.
  for i in $(seq 1 "$COPIES"); do
    wait_http "http://127.0.0.1:$(echo $ports | cut -d' ' -f$i)/healthz" $((STARTUP_DELAY + 30)) "copy $i"
  done
  for _ in $(seq 1 100); do
    [ "$(haproxy_cmd "$dir/haproxy.sock" 'show stat be_web 4 -1' | grep -c ',UP')" -ge "$COPIES" ] && break
    sleep 0.1
  done
  wait_http "http://127.0.0.1:$front/" 10 "haproxy"

  local monit_pg=
  if [ "$name" = monit ]; then
    {
      echo "set daemon 1"
      echo "set logfile $dir/monit.log"
      echo "set pidfile $dir/monit.pid"
      echo "set idfile $dir/monit.id"
      echo "set statefile $dir/monit.state"
      for i in $(seq 1 "$COPIES"); do
        echo "check process c$i with pidfile $dir/svc$i.pid"
        echo "  start program = \"/bin/bash $dir/svc.sh start $i\" with timeout 10 seconds"
        echo "  stop program = \"/bin/bash $dir/svc.sh stop $i\" with timeout 10 seconds"
        echo "  if totalmem > $MONIT_MB MB for 2 cycles then restart"
      done
    } >"$dir/monitrc"
    chmod 600 "$dir/monitrc"
    monit -t -c "$dir/monitrc" >"$dir/monit-check.log" 2>&1 ||
      { log "monit: bad control file"; cat "$dir/monit-check.log"; return 1; }
    spawn "$dir/monit.out" monit -c "$dir/monitrc" -I
    monit_pg=$spawned
  fi

  log "$name: $COPIES copies behind haproxy on 127.0.0.1:$front; h2load ${GET_CONNS} GET + ${POST_CONNS} POST connections x ${RPS_PER_CONN} req/s for ${LOAD_SECONDS}s"
  local t0ms end
  t0ms=$(date +%s%3N)
  end=$((t0ms + LOAD_SECONDS * 1000))
  echo "{\"strategy\": \"$name\", \"kind\": \"baseline\", \"copies\": $COPIES, \"load_start\": $(now)}" >"$dir/meta.json"
  measure "$dir" "$front" &
  local load=$!
  case $name in
  cron | none)
    local -a next
    for i in $(seq 1 "$COPIES"); do next[i]=$((t0ms + CRON_PERIOD * 1000 * i / COPIES)); done
    local n t
    for n in $(seq 1 $((LOAD_SECONDS * 20 + 100))); do
      t=$(date +%s%3N)
      [ "$t" -lt "$end" ] || break
      for i in $(seq 1 "$COPIES"); do
        if [ -e "$dir/dead.$i" ]; then
          bash "$dir/svc.sh" start "$i" || log "$name: copy $i did not start"
        elif [ "$name" = cron ] && [ "$t" -ge "${next[i]}" ]; then
          bash "$dir/svc.sh" stop "$i"
          bash "$dir/svc.sh" start "$i" || log "$name: copy $i did not start"
          next[i]=$((next[i] + CRON_PERIOD * 1000))
        fi
      done
      sleep 0.05
    done
    ;;
  esac
  wait $load || true
  loadavg >"$dir/loadavg"
  # monit stops first, so no restart comes between the load's end and the count.
  [ -z "$monit_pg" ] || kill -TERM -- "-$monit_pg" 2>/dev/null || true
  read_copy_counters "$dir" $ports
  log "$name: load done; $(grep -c ' stop ' "$dir/events.tsv" || true) restarts, $(grep -c ' crashed ' "$dir/events.tsv" || true) crashes, counter $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["actual"])' "$dir/counters.json")"
  kill_groups "$OUT/pgids"
}

for s in $STRATEGIES; do
  case $s in
  rejuv-instance) run_rejuv rejuv-instance instance ;;
  rejuv-inplace) run_rejuv rejuv-inplace inplace ;;
  rejuv-server) run_rejuv rejuv-server server ;;
  monit | cron | none) run_baseline "$s" ;;
  *) echo "unknown strategy $s" >&2; exit 2 ;;
  esac
done

log "done; analysing"
cmd="STARTUP_DELAY=$STARTUP_DELAY LEAK_PER_REQUEST=$LEAK_PER_REQUEST LOAD_SECONDS=$LOAD_SECONDS GET_CONNS=$GET_CONNS POST_CONNS=$POST_CONNS RPS_PER_CONN=$RPS_PER_CONN CRON_PERIOD=$CRON_PERIOD MONIT_MB=$MONIT_MB DUPLEX_TIMEOUT=$DUPLEX_TIMEOUT bash bench/switchover/slow-start.sh"
python3 "$here/analyze_slow.py" --window "$WINDOW" --startup "$STARTUP_DELAY" --command "$cmd" --json "$OUT/results.json" "$OUT"
