#!/usr/bin/env bash
# Runs `rejuv demo` with an outside client (h2load, fixed rate, keep-alive) against its front
# end, then checks the figures of the loop: rejuvenations, failed requests, crashes, the
# counter, and that every outside request got a 2xx in under 2 s.
#
#   bash bench/demo/check.sh active-standby            # or active-active
#   bash bench/demo/check.sh control                   # --no-rejuvenation: expects crashes
#   LB=haproxy bash bench/demo/check.sh active-active  # a real HAProxy in front
#   EXTRA="--hosts docker" DURATION=120s bash bench/demo/check.sh active-standby
#   EXTRA="--hosts docker --store etcd --controllers 2 --chaos" DURATION=180s MAX_LATENCY_S=5 \
#       bash bench/demo/check.sh active-standby          # faults across hosts (root, etcd)
#
# Needs the release binary (cargo build --release -p rejuv) and h2load (nghttp2-client).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-active-standby}
duration=${DURATION:-90s}
port=${PORT:-18080}
out=${OUT:-$(mktemp -d /tmp/rejuv-demo-check-XXXX)}
mkdir -p "$out"
bin=${BIN:-./target/release/rejuv}
extra=(--lb "${LB:-builtin}")
# More demo flags, word-split on purpose (e.g. "--hosts docker").
# shellcheck disable=SC2206
extra+=(${EXTRA:-})
max_latency_s=${MAX_LATENCY_S:-2}
demo_mode=$mode
if [ "$mode" = control ]; then demo_mode=active-standby; extra+=(--no-rejuvenation); fi

"$bin" demo --mode "$demo_mode" --duration "$duration" --listen "127.0.0.1:$port" \
  --summary-json "$out/summary.json" --state-dir "$out/state" "${extra[@]}" \
  >"$out/demo.log" 2>"$out/demo.err" &
demo=$!
trap 'kill -TERM $demo 2>/dev/null || true' EXIT
for _ in $(seq 1 1800); do
  grep -q '^dashboard: ' "$out/demo.log" && break
  sleep 0.1
done
grep -q '^dashboard: ' "$out/demo.log" || { echo "demo did not start"; cat "$out/demo.err"; exit 1; }
# 300 requests per second over 6 keep-alive connections, for 60 s.
h2load --h1 -c 6 --rps 50 -D 60 "http://127.0.0.1:$port/" >"$out/h2load.txt" 2>&1 || true
wait $demo
trap - EXIT

python3 - "$out" "$mode" "$max_latency_s" <<'PY'
import json, re, sys
out, mode, max_latency_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = json.load(open(f"{out}/summary.json"))
h = open(f"{out}/h2load.txt").read()
req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", h)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", h)
tmax = re.search(r"time for request:\s+(\S+)\s+(\S+)", h)
def secs(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]
total, succeeded, failed, errored, timeout = (int(req.group(i)) for i in (1, 4, 5, 6, 7))
ok2xx = int(codes.group(1))
worst = secs(tmax.group(2))
print(f"demo:   mode={s['mode']} requests_total={s['requests_total']} requests_failed={s['requests_failed']} "
      f"rejuvenations_completed={s['rejuvenations_completed']} aborted={s['rejuvenations_aborted']} "
      f"crashes={s['crashes']} counter={s['counter']} latency_ms={s['latency_ms']} "
      f"invariant_violations={s.get('invariant_violations')} host_restarts={s.get('host_restarts')} "
      f"tls={s.get('tls')} faults_injected={s.get('faults_injected')}")
print(f"h2load: total={total} succeeded={succeeded} failed={failed} errored={errored} timeout={timeout} "
      f"2xx={ok2xx} max={worst*1000:.1f}ms")
checks = []
if mode == "control":
    checks.append(("crashes >= 1 without rejuvenation", s["crashes"] >= 1))
else:
    checks += [
        ("rejuvenations_completed >= 2", s["rejuvenations_completed"] >= 2),
        ("requests_failed == 0", s["requests_failed"] == 0),
        ("requests_total >= 5000", s["requests_total"] >= 5000),
        ("crashes == 0", s["crashes"] == 0),
        ("counter actual == expected", s["counter"]["actual"] == s["counter"]["expected"]),
        ("POSTs >= 100", s["counter"]["expected"] >= 100),
        ("outside client: every request a 2xx", total > 0 and succeeded == total and ok2xx == total),
        (f"outside client: none slower than {max_latency_s:g} s", worst < max_latency_s),
        ("invariant_violations == 0", s.get("invariant_violations", 0) == 0),
    ]
bad = [c for c, ok in checks if not ok]
for c, ok in checks:
    print(("PASS " if ok else "FAIL ") + c)
print(f"artifacts: {out}")
sys.exit(1 if bad else 0)
PY
