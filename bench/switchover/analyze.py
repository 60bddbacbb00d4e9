#!/usr/bin/env python3
"""Turns the artifacts of bench/switchover/run.sh into a table and a JSON document.

    python3 bench/switchover/analyze.py [--window 5] [--json results.json] OUT_DIR

OUT_DIR holds one directory per strategy, each with:
  meta.json     {"strategy", "kind": "rejuv" | "baseline" | "wrk", "load_start": epoch s}
  load/h2load.log  h2load --log-file of every connection (load.py): <start µs since epoch>
                TAB <status, -1 = failed> TAB <µs>
  load/h2load.txt  the h2load reports (cross-check of the counts)
  load/stalls.json connections HAProxy closed without an answer (one lost request each)
  summary.json  rejuv runs: the demo summary (workflows[].steps with phase and at_ms)
  events.tsv    baselines: <epoch s> start|stop|kill|stopped|crashed <copy> <detail>
  wrk.txt       the wrk run

What it computes, per strategy:
  failed      requests without a 2xx: status -1 (socket errors, resets, timeouts), non-2xx,
              and one per connection closed without an answer (a stall in load.py)
  p50/p99     latency of the 2xx requests, whole run
  events      the moments traffic moves: rejuv = each workflow's `draining` step (the switch);
              monit/cron = each stop of a copy (the in-place restart begins); every crash
  window      requests *started* within ±window/2 s of any event; `steady` = all the others
  restarts    rejuv: rejuvenations completed (and how many switched during the load);
              baselines: stops issued by the strategy
  crashes     rejuv: the agents' count of instance exits nobody asked for; baselines: a copy
              that died without being stopped (the sample service's OOM-like SIGKILL)
"""

import argparse
import json
import math
import os
import re
import sys


def pct(sorted_vals, p):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_vals:
        return None
    k = max(1, math.ceil(p / 100 * len(sorted_vals)))
    return sorted_vals[k - 1]


def lat_stats(durations_us):
    v = sorted(d / 1000 for d in durations_us)
    return {
        "count": len(v),
        "p50_ms": pct(v, 50),
        "p99_ms": pct(v, 99),
        "max_ms": v[-1] if v else None,
    }


def read_h2load_log(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            try:
                rows.append((int(parts[0]) / 1e6, int(parts[1]), int(parts[2])))
            except ValueError:
                continue
    rows.sort()
    return rows


def read_h2load_report(path):
    if not os.path.exists(path):
        return None
    h = open(path).read()
    out = {}
    # One report per h2load process (load.py runs one per connection): sum them.
    keys = ["total", "started", "done", "succeeded", "failed", "errored", "timeout"]
    for m in re.finditer(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        h,
    ):
        for k, v in zip(keys, map(int, m.groups())):
            out[k] = out.get(k, 0) + v
    for m in re.finditer(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", h):
        for k, v in zip(["s2xx", "s3xx", "s4xx", "s5xx"], map(int, m.groups())):
            out[k] = out.get(k, 0) + v
    return out or None


def rejuv_events(summary, t_from, t_to):
    """Switch moments (the `draining` step of each workflow) and every workflow's steps."""
    switches, workflows = [], []
    for w in summary.get("workflows", []):
        steps = [(s["phase"], s["at_ms"] / 1000) for s in w.get("steps", [])]
        outcome = (w.get("outcome") or {}).get("outcome")
        workflows.append(
            {
                "server": w.get("server"),
                "target": w.get("target"),
                "outcome": outcome,
                "steps": [{"phase": p, "t_rel_s": round(t - t_from, 3)} for p, t in steps],
            }
        )
        for p, t in steps:
            if p == "draining" and t_from <= t <= t_to:
                switches.append(t)
    return sorted(switches), workflows


def baseline_events(path):
    ev = []
    if os.path.exists(path):
        for line in open(path):
            parts = line.split()
            if len(parts) >= 3:
                ev.append((float(parts[0]), parts[1], parts[2], " ".join(parts[3:])))
    return sorted(ev)


def in_windows(t, events, half):
    return any(e - half <= t <= e + half for e in events)


def parse_wrk(path):
    if not os.path.exists(path):
        return None
    h = open(path).read()
    out = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", h)
    out["req_per_s"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", h)
    out["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", h)
    out["socket_errors"] = sum(map(int, m.groups())) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", h)
    out["non_2xx_3xx"] = int(m.group(1)) if m else 0

    def ms(v, unit):
        return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]

    for p in ("50", "99"):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", h)
        out[f"p{p}_ms"] = ms(*m.groups()) if m else None
    m = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", h)
    out["max_ms"] = ms(*m.groups()) if m else None
    return out


def analyze_one(d, window):
    meta = json.load(open(os.path.join(d, "meta.json")))
    name, kind = meta["strategy"], meta["kind"]
    res = {"strategy": name, "kind": kind}
    la = os.path.join(d, "loadavg")
    res["loadavg_1m_at_end"] = float(open(la).read().strip()) if os.path.exists(la) else None
    if kind == "wrk":
        res["wrk"] = parse_wrk(os.path.join(d, "wrk.txt"))
        sp = os.path.join(d, "summary.json")
        if os.path.exists(sp):
            s = json.load(open(sp))
            res["rejuvenations_completed"] = s.get("rejuvenations_completed")
            res["crashes"] = s.get("crashes")
            t0 = meta["load_start"]
            sw, wf = rejuv_events(s, t0, t0 + 3600)
            res["switch_times_rel_s"] = [round(t - t0, 3) for t in sw]
            res["workflows"] = wf
        return res

    rows = read_h2load_log(os.path.join(d, "load", "h2load.log"))
    report = read_h2load_report(os.path.join(d, "load", "h2load.txt"))
    res["h2load_report"] = report
    if not rows:
        res["error"] = "no h2load log rows"
        return res
    sj = os.path.join(d, "load", "stalls.json")
    load = json.load(open(sj)) if os.path.exists(sj) else {"stalls": []}
    # A stall is a request closed without an answer: a row with status -2 at the stall's time
    # (its latency unknown, so it only counts as a failure).
    lost = [
        (s["t"], -2, 0) for s in load["stalls"] if s["kind"].startswith("connection closed")
    ]
    res["stalls"] = [
        {"t_rel_s": round(s["t"] - rows[0][0], 3), "conn": s["conn"], "kind": s["kind"]}
        for s in load["stalls"]
    ]
    t_from, t_to = rows[0][0], rows[-1][0]
    span = max(t_to - t_from, 1e-9)
    offered = load.get("conns", 0) * load.get("rps", 0) * (load.get("deadline", 0) - load.get("start", 0))
    rows = sorted(rows + lost)
    ok = [r for r in rows if 200 <= r[1] < 300]
    failed = [r for r in rows if not (200 <= r[1] < 300)]
    res.update(
        {
            "requests": len(rows),
            "offered": round(offered),
            "req_per_s": round(len(rows) / span, 1),
            "failed": len(failed),
            "failed_by_status": {
                ("closed-without-answer" if s == -2 else str(s)): sum(1 for r in failed if r[1] == s)
                for s in sorted({r[1] for r in failed})
            },
            "latency": lat_stats([r[2] for r in ok]),
        }
    )

    if kind == "rejuv":
        sp = os.path.join(d, "summary.json")
        s = json.load(open(sp)) if os.path.exists(sp) else {}
        events, wf = rejuv_events(s, t_from, t_to)
        res["workflows"] = wf
        res["restarts"] = s.get("rejuvenations_completed")
        res["aborted"] = s.get("rejuvenations_aborted")
        res["crashes"] = s.get("crashes")
        res["switches_under_load"] = len(events)
        res["demo_summary"] = {
            k: s.get(k) for k in ("requests_total", "requests_failed", "latency_ms", "counter")
        }
        crash_times = []
    else:
        ev = baseline_events(os.path.join(d, "events.tsv"))
        stops = [t for t, k, _, _ in ev if k == "stop" and t_from <= t <= t_to]
        crash_times = [t for t, k, _, _ in ev if k == "crashed" and t_from <= t <= t_to]
        events = sorted(stops + crash_times)
        res["restarts"] = len([1 for _, k, _, _ in ev if k == "stop"])
        res["forced_kills"] = len([1 for _, k, _, _ in ev if k == "kill"])
        res["crashes"] = len([1 for _, k, _, _ in ev if k == "crashed"])
        res["switches_under_load"] = len(stops)
        res["events"] = [
            {"t_rel_s": round(t - t_from, 3), "kind": k, "copy": c, "detail": x} for t, k, c, x in ev
        ]
    half = window / 2
    win = [r for r in rows if in_windows(r[0], events, half)]
    steady = [r for r in rows if not in_windows(r[0], events, half)]
    res["event_times_rel_s"] = [round(t - t_from, 3) for t in events]
    res["window"] = {
        "seconds": window,
        "requests": len(win),
        "failed": sum(1 for r in win if not (200 <= r[1] < 300)),
        "latency": lat_stats([r[2] for r in win if 200 <= r[1] < 300]),
    }
    res["steady"] = {
        "requests": len(steady),
        "failed": sum(1 for r in steady if not (200 <= r[1] < 300)),
        "latency": lat_stats([r[2] for r in steady if 200 <= r[1] < 300]),
    }
    wp, sp99 = res["window"]["latency"]["p99_ms"], res["steady"]["latency"]["p99_ms"]
    res["window_p99_over_steady"] = round(wp / sp99, 2) if wp and sp99 else None
    # Per event: the worst of its own window, so one bad switchover is not averaged away.
    per = []
    for t in events:
        w = [r for r in rows if t - half <= r[0] <= t + half]
        okw = sorted(r[2] / 1000 for r in w if 200 <= r[1] < 300)
        per.append(
            {
                "t_rel_s": round(t - t_from, 3),
                "requests": len(w),
                "failed": sum(1 for r in w if not (200 <= r[1] < 300)),
                "p99_ms": pct(okw, 99),
                "max_ms": okw[-1] if okw else None,
            }
        )
    res["per_event"] = per

    if kind == "rejuv":
        goals = {
            "0 failed requests": res["failed"] == 0,
            ">= 3 rejuvenations under load": res["switches_under_load"] >= 3,
            ">= 500 req/s": res["req_per_s"] >= 500,
            "window p99 <= 2x steady p99": res["window_p99_over_steady"] is not None
            and res["window_p99_over_steady"] <= 2.0,
            "0 crashes": res["crashes"] == 0,
        }
        res["goals"] = goals
    return res


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def table(results):
    head = [
        "strategy",
        "req/s",
        "requests",
        "failed",
        "p50 ms",
        "p99 ms",
        "max ms",
        "restarts (under load)",
        "crashes",
        "window p50",
        "window p99",
        "steady p99",
        "win/steady",
        "failed in windows",
        "host load",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if r["kind"] == "wrk" or "latency" not in r:
            continue
        lat, win, st = r["latency"], r["window"]["latency"], r["steady"]["latency"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["strategy"],
                    fmt(r["req_per_s"], 0),
                    fmt(r["requests"]),
                    fmt(r["failed"]),
                    fmt(lat["p50_ms"], 2),
                    fmt(lat["p99_ms"], 2),
                    fmt(lat["max_ms"], 1),
                    f"{fmt(r['restarts'])} ({r['switches_under_load']})",
                    fmt(r["crashes"]),
                    fmt(win["p50_ms"], 2),
                    fmt(win["p99_ms"], 2),
                    fmt(st["p99_ms"], 2),
                    fmt(r["window_p99_over_steady"], 2),
                    fmt(r["window"]["failed"]),
                    fmt(r["loadavg_1m_at_end"], 1),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--json")
    ap.add_argument("--command", help="the command that produced OUT, recorded in the JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a rejuv goal is missed")
    a = ap.parse_args()
    order = ["rejuv-as", "rejuv-aa", "monit", "cron", "none", "wrk"]
    dirs = [
        os.path.join(a.out, n)
        for n in sorted(os.listdir(a.out), key=lambda n: (order.index(n) if n in order else 99, n))
        if os.path.exists(os.path.join(a.out, n, "meta.json"))
    ]
    results = [analyze_one(d, a.window) for d in dirs]
    rj = os.path.join(a.out, "run.json")
    run = json.load(open(rj)) if os.path.exists(rj) else {}
    if run:
        print(
            f"rejuv {run.get('git_head')} (binary {run.get('binary_sha256')}, "
            f"built {run.get('binary_mtime')}{', OLDER THAN THE SOURCES' if run.get('binary_older_than_sources') else ''}), "
            f"HAProxy {run.get('haproxy')}, {run.get('cores')} cores; load {run.get('conns')} x "
            f"{run.get('rps_per_conn')} req/s for {run.get('load_seconds')} s; leak "
            f"{run.get('leak_per_request')} B/request + {run.get('leak_per_second')} B/s, limit "
            f"{run.get('leak_limit')} B; window {a.window:g} s"
        )
    print(table(results))
    missed = False
    for r in results:
        if "error" in r:
            print(f"{r['strategy']}: {r['error']}")
        if r.get("h2load_report"):
            h = r["h2load_report"]
            print(
                f"{r['strategy']}: offered {r.get('offered')}, answered or failed {r.get('requests')}, "
                f"stalled connections {len(r.get('stalls', []))}; the h2load processes that ran to "
                f"their end report {h.get('total')} total, {h.get('done')} done, "
                f"{h.get('succeeded')} succeeded, {h.get('failed')} failed, {h.get('errored')} errored, "
                f"{h.get('timeout')} timeout; status {h.get('s2xx')} 2xx {h.get('s4xx')} 4xx "
                f"{h.get('s5xx')} 5xx; failed by status {r.get('failed_by_status')}"
            )
        if r["kind"] == "rejuv" and "goals" in r:
            for g, ok in r["goals"].items():
                print(f"{r['strategy']}: {'PASS' if ok else 'FAIL'} {g}")
                missed |= not ok
        if r["kind"] == "wrk" and r.get("wrk"):
            w = r["wrk"]
            print(
                f"wrk (rejuv active-standby, saturation, 1 forced rejuvenation): "
                f"{fmt(w['req_per_s'], 0)} req/s, {w['requests']} requests, "
                f"socket errors {w['socket_errors']}, non-2xx/3xx {w['non_2xx_3xx']}, "
                f"p50 {fmt(w['p50_ms'], 2)} ms, p99 {fmt(w['p99_ms'], 2)} ms, max {fmt(w['max_ms'], 1)} ms; "
                f"switches during the run at {r.get('switch_times_rel_s')} s, "
                f"rejuvenations completed {r.get('rejuvenations_completed')}, crashes {r.get('crashes')}"
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"command": a.command, "run": run, "window_s": a.window, "results": results},
                f,
                indent=2,
            )
        print(f"json: {a.json}")
    sys.exit(1 if (a.strict and missed) else 0)


if __name__ == "__main__":
    main()
