#!/usr/bin/env bash
# The switchover benchmark: the same aging sample service behind a real HAProxy, under the same
# fixed-rate outside load (h2load --h1 --rps, bounded), with four strategies side by side:
#
#   rejuv-as  rejuv demo --lb haproxy --mode active-standby (duplex, switch, drain, rejuvenate)
#   rejuv-aa  rejuv demo --lb haproxy --mode active-active
#   monit     Debian monit restarting each copy in place at a memory threshold
#   cron      each copy restarted in place every CRON_PERIOD seconds (staggered)
#   none      no rejuvenation: a copy dies at its leak limit and a supervisor restarts it
#
# then a short wrk saturation run against rejuv (active-standby) with one forced rejuvenation.
# Prints a table (analyze.py) and leaves every log, h2load per-request log and summary in OUT.
#
#   bash bench/switchover/run.sh                       # everything, about 8 minutes
#   STRATEGIES="monit none" bash bench/switchover/run.sh
#
# Needs: target/release/rejuv (cargo build --release -p rejuv), haproxy, h2load
# (nghttp2-client), wrk, monit, curl, python3. Run as root to let apt-get install what is missing
# (INSTALL=0 to never try). Loopback only; every port is picked free at start.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
here=$root/bench/switchover

# ---- parameters (environment overrides) -------------------------------------------------------
LOAD_SECONDS=${LOAD_SECONDS:-60}      # h2load -D
CONNS=${CONNS:-6}                     # h2load -c (keep-alive connections)
RPS_PER_CONN=${RPS_PER_CONN:-100}     # h2load --rps (per connection): 6 x 100 = 600 req/s
COPIES=${COPIES:-3}                   # copies for monit/cron/none (= web instances in rejuv-aa)
# Aging: the defaults of `rejuv demo` (DemoArgs in crates/rejuv/src/demo.rs), for every
# strategy. LEAK_PER_REQUEST=16384 ages the instances faster (the demo's earlier default).
LEAK_PER_REQUEST=${LEAK_PER_REQUEST:-10240}
LEAK_PER_SECOND=${LEAK_PER_SECOND:-409600}
LEAK_LIMIT=${LEAK_LIMIT:-104857600}
LATENCY_PER_MIB_US=${LATENCY_PER_MIB_US:-20}
# monit's threshold (total memory of the copy): about half the demo's 112 MiB memory budget,
# far enough below the 100 MiB leak limit for monit's "for 2 cycles" at one-second cycles.
MONIT_MB=${MONIT_MB:-58}
# cron: restart period per copy, first restarts staggered at T/N, 2T/N, ... T; it must beat
# the time to the leak limit (about 43 s at 200 req/s per copy and 10 KiB per request).
CRON_PERIOD=${CRON_PERIOD:-20}
STOP_GRACE=${STOP_GRACE:-3}           # SIGTERM, then SIGKILL after this (the demo's stop_grace)
WINDOW=${WINDOW:-5}                   # seconds around each restart/switchover
WRK_SECONDS=${WRK_SECONDS:-10}
STRATEGIES=${STRATEGIES:-"rejuv-as rejuv-aa monit cron none wrk"}
OUT=${OUT:-$(mktemp -d /tmp/rejuv-switchover-XXXX)}
INSTALL=${INSTALL:-1}

bin=$root/target/release/rejuv
mkdir -p "$OUT"
echo "artifacts: $OUT"
loadavg() { cut -d' ' -f1 /proc/loadavg; }
started_at=$(date +%s)

log() { printf '[%5ds] %s\n' "$(($(date +%s) - started_at))" "$*"; }
now() { date +%s.%N; }

# ---- tools --------------------------------------------------------------------------------------
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v wrk >/dev/null || need+=(wrk)
command -v monit >/dev/null || need+=(monit)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ]; then
    log "installing ${need[*]}"
    apt-get install -y "${need[@]}" >"$OUT/apt.log" 2>&1 ||
      { apt-get update >>"$OUT/apt.log" 2>&1 && apt-get install -y "${need[@]}" >>"$OUT/apt.log" 2>&1; }
  else
    echo "missing: ${need[*]} (apt-get install them)" >&2
    exit 1
  fi
fi
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p rejuv" >&2; exit 1; }
stale=false
if [ -n "$(find crates Cargo.toml Cargo.lock -newer "$bin" \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) -print -quit)" ]; then
  log "warning: $bin is older than the sources; results are for that binary"
  stale=true
fi
cat >"$OUT/run.json" <<EOF
{"git_head": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)",
 "binary_sha256": "$(sha256sum "$bin" | cut -c1-16)", "binary_mtime": "$(date -u -r "$bin" +%FT%TZ)",
 "binary_older_than_sources": $stale, "cores": $(nproc), "haproxy": "$(haproxy -v | head -1 | cut -d' ' -f3)",
 "load_seconds": $LOAD_SECONDS, "conns": $CONNS, "rps_per_conn": $RPS_PER_CONN, "copies": $COPIES,
 "leak_per_request": $LEAK_PER_REQUEST, "leak_per_second": $LEAK_PER_SECOND, "leak_limit": $LEAK_LIMIT,
 "latency_per_mib_us": $LATENCY_PER_MIB_US, "monit_mb": $MONIT_MB, "cron_period": $CRON_PERIOD,
 "stop_grace": $STOP_GRACE}
EOF

# ---- process bookkeeping: every process group we start, killed at exit ---------------------
# Baseline processes each run in their own session (setsid) and append their process group id
# to $OUT/pgids. The demo puts its children in their own process groups, so it is stopped with
# SIGTERM to its own pid (it stops what it started) and, as a fallback, every process that was
# ever seen below it is killed by pid.
: >"$OUT/pgids"
: >"$OUT/demo-tree"
demo_pid=
descendants() { # pid -> every descendant pid, one a line
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END { n = 1; q[1] = root; seen[root] = 1
          for (i = 1; i <= n; i++) for (p in parent) if (parent[p] == q[i] && !(p in seen)) { seen[p] = 1; q[++n] = p; print p } }'
}
remember_demo_tree() { [ -n "$demo_pid" ] && descendants "$demo_pid" >>"$OUT/demo-tree" || true; }
stop_demo() {
  [ -n "$demo_pid" ] || return 0
  remember_demo_tree
  kill -TERM "$demo_pid" 2>/dev/null || true
  for _ in $(seq 1 600); do
    kill -0 "$demo_pid" 2>/dev/null || break
    remember_demo_tree
    sleep 0.1
  done
  kill -KILL "$demo_pid" 2>/dev/null || true
  sort -u "$OUT/demo-tree" | while read -r p; do kill -KILL "$p" 2>/dev/null || true; done
  : >"$OUT/demo-tree"
  demo_pid=
}
kill_groups() {
  local g
  sort -u "$OUT/pgids" | while read -r g; do [ -n "$g" ] && kill -TERM -- "-$g" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    local alive=0
    while read -r g; do [ -n "$g" ] && kill -0 -- "-$g" 2>/dev/null && alive=1; done <"$OUT/pgids"
    [ $alive = 0 ] && break
    sleep 0.1
  done
  sort -u "$OUT/pgids" | while read -r g; do [ -n "$g" ] && kill -KILL -- "-$g" 2>/dev/null || true; done
  : >"$OUT/pgids"
}
cleanup() { stop_demo; kill_groups; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts "$@" in its own session (a background child is no group leader, so setsid does not
# fork and $! is the new process group), records the group, output to file $1; sets $spawned.
spawned=
spawn() {
  local out=$1; shift
  setsid "$@" </dev/null >>"$out" 2>&1 &
  spawned=$!
  echo "$spawned" >>"$OUT/pgids"
}

free_ports() { # n -> n free TCP ports on 127.0.0.1
  python3 - "$1" <<'PY'
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
PY
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

wait_http() { # url seconds what
  local i
  for i in $(seq 1 $(($2 * 10))); do
    curl -fsS -m 1 -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$3 did not answer at $1 within $2 s" >&2
  return 1
}

# The measured load: CONNS keep-alive connections at RPS_PER_CONN req/s each, one h2load per
# connection, restarted when HAProxy closed its connection without an answer (see load.py).
# Its own process group, recorded, so an interrupted run ends it and its h2load processes too.
measure() { # dir url
  mkdir -p "$1/load"
  spawn "$1/load.out" python3 "$here/load.py" --url "$2" --conns "$CONNS" \
    --rps "$RPS_PER_CONN" --duration "$LOAD_SECONDS" --out "$1/load"
  wait "$spawned" 2>/dev/null || true
}

# ---- rejuv ------------------------------------------------------------------------------------
run_rejuv() { # name mode
  local name=$1 mode=$2 dir=$OUT/$1 port
  mkdir -p "$dir"
  port=$(free_ports 1)
  log "$name: rejuv demo --lb haproxy --mode $mode on 127.0.0.1:$port"
  "$bin" demo --lb haproxy --mode "$mode" --listen "127.0.0.1:$port" \
    --duration "$((LOAD_SECONDS + 5))s" --load-rps 1 \
    --leak-per-request "$LEAK_PER_REQUEST" --leak-per-second "$LEAK_PER_SECOND" \
    --leak-limit "$LEAK_LIMIT" --state-dir "$dir/state" --summary-json "$dir/summary.json" \
    >"$dir/demo.log" 2>"$dir/demo.err" &
  demo_pid=$!
  local ok=0
  for _ in $(seq 1 900); do
    grep -q '^dashboard: ' "$dir/demo.log" && { ok=1; break; }
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ $ok = 0 ]; then
    log "$name: the demo did not start; see $dir/demo.err"
    stop_demo
    return 0
  fi
  remember_demo_tree
  log "$name: front end serving; h2load ${CONNS}x${RPS_PER_CONN} req/s for ${LOAD_SECONDS}s"
  echo "{\"strategy\": \"$name\", \"kind\": \"rejuv\", \"mode\": \"$mode\", \"load_start\": $(now)}" >"$dir/meta.json"
  measure "$dir" "http://127.0.0.1:$port/"
  loadavg >"$dir/loadavg"
  remember_demo_tree
  # The demo ends its own load, lets running workflows finish (up to 40 s) and writes the summary.
  for _ in $(seq 1 900); do
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.1
  done
  stop_demo
  log "$name: $(grep '^summary:' "$dir/demo.log" || echo 'no summary')"
}

# The wrk saturation run: rejuv active-standby, no per-request leak (at saturation it would
# reach the leak limit in seconds), one forced rejuvenation of s1 two seconds into the run.
run_wrk() {
  local name=wrk dir=$OUT/wrk port ctl tok
  mkdir -p "$dir"
  port=$(free_ports 1)
  log "wrk: rejuv demo --lb haproxy --mode active-standby, wrk for ${WRK_SECONDS}s, forced rejuvenation of s1"
  "$bin" demo --lb haproxy --mode active-standby --listen "127.0.0.1:$port" \
    --duration "$((WRK_SECONDS + 5))s" --load-rps 1 --leak-per-request 0 \
    --leak-per-second "$LEAK_PER_SECOND" --leak-limit "$LEAK_LIMIT" \
    --state-dir "$dir/state" --summary-json "$dir/summary.json" \
    >"$dir/demo.log" 2>"$dir/demo.err" &
  demo_pid=$!
  local ok=0
  for _ in $(seq 1 900); do
    grep -q '^dashboard: ' "$dir/demo.log" && { ok=1; break; }
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ $ok = 0 ]; then
    log "wrk: the demo did not start; see $dir/demo.err"
    stop_demo
    return 0
  fi
  remember_demo_tree
  ctl=$(sed -n 's|^dashboard: \(http://[^/]*\)/ui.*$|\1|p' "$dir/demo.log")
  tok=$(sed -n 's|^token file: ||p' "$dir/demo.log")
  echo "{\"strategy\": \"wrk\", \"kind\": \"wrk\", \"load_start\": $(now)}" >"$dir/meta.json"
  (sleep 2 && "$bin" rejuvenate s1 --controller "$ctl" --token-file "$tok" >"$dir/rejuvenate.log" 2>&1) &
  local forcer=$!
  wrk -t 2 -c 32 -d "${WRK_SECONDS}s" --latency "http://127.0.0.1:$port/" >"$dir/wrk.txt" 2>&1 || true
  wait $forcer || true
  for _ in $(seq 1 900); do
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.1
  done
  stop_demo
  log "wrk: $(grep 'Requests/sec' "$dir/wrk.txt" || echo 'no result')"
}

# ---- baselines: N static copies behind HAProxy ----------------------------------------------
# svc.sh start|stop I: start copy I in the background (its own session; a wrapper records how it
# ended), or stop it (SIGTERM, SIGKILL after STOP_GRACE). Events go to events.tsv:
#   <epoch s> start|stop|stopped|crashed <copy> <detail>
write_svc() { # dir ports...
  local dir=$1; shift
  cat >"$dir/svc.sh" <<EOF
#!/usr/bin/env bash
# Written by bench/switchover/run.sh.
set -u
dir=$dir
bin=$bin
ports=($*)
leak_per_request=$LEAK_PER_REQUEST leak_per_second=$LEAK_PER_SECOND limit=$LEAK_LIMIT
latency_per_mib_us=$LATENCY_PER_MIB_US stop_grace=$STOP_GRACE
EOF
  cat >>"$dir/svc.sh" <<'EOF'
i=$2
port=${ports[$((i - 1))]}
ev() { echo "$(date +%s.%N) $*" >>"$dir/events.tsv"; }
case $1 in
start)
  rm -f "$dir/stopping.$i" "$dir/dead.$i" "$dir/svc$i.pid"
  setsid bash -c '
    dir=$1 bin=$2 i=$3 port=$4; shift 4
    echo $$ >>"$dir/../pgids"
    "$bin" sample-service --listen "127.0.0.1:$port" --instance-id "c$i" "$@" &
    c=$!
    echo $c >"$dir/svc$i.pid"
    echo "$(date +%s.%N) start $i pid=$c" >>"$dir/events.tsv"
    wait $c; rc=$?
    if [ -e "$dir/stopping.$i" ]; then kind=stopped; else kind=crashed; fi
    echo "$(date +%s.%N) $kind $i rc=$rc" >>"$dir/events.tsv"
    touch "$dir/dead.$i"
  ' svc "$dir" "$bin" "$i" "$port" \
    --leak-per-request "$leak_per_request" --leak-per-second "$leak_per_second" \
    --limit "$limit" --latency-per-mib-us "$latency_per_mib_us" \
    </dev/null >>"$dir/svc$i.log" 2>&1 &
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
# Return only once the wrapper has recorded the exit, so a start right after this (a restart)
# cannot race with the old wrapper's dead marker.
for _ in $(seq 1 40); do [ -e "$dir/dead.$i" ] && exit 0; sleep 0.05; done
exit 0
EOF
  chmod 755 "$dir/svc.sh"
}

write_haproxy() { # dir front ports...
  local dir=$1 front=$2; shift 2
  {
    cat <<EOF
# Written by bench/switchover/run.sh: the demo's HAProxy settings, static servers, health checks.
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

run_baseline() { # name
  local name=$1 dir=$OUT/$1 ports front i
  mkdir -p "$dir"
  : >"$dir/events.tsv"
  read -r front ports <<<"$(free_ports $((COPIES + 1)))"
  write_svc "$dir" $ports
  write_haproxy "$dir" "$front" $ports
  haproxy -c -f "$dir/haproxy.cfg" >"$dir/haproxy-check.log" 2>&1 ||
    { log "$name: bad haproxy.cfg"; cat "$dir/haproxy-check.log"; return 1; }
  for i in $(seq 1 "$COPIES"); do bash "$dir/svc.sh" start "$i"; done
  spawn "$dir/haproxy.log" haproxy -db -f "$dir/haproxy.cfg"
  for i in $(seq 1 "$COPIES"); do
    wait_http "http://127.0.0.1:$(echo $ports | cut -d' ' -f$i)/healthz" 10 "copy $i"
  done
  wait_http "http://127.0.0.1:$front/healthz" 10 "haproxy"
  # Every server UP before the load (health checks: rise 2 at 1 s).
  for _ in $(seq 1 100); do
    [ "$(haproxy_cmd "$dir/haproxy.sock" 'show stat be_web 4 -1' | grep -c ',UP')" -ge "$COPIES" ] && break
    sleep 0.1
  done

  case $name in
  monit)
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
    ;;
  esac

  log "$name: $COPIES copies behind haproxy on 127.0.0.1:$front; h2load ${CONNS}x${RPS_PER_CONN} req/s for ${LOAD_SECONDS}s"
  local t0 t0ms end
  t0=$(now)
  t0ms=$(date +%s%3N)
  end=$((t0ms + LOAD_SECONDS * 1000))
  echo "{\"strategy\": \"$name\", \"kind\": \"baseline\", \"copies\": $COPIES, \"load_start\": $t0}" >"$dir/meta.json"
  measure "$dir" "http://127.0.0.1:$front/" &
  local load=$!

  case $name in
  cron | none)
    # cron: copy i is restarted at t0 + (i-1)*T/N + k*T; both: a copy that died is started
    # again (the supervisor). Bounded by the load's end and by an iteration count.
    local -a next
    for i in $(seq 1 "$COPIES"); do
      next[i]=$((t0ms + CRON_PERIOD * 1000 * i / COPIES))
    done
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
  log "$name: load done; $(grep -c ' stop ' "$dir/events.tsv" || true) restarts, $(grep -c ' crashed ' "$dir/events.tsv" || true) crashes"
  kill_groups
}

for s in $STRATEGIES; do
  case $s in
  rejuv-as) run_rejuv rejuv-as active-standby ;;
  rejuv-aa) run_rejuv rejuv-aa active-active ;;
  monit | cron | none) run_baseline "$s" ;;
  wrk) run_wrk ;;
  *) echo "unknown strategy $s" >&2; exit 2 ;;
  esac
done

log "done; analysing"
cmd="LEAK_PER_REQUEST=$LEAK_PER_REQUEST LOAD_SECONDS=$LOAD_SECONDS CONNS=$CONNS RPS_PER_CONN=$RPS_PER_CONN COPIES=$COPIES CRON_PERIOD=$CRON_PERIOD MONIT_MB=$MONIT_MB bash bench/switchover/run.sh"
python3 "$here/analyze.py" --window "$WINDOW" --command "$cmd" --json "$OUT/results.json" "$OUT"
