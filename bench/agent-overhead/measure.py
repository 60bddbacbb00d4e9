#!/usr/bin/env python3
"""Samples the RSS and CPU of processes once a second while scraping their /metrics once a second.

Usage: measure.py DURATION_S WARMUP_S NAME:PID:URL[:TOKEN_FILE] ...

Per process it prints RSS median/max (MB, VmRSS of /proc/PID/status; "anon MB" is the median
of its anonymous part, RssAnon, the rest being mapped files such as the binary's code), CPU as % of one core
(utime+stime deltas of /proc/PID/stat, mean after the warm-up) and the RSS slope (KB/min, least
squares over the samples after the warm-up). A failed scrape or a process that dies is an error.
"""
import os
import statistics
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    """VmRSS and its anonymous part (RssAnon), in KB."""
    got = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon"):
                got[key] = int(line.split()[1])
    if len(got) != 2:
        raise RuntimeError(f"no VmRSS/RssAnon for pid {pid}")
    return got["VmRSS"], got["RssAnon"]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # Fields after the ")" closing comm: state is field 3, utime 14, stime 15.
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def slope_kb_per_min(ts, ys):
    n = len(ts)
    if n < 2:
        return float("nan")
    mt, my = sum(ts) / n, sum(ys) / n
    den = sum((t - mt) ** 2 for t in ts)
    if den == 0:
        return float("nan")
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / den * 60.0


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    duration, warmup = float(sys.argv[1]), float(sys.argv[2])
    procs = []
    for spec in sys.argv[3:]:
        parts = spec.split(":", 2)
        if len(parts) != 3:
            sys.exit(f"bad process spec '{spec}': want NAME:PID:URL[|TOKEN_FILE]")
        name, pid, rest = parts
        url, _, token_file = rest.partition("|")
        headers = {}
        if token_file:
            with open(token_file) as f:
                headers["Authorization"] = "Bearer " + f.read().strip()
        procs.append(
            dict(name=name, pid=int(pid), url=url, headers=headers, t=[], rss=[], anon=[], scrapes=0,
                 bytes=0, cpu0=None)
        )

    start = time.monotonic()
    next_tick = start
    while True:
        now = time.monotonic()
        el = now - start
        if el >= duration:
            break
        for p in procs:
            req = urllib.request.Request(p["url"], headers=p["headers"])
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status != 200:
                    sys.exit(f"{p['name']}: {p['url']} answered {r.status}")
                p["bytes"] = len(r.read())
            p["scrapes"] += 1
            p["t"].append(el)
            rss, anon = rss_kb(p["pid"])
            p["rss"].append(rss)
            p["anon"].append(anon)
            if el >= warmup and p["cpu0"] is None:
                p["cpu0"] = (cpu_ticks(p["pid"]), time.monotonic())
        next_tick += 1.0
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    print(f"duration {duration:.0f} s, warm-up {warmup:.0f} s, one scrape and one reading a second")
    print(f"{'process':<16} {'RSS median MB':>13} {'RSS max MB':>10} {'CPU % core':>10} "
          f"{'RSS slope KB/min':>16} {'anon MB':>7} {'scrapes':>7} {'/metrics bytes':>14}")
    for p in procs:
        t1, w1 = cpu_ticks(p["pid"]), time.monotonic()
        t0, w0 = p["cpu0"]
        cpu = (t1 - t0) / CLK_TCK / (w1 - w0) * 100.0
        after = [(t, y) for t, y in zip(p["t"], p["rss"]) if t >= warmup]
        slope = slope_kb_per_min([a[0] for a in after], [a[1] for a in after])
        print(f"{p['name']:<16} {statistics.median(p['rss']) / 1024:>13.1f} "
              f"{max(p['rss']) / 1024:>10.1f} {cpu:>10.2f} {slope:>16.1f} "
              f"{statistics.median(p['anon']) / 1024:>7.1f} {p['scrapes']:>7} "
              f"{p['bytes']:>14}")


if __name__ == "__main__":
    main()
