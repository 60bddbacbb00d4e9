#!/usr/bin/env python3
"""Turns the artifacts of bench/switchover/slow-start.sh into a table and a JSON document.

    python3 bench/switchover/analyze_slow.py [--window 5] [--startup 5] [--json F] OUT_DIR

OUT_DIR holds one directory per strategy, each with:
  meta.json        {"strategy", "kind": "rejuv" | "baseline", "load_start"}
  load/h2load.log  every request (GET / and POST /counter): <start us> TAB <status> TAB <us>
  load/posts.log   the POST /counter requests alone
  load/stalls.json connections closed without an answer (one lost request each)
  counters.json    {"actual": the counters of the serving instances summed, ...}
  rejuv:    workflows.json (GET /v1/workflows), status.json (GET /v1/status) at the end
  baselines: events.tsv  <epoch s> start|stop|kill|stopped|crashed <copy> <detail>

Per strategy:
  failed        requests without a 2xx (-1 = socket error or timeout, 5xx from the proxy or
                from a copy still starting, one per connection closed without an answer)
  counter       expected = POST /counter answered 2xx, actual = what the serving instances hold
                at the end (rejuv: after running workflows finished); lost = expected - actual
  restarts      rejuv: rejuvenations completed (switches inside the load); baselines: stops
  events        rejuv: each workflow's switch (its handing-off step, else draining); baselines:
                each stop and each crash
  window        requests started from window/2 before an event to startup + window/2 after
                it: the slow service's start-up is inside the window of an in-place restart
"""

import argparse
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from analyze import baseline_events, lat_stats, read_h2load_log  # noqa: E402

SWITCH_STEPS = ("handing-off", "draining")


def load_json(path, default=None):
    return json.load(open(path)) if os.path.exists(path) else default


def rejuv_workflows(d):
    """Finished workflows (by id), from /v1/workflows and the status' history."""
    by_id = {}
    for w in (load_json(os.path.join(d, "workflows.json"), []) or []) + (
        load_json(os.path.join(d, "status.json"), {}) or {}
    ).get("history", []):
        by_id[w["id"]] = w
    return [by_id[k] for k in sorted(by_id)]


def switch_time(w):
    """When traffic moved: the first handing-off or draining step (seconds since the epoch)."""
    ts = [s["at_ms"] / 1000 for s in w.get("steps", []) if s["phase"] in SWITCH_STEPS]
    return min(ts) if ts else None


def in_flight_at_end(d, load):
    """POSTs h2load started but did not see answered when its duration ran out (from each POST
    connection's report): they may have been applied without being acknowledged."""
    first_post = load.get("conns", 0) - load.get("post_conns", 0)
    n = 0
    for path in glob.glob(os.path.join(d, "load", "conn*.txt")):
        k = int(os.path.basename(path)[4:].split(".")[0])
        if k < first_post:
            continue
        m = re.search(r"requests: \d+ total, (\d+) started, (\d+) done", open(path).read())
        if m:
            n += int(m.group(1)) - int(m.group(2))
    return n


def analyze_one(d, window, startup):
    meta = json.load(open(os.path.join(d, "meta.json")))
    res = {"strategy": meta["strategy"], "kind": meta["kind"], "layout": meta.get("layout")}
    la = os.path.join(d, "loadavg")
    res["loadavg_1m_at_end"] = float(open(la).read().strip()) if os.path.exists(la) else None
    rows = read_h2load_log(os.path.join(d, "load", "h2load.log"))
    posts = read_h2load_log(os.path.join(d, "load", "posts.log"))
    if not rows:
        res["error"] = "no h2load log rows"
        return res
    load = load_json(os.path.join(d, "load", "stalls.json"), {"stalls": []})
    closed = [s for s in load["stalls"] if s["kind"].startswith("connection closed")]
    rows = sorted(rows + [(s["t"], -2, 0) for s in closed])
    t_from, t_to = rows[0][0], rows[-1][0]
    ok = [r for r in rows if 200 <= r[1] < 300]
    failed = [r for r in rows if not (200 <= r[1] < 300)]
    offered = load.get("conns", 0) * load.get("rps", 0) * (load.get("deadline", 0) - load.get("start", 0))
    res.update(
        {
            "requests": len(rows),
            "offered": round(offered),
            "req_per_s": round(len(rows) / max(t_to - t_from, 1e-9), 1),
            "failed": len(failed),
            "failed_by_status": {
                ("closed-without-answer" if s == -2 else str(s)): sum(1 for r in failed if r[1] == s)
                for s in sorted({r[1] for r in failed})
            },
            "latency": lat_stats([r[2] for r in ok]),
            "stalls": [
                {"t_rel_s": round(s["t"] - t_from, 3), "conn": s["conn"], "kind": s["kind"],
                 "method": s.get("method")}
                for s in load["stalls"]
            ],
        }
    )
    # The counter: what was acknowledged against what the serving instances hold.
    counters = load_json(os.path.join(d, "counters.json"), {})
    expected = sum(1 for r in posts if 200 <= r[1] < 300)
    unanswered = sum(1 for s in closed if s.get("method") == "POST")
    actual = counters.get("actual")
    # Applied perhaps, never acknowledged: a POST whose connection closed without an answer,
    # or one still in flight when its h2load's duration ran out. Up to this many more held
    # than acknowledged is no error.
    unacked = unanswered + in_flight_at_end(d, load)
    diff = None if actual is None else expected - actual
    res["counter"] = {
        "posts": len(posts) + unanswered,
        "posts_failed": sum(1 for r in posts if not (200 <= r[1] < 300)) + unanswered,
        "expected": expected,
        "actual": actual,
        "acked_minus_held": diff,
        "unacked": unacked,
        # Negative beyond the unacknowledged ones would be increments applied twice: kept raw.
        "lost": None if diff is None else (0 if -unacked <= diff < 0 else diff),
        "unanswered": unanswered,
        "instances": counters.get("instances"),
    }

    if meta["kind"] == "rejuv":
        wf = rejuv_workflows(d)
        events = sorted(t for t in map(switch_time, wf) if t is not None and t_from <= t <= t_to)
        res["restarts"] = counters.get("completed_total")
        res["rolled_back"] = counters.get("rolled_back_total")
        res["failed_workflows"] = counters.get("failed_total")
        res["crashes"] = counters.get("crashes")
        res["workflows"] = [
            {
                "id": w["id"],
                "server": w["server"],
                "target": w["target"],
                "scope": w.get("scope"),
                "instance": w.get("instance"),
                "placement": w.get("placement"),
                "outcome": (w.get("outcome") or {}).get("outcome"),
                "steps": [
                    {"phase": s["phase"], "t_rel_s": round(s["at_ms"] / 1000 - t_from, 3)}
                    for s in w.get("steps", [])
                ],
            }
            for w in wf
        ]
        kinds = {}
        for w in wf:
            k = f"{w.get('scope')}, {w.get('placement')}"
            kinds[k] = kinds.get(k, 0) + 1
        res["workflow_kinds"] = kinds
    else:
        ev = baseline_events(os.path.join(d, "events.tsv"))
        stops = [t for t, k, _, _ in ev if k == "stop" and t_from <= t <= t_to]
        crashes = [t for t, k, _, _ in ev if k == "crashed" and t_from <= t <= t_to]
        events = sorted(stops + crashes)
        res["restarts"] = sum(1 for _, k, _, _ in ev if k == "stop")
        res["crashes"] = sum(1 for _, k, _, _ in ev if k == "crashed")
        res["events"] = [
            {"t_rel_s": round(t - t_from, 3), "kind": k, "copy": c, "detail": x} for t, k, c, x in ev
        ]
    # rejuv: switches inside the load; baselines: stops inside it (crashes are counted apart).
    res["switches_under_load"] = len(events) if meta["kind"] == "rejuv" else len(stops)
    res["event_times_rel_s"] = [round(t - t_from, 3) for t in events]

    before, after = window / 2, startup + window / 2

    def inside(t):
        return any(e - before <= t <= e + after for e in events)

    win = [r for r in rows if inside(r[0])]
    steady = [r for r in rows if not inside(r[0])]
    res["window"] = {
        "from_s": -before,
        "to_s": after,
        "requests": len(win),
        "failed": sum(1 for r in win if not (200 <= r[1] < 300)),
        "latency": lat_stats([r[2] for r in win if 200 <= r[1] < 300]),
    }
    res["steady"] = {
        "requests": len(steady),
        "failed": sum(1 for r in steady if not (200 <= r[1] < 300)),
        "latency": lat_stats([r[2] for r in steady if 200 <= r[1] < 300]),
    }
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
        "failed POSTs",
        "counter acked → held",
        "lost state",
        "restarts (under load)",
        "crashes",
        "p99 ms",
        "window p99 ms",
        "steady p99 ms",
        "failed in windows",
        "host load",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "latency" not in r:
            continue
        c = r["counter"]
        name = r["strategy"]
        if r.get("workflow_kinds"):
            name += " (" + "; ".join(f"{n} × {k}" for k, n in r["workflow_kinds"].items()) + ")"
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    fmt(r["req_per_s"], 0),
                    fmt(r["requests"]),
                    fmt(r["failed"]),
                    fmt(c["posts_failed"]),
                    f"{fmt(c['expected'])} → {fmt(c['actual'])}",
                    fmt(c["lost"]),
                    f"{fmt(r['restarts'])} ({r['switches_under_load']})",
                    fmt(r["crashes"]),
                    fmt(r["latency"]["p99_ms"], 2),
                    fmt(r["window"]["latency"]["p99_ms"], 2),
                    fmt(r["steady"]["latency"]["p99_ms"], 2),
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
    ap.add_argument("--startup", type=float, default=5.0, help="the service's start-up delay, s")
    ap.add_argument("--json")
    ap.add_argument("--command", help="the command that produced OUT, recorded in the JSON")
    a = ap.parse_args()
    order = ["rejuv-instance", "rejuv-inplace", "rejuv-server", "monit", "cron", "none"]
    dirs = [
        os.path.join(a.out, n)
        for n in sorted(os.listdir(a.out), key=lambda n: (order.index(n) if n in order else 99, n))
        if os.path.exists(os.path.join(a.out, n, "meta.json"))
    ]
    results = [analyze_one(d, a.window, a.startup) for d in dirs]
    run = load_json(os.path.join(a.out, "run.json"), {})
    if run:
        print(
            f"rejuv {run.get('git_head')} (binary {run.get('binary_sha256')}, built "
            f"{run.get('binary_mtime')}{', OLDER THAN THE SOURCES' if run.get('binary_older_than_sources') else ''}), "
            f"HAProxy {run.get('haproxy')}, {run.get('cores')} cores; start-up {run.get('startup_delay_s')} s; "
            f"load ({run.get('get_conns')} GET + {run.get('post_conns')} POST connections) x "
            f"{run.get('rps_per_conn')} req/s for {run.get('load_seconds')} s; leak "
            f"{run.get('leak_per_request')} B/request + {run.get('leak_per_second')} B/s, limit "
            f"{run.get('leak_limit')} B; window {a.window / 2:g} s before an event to "
            f"{a.startup + a.window / 2:g} s after"
        )
    print(table(results))
    for r in results:
        if "error" in r:
            print(f"{r['strategy']}: {r['error']}")
            continue
        extra = ""
        if r["kind"] == "rejuv":
            extra = f"; rolled back {r.get('rolled_back')}, failed workflows {r.get('failed_workflows')}"
        print(
            f"{r['strategy']}: offered {r['offered']}, answered or failed {r['requests']}, failed by "
            f"status {r['failed_by_status']}, POSTs {r['counter']['posts']} (acked - held = "
            f"{r['counter']['acked_minus_held']}, applied perhaps but unacknowledged "
            f"{r['counter']['unacked']}), switch/restart times {r['event_times_rel_s']} s{extra}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"command": a.command, "run": run, "window_s": a.window,
                       "startup_s": a.startup, "results": results}, f, indent=2)
        print(f"json: {a.json}")


if __name__ == "__main__":
    main()
