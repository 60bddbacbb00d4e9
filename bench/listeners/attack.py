#!/usr/bin/env python3
"""Idle and slowloris connections against every listener of a running agent, controller and
builtin proxy, with normal requests measured meanwhile (issue 16, item 4).

    attack.py SPEC.json        # run by bench/listeners/run.sh, which writes SPEC.json

Per listener it opens, all at once and held together:
  - `silent`: connections that send nothing (closed at the header-read timeout);
  - `keepalive`: connections that make one request and then stay silent (closed at the idle
    timeout, counted from the end of the response);
  - `slowloris`: a request head begun and never finished, one more header line every 2 s
    (closed at the header-read timeout, counted from the connection).
Meanwhile a separate process (so the attack's event loop cannot delay it) sends each listener
a normal request on a new connection every 100 ms and times it. Every wait is bounded: a
connection still open `timeout + 20 s` after its start counts as not closed.
"""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

SLOWLORIS_EVERY = 2.0
PROBE_EVERY = 0.1
SLACK = 20.0


def request(path, token, close):
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    conn = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}{conn}\r\n".encode()


async def read_response(reader):
    """One response with a content-length; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    await reader.readexactly(length)
    return status


async def closed_by_server(reader, limit):
    """Seconds until the server closes the connection, or None after `limit`."""
    begun = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except (ConnectionError, OSError):
        pass
    return time.monotonic() - begun


async def silent(host, port, limit, gate):
    async with gate:
        reader, writer = await asyncio.open_connection(host, port)
    begun = time.monotonic()
    took = await closed_by_server(reader, limit)
    writer.close()
    return None if took is None else time.monotonic() - begun


async def keepalive(host, port, path, limit, gate):
    async with gate:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request(path, None, False))
        await writer.drain()
        await read_response(reader)
    took = await closed_by_server(reader, limit)
    writer.close()
    return took


async def slowloris(host, port, limit, gate):
    async with gate:
        reader, writer = await asyncio.open_connection(host, port)
    begun = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")
    line = 0
    closed = False
    try:
        while not closed and time.monotonic() - begun < limit:
            try:
                async with asyncio.timeout(SLOWLORIS_EVERY):
                    closed = not await reader.read(65536)
            except TimeoutError:
                writer.write(f"x-slow-{line}: 1\r\n".encode())
                await writer.drain()
                line += 1
    except (ConnectionError, OSError):
        closed = True
    writer.close()
    return time.monotonic() - begun if closed else None


def probe(spec):
    """The normal client: a request on a new connection to each listener every PROBE_EVERY,
    until the file `stop` exists. Prints JSON {listener: [[latency_s or null, status], ...]}."""
    import socket

    def one(l):
        begun = time.monotonic()
        try:
            with socket.create_connection((l["host"], l["port"]), timeout=5) as s:
                s.sendall(request(l["normal"], l.get("token"), True))
                got = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            status = int(got.split(b" ", 2)[1])
            return [time.monotonic() - begun, status]
        except (OSError, IndexError, ValueError):
            return [None, 0]

    results = {l["name"]: [] for l in spec["listeners"]}
    next_at = time.monotonic()
    while not os.path.exists(spec["stop_file"]):
        for l in spec["listeners"]:
            results[l["name"]].append(one(l))
        next_at += PROBE_EVERY
        time.sleep(max(0.0, next_at - time.monotonic()))
    json.dump(results, sys.stdout)


def proc_reading(pid):
    rss_kib = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def watch_processes(pids, peaks, stop):
    while not stop.is_set():
        for name, pid in pids.items():
            try:
                rss, fds = proc_reading(pid)
            except OSError:
                continue
            old = peaks.setdefault(name, [rss, fds, rss, fds])
            old[2], old[3] = max(old[2], rss), max(old[3], fds)
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def attack(spec):
    header, idle = spec["header_read_timeout"], spec["idle_timeout"]
    n_idle, n_slow = spec["idle"], spec["slowloris"]
    gate = asyncio.Semaphore(200)
    peaks, stop = {}, asyncio.Event()
    watcher = asyncio.create_task(watch_processes(spec["pids"], peaks, stop))

    if os.path.exists(spec["stop_file"]):
        os.remove(spec["stop_file"])
    prober = subprocess.Popen(
        [sys.executable, __file__, "--probe", spec["path"]], stdout=subprocess.PIPE
    )
    try:
        await asyncio.sleep(2)  # a baseline before the attack
        attack_began = time.monotonic()
        tasks = {}
        for l in spec["listeners"]:
            h, p = l["host"], l["port"]
            tasks[(l["name"], "silent")] = [
                asyncio.create_task(silent(h, p, header + SLACK, gate)) for _ in range(n_idle // 2)
            ]
            tasks[(l["name"], "keepalive")] = [
                asyncio.create_task(keepalive(h, p, l["idle_path"], idle + SLACK, gate))
                for _ in range(n_idle - n_idle // 2)
            ]
            tasks[(l["name"], "slowloris")] = [
                asyncio.create_task(slowloris(h, p, header + SLACK, gate)) for _ in range(n_slow)
            ]
        closes = {k: await asyncio.gather(*v, return_exceptions=True) for k, v in tasks.items()}
        attack_ended = time.monotonic()
        await asyncio.sleep(2)  # and after it
    finally:
        open(spec["stop_file"], "w").close()
        out, _ = prober.communicate(timeout=30)
        stop.set()
        await watcher
    probes = json.loads(out)

    print(f"\nAttack: per listener {n_idle // 2} silent + {n_idle - n_idle // 2} keep-alive idle "
          f"+ {n_slow} slowloris connections, opened together and held "
          f"({attack_ended - attack_began:.0f} s until the last was closed).")
    print(f"Documented timeouts: header-read {header:g} s, idle {idle:g} s.\n")
    print("| listener | connections | closed by the server | after (s): min / median / max | timeout (s) |")
    print("|---|---|---|---|---|")
    for (name, kind), results in closes.items():
        ok = [r for r in results if isinstance(r, float)]
        errors = [r for r in results if isinstance(r, BaseException)]
        timeout = idle if kind == "keepalive" else header
        spread = (f"{min(ok):.2f} / {statistics.median(ok):.2f} / {max(ok):.2f}" if ok else "-")
        note = f" ({len(errors)} failed to open: {errors[0]!r})" if errors else ""
        print(f"| {name} | {len(results)} {kind} | {len(ok)}{note} | {spread} | {timeout:g} |")

    print("\nNormal requests meanwhile (a new connection each, every 100 ms per listener):\n")
    print("| listener | requests | failed | p50 (ms) | p99 (ms) | max (ms) | over 100 ms |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for name, rs in probes.items():
        lat = [r[0] * 1000 for r in rs if r[0] is not None and 200 <= r[1] < 300]
        failed = len(rs) - len(lat)
        over = sum(1 for v in lat if v > 100)
        worst = max([worst] + lat)
        print(f"| {name} | {len(rs)} | {failed} | {percentile(lat, 0.5):.1f} | "
              f"{percentile(lat, 0.99):.1f} | {max(lat):.1f} | {over} |")

    print("\nProcesses (RSS MiB and open fds: before the attack -> peak):\n")
    print("| process | RSS before | RSS peak | fds before | fds peak |")
    print("|---|---|---|---|---|")
    for name, (rss0, fds0, rss1, fds1) in peaks.items():
        print(f"| {name} | {rss0:.1f} | {rss1:.1f} | {fds0} | {fds1} |")

    all_closed = all(isinstance(r, float) for rs in closes.values() for r in rs)
    in_time = all(
        r <= (idle if kind == "keepalive" else header) + 1.0
        for (_, kind), rs in closes.items() for r in rs if isinstance(r, float)
    )
    no_failures = all(r[0] is not None and 200 <= r[1] < 300 for rs in probes.values() for r in rs)
    checks = [
        ("every attack connection closed by the server", all_closed),
        ("each within its timeout + 1 s", in_time),
        ("every normal request answered 2xx", no_failures),
        ("every normal request within 100 ms", worst <= 100.0),
    ]
    print()
    for what, ok in checks:
        print(("PASS " if ok else "FAIL ") + what)
    return 0 if all(ok for _, ok in checks) else 1


def main():
    if sys.argv[1] == "--probe":
        probe(json.load(open(sys.argv[2])))
        return 0
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    spec["path"] = sys.argv[1]
    return asyncio.run(attack(spec))


if __name__ == "__main__":
    sys.exit(main())
