#!/usr/bin/env python3
"""The measured load: CONNS keep-alive connections at RPS requests per second each, one h2load
process per connection (h2load --h1 -c 1 --rps RPS -D ... --log-file ...), for DURATION seconds.

    python3 load.py --url http://127.0.0.1:PORT/ --conns 6 --rps 100 --duration 60 --out DIR

Why not one `h2load -c 6`: when a request is in flight on a server that dies, HAProxy closes the
client's keep-alive connection without an answer (as a server closing an idle keep-alive
connection would; browsers resend). h2load 1.52 neither counts that request nor opens a new
connection: that connection's load stops for the rest of the run, and later failures then go
unseen. So each connection is its own h2load, watched here: one whose TCP connection is gone
while it should be running has *stalled*; it is killed and a new one started for the remaining
time, like a client reconnecting. Each stall is one request closed without an answer (HTTP/1.1
has one request in flight per connection), recorded in DIR/stalls.json with its time.

With --post-conns N --post-url URL, N more connections send POSTs (h2load -d) to
URL at the same rate (body `+1`): the counter requests of a stateful service. Their connections are numbered
after the GET ones; DIR/posts.log holds their requests alone, merged and sorted.

Writes DIR/h2load.log (every process's per-request log, merged and sorted), DIR/h2load.txt
(their reports), DIR/stalls.json.
"""

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse


def established_ports(pid, port):
    """How many ESTABLISHED TCP connections to `port` process `pid` holds (None if it is gone)."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return None
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            # local, remote, state ... inode is field 9
            if len(f) > 9 and f[9] in inodes and f[3] == "01" and int(f[2].split(":")[1], 16) == port:
                n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--conns", type=int, default=6)
    ap.add_argument("--rps", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--out", required=True)
    ap.add_argument("--post-conns", type=int, default=0)
    ap.add_argument("--post-url")
    a = ap.parse_args()
    if a.post_conns and not a.post_url:
        ap.error("--post-conns needs --post-url")
    if a.post_conns and urlparse(a.post_url).port != urlparse(a.url).port:
        ap.error("--post-url must name the same port as --url")
    port = urlparse(a.url).port
    os.makedirs(a.out, exist_ok=True)
    start = time.time()
    deadline = start + a.duration
    procs = {}  # conn -> dict(p, started, n, missing)
    stalls, runs = [], []
    # h2load cannot send an empty file (it maps it): the counter ignores this body.
    body = os.path.join(a.out, "post-body")
    with open(body, "w") as f:
        f.write("+1")

    def is_post(k):
        return k >= a.conns

    def launch(k):
        rem = deadline - time.time()
        if rem < 1.0:
            procs.pop(k, None)
            return
        n = procs[k]["n"] + 1 if k in procs else 0
        base = os.path.join(a.out, f"conn{k}.{n}")
        target = ["-d", body, a.post_url] if is_post(k) else [a.url]
        p = subprocess.Popen(
            ["h2load", "--h1", "-c", "1", "--rps", str(a.rps), "-D", f"{int(rem * 1000)}ms",
             "--log-file", base + ".log"] + target,
            stdout=open(base + ".txt", "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        procs[k] = {"p": p, "started": time.time(), "n": n, "missing": 0}
        runs.append({"conn": k, "n": n, "start": time.time(), "duration_s": round(rem, 3),
                     "method": "POST" if is_post(k) else "GET"})

    def on_signal(*_):
        for s in procs.values():
            s["p"].kill()
        sys.exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for k in range(a.conns + a.post_conns):
        launch(k)
    # Bounded: one pass every 0.2 s until the deadline (plus the processes' own end).
    for _ in range(int(a.duration * 5) + 100):
        now = time.time()
        if now >= deadline:
            break
        for k in list(procs):
            s = procs[k]
            rc = s["p"].poll()
            if rc is not None:
                # Ended early (h2load gives up when it cannot connect): start again.
                if deadline - now > 1.0:
                    stalls.append({"t": now, "conn": k, "kind": f"exited rc={rc}",
                                   "method": "POST" if is_post(k) else "GET"})
                    launch(k)
                else:
                    procs.pop(k)
                continue
            if now - s["started"] < 0.5:
                continue
            n = established_ports(s["p"].pid, port)
            s["missing"] = s["missing"] + 1 if n == 0 else 0
            if s["missing"] >= 2:
                stalls.append({"t": now, "conn": k, "kind": "connection closed without an answer",
                               "method": "POST" if is_post(k) else "GET"})
                s["p"].kill()
                s["p"].wait()
                launch(k)
        time.sleep(0.2)
    for s in procs.values():
        try:
            s["p"].wait(timeout=max(0.0, deadline - time.time()) + 10)
        except subprocess.TimeoutExpired:
            s["p"].kill()
            s["p"].wait()

    rows, posts = [], []
    for f in sorted(glob.glob(os.path.join(a.out, "conn*.log"))):
        mine = [l for l in open(f).read().splitlines() if l.strip()]
        rows += mine
        if is_post(int(os.path.basename(f)[4:].split(".")[0])):
            posts += mine
    for name, lines in (("h2load.log", rows), ("posts.log", posts)):
        lines.sort(key=lambda l: int(l.split("\t")[0]))
        with open(os.path.join(a.out, name), "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    with open(os.path.join(a.out, "h2load.txt"), "w") as f:
        for t in sorted(glob.glob(os.path.join(a.out, "conn*.txt"))):
            f.write(f"==> {os.path.basename(t)}\n{open(t).read()}\n")
    with open(os.path.join(a.out, "stalls.json"), "w") as f:
        json.dump({"start": start, "deadline": deadline, "conns": a.conns + a.post_conns,
                   "post_conns": a.post_conns, "rps": a.rps,
                   "stalls": stalls, "runs": runs}, f, indent=2)
    print(f"load: {len(rows)} requests logged ({len(posts)} POSTs), "
          f"{len(stalls)} stalled connections restarted")


if __name__ == "__main__":
    main()
