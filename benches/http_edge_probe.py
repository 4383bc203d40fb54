#!/usr/bin/env python3
"""Connection-flood and concurrent-body probes against a gamestream daemon it starts.

    eval "$(deploy/local/stack.sh env)"
    python3 benches/http_edge_probe.py --bin target/debug/gamestream flood
    python3 benches/http_edge_probe.py --bin target/debug/gamestream bodies

Each probe starts a fresh daemon (mode ingest, a free port) so that VmHWM (peak RSS)
belongs to that probe alone, and stops it at the end. Everything is bounded: connection
counts, durations, and every read has a timeout.

flood:  2,000 idle keep-alive connections (one request each), 300 silent and 300
        slowloris connections (a header line every 2 s) held for --hold seconds, then
        connections from 127.0.0.1 and 127.0.0.2 up to --flood in total (below the
        open-file limit of this process; the daemon runs with `ulimit -n 10000`, so the
        flood passes the daemon's limit). A prober opens a fresh connection for
        GET /health every 250 ms throughout: the slowest answer and the failures (no
        answer within 5 s) are reported per phase, with how many of each kind of
        connection the server still holds.
bodies: --bodies connections at once each POST a 1,000,000-byte JSON body that fails
        validation (400); the statuses, then VmHWM and VmRSS of the daemon (from
        /proc/PID/status) at the end and --settle seconds later.
"""

import argparse
import asyncio
import collections
import os
import resource
import socket
import subprocess
import sys
import time


# Open-file limit of the daemon (`ulimit -n`): the flood goes past it.
NOFILE = 10000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def mem(pid):
    return f"VmRSS {status_kb(pid, 'VmRSS') / 1024:.0f} MB, VmHWM {status_kb(pid, 'VmHWM') / 1024:.0f} MB"


# Topics of their own, created once (`topics create`), so the probes need no setup.
TOPICS = {
    f"GAMESTREAM_TOPICS__{name.upper()}": f"edge_probe.{name}"
    for name in ["player_events", "processed_events", "statistics", "leaderboards", "dlq"]
}


def create_topics(binary):
    env = dict(os.environ)
    env.update(TOPICS)
    subprocess.run([binary, "topics", "create"], env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)


def start_daemon(binary, port, extra_env):
    create_topics(binary)
    env = dict(os.environ)
    env.update(TOPICS)
    env.update({
        "PORT": str(port),
        "GAMESTREAM_MODE": "ingest",
        "GAMESTREAM_HTTP__BIND": "127.0.0.1",
        "RUST_LOG": "error",
    })
    env.update(extra_env)
    # The daemon's own open-file limit, below this process's, so the flood can reach it.
    proc = subprocess.Popen(["sh", "-c", f'ulimit -n {NOFILE}; exec "$0" serve', binary], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"daemon exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    proc.kill()
    sys.exit("daemon did not answer /health within 60 s")


def stop_daemon(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Prober:
    """GET /health on a fresh connection every 250 ms; latencies per phase."""

    def __init__(self, port):
        self.port = port
        self.phase = "start"
        self.stats = collections.OrderedDict()
        self.running = True

    async def once(self):
        start = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 5)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            line = await asyncio.wait_for(reader.readline(), 5 - (time.monotonic() - start))
            writer.close()
            ok = line.startswith(b"HTTP/1.1 200")
        except (OSError, asyncio.TimeoutError):
            ok = False
        return ok, time.monotonic() - start

    async def run(self):
        while self.running:
            phase = self.phase
            ok, took = await self.once()
            s = self.stats.setdefault(phase, {"probes": 0, "failed": 0, "max_s": 0.0, "over_1s": 0})
            s["probes"] += 1
            s["failed"] += 0 if ok else 1
            s["over_1s"] += 1 if (not ok or took > 1.0) else 0
            s["max_s"] = max(s["max_s"], took)
            await asyncio.sleep(0.25)


async def open_conn(port, source="127.0.0.1"):
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5)


async def drain(reader, stop):
    try:
        while not stop.is_set():
            data = await reader.read(4096)
            if not data:
                return
    except (OSError, asyncio.CancelledError):
        return


async def flood(args):
    port = free_port()
    proc = start_daemon(args.bin, port, {})
    print(f"daemon pid {proc.pid} ({args.bin}), start: {mem(proc.pid)}")
    prober = Prober(port)
    probe_task = asyncio.create_task(prober.run())
    stop = asyncio.Event()
    kinds = {"idle": [], "silent": [], "slowloris": [], "flood": []}
    drains = []

    async def track(kind, reader, writer):
        kinds[kind].append((reader, writer))
        drains.append(asyncio.create_task(drain(reader, stop)))

    prober.phase = "opening"
    for i in range(args.idle):
        try:
            r, w = await open_conn(port)
            w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            await asyncio.wait_for(r.read(1024), 5)
            await track("idle", r, w)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            print(f"idle {i}: {e!r}")
            break
    for i in range(args.silent):
        r, w = await open_conn(port)
        await track("silent", r, w)
    for i in range(args.slow):
        r, w = await open_conn(port)
        w.write(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n")
        await track("slowloris", r, w)

    async def trickle():
        n = 0
        while not stop.is_set():
            await asyncio.sleep(2)
            n += 1
            for r, w in kinds["slowloris"]:
                if not r.at_eof():
                    try:
                        w.write(f"x-t{n}: 1\r\n".encode())
                    except OSError:
                        pass

    trickle_task = asyncio.create_task(trickle())

    def held():
        return {k: sum(1 for r, _ in v if not r.at_eof()) for k, v in kinds.items()}

    prober.phase = "hold"
    for t in range(args.hold):
        await asyncio.sleep(1)
        if t % 10 == 9:
            print(f"  hold {t + 1:3d}s: open {held()}  {mem(proc.pid)}")
    print(f"after {args.hold}s hold: still open {held()}; {mem(proc.pid)}")

    prober.phase = "flood"
    errors = collections.Counter()
    opened = 0
    total_target = args.flood
    sources = ["127.0.0.1", "127.0.0.2"]
    started = time.monotonic()
    while sum(len(v) for v in kinds.values()) < total_target and time.monotonic() - started < args.flood_time:
        source = sources[opened % 2]
        try:
            r, w = await open_conn(port, source)
            await track("flood", r, w)
            opened += 1
        except (OSError, asyncio.TimeoutError) as e:
            errors[type(e).__name__ + ":" + str(getattr(e, "errno", ""))] += 1
            if sum(errors.values()) > 200:
                break
        if opened % 1000 == 0:
            await asyncio.sleep(0)
    print(f"flood: opened {opened} more in {time.monotonic() - started:.1f}s, client errors {dict(errors)}; "
          f"open now {held()}; {mem(proc.pid)}")
    prober.phase = "after flood"
    await asyncio.sleep(args.after)
    print(f"{args.after}s after the flood: open {held()}; {mem(proc.pid)}")
    prober.running = False
    stop.set()
    await probe_task
    trickle_task.cancel()
    for v in kinds.values():
        for _, w in v:
            try:
                w.close()
            except OSError:
                pass
    for d in drains:
        d.cancel()
    await asyncio.gather(*drains, return_exceptions=True)
    print("/health from a fresh connection every 250 ms (failed = no 200 within 5 s):")
    for phase, s in prober.stats.items():
        print(f"  {phase:12s} probes {s['probes']:4d}  failed {s['failed']:3d}  "
              f"over 1 s (or failed) {s['over_1s']:3d}  slowest {s['max_s']:.3f} s")
    await asyncio.sleep(2)
    print(f"end: {mem(proc.pid)}")
    stop_daemon(proc)


async def post_body(port, body):
    try:
        r, w = await open_conn(port)
    except (OSError, asyncio.TimeoutError):
        return "connect failed"
    head = (f"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        w.write(head + body)
        try:
            await asyncio.wait_for(w.drain(), 60)
        except (OSError, ConnectionError):
            pass
        line = await asyncio.wait_for(r.readline(), 60)
        status = line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1 ") else "no answer"
    except (OSError, asyncio.TimeoutError, ConnectionError) as e:
        status = type(e).__name__
    finally:
        w.close()
    return status


async def bodies(args):
    port = free_port()
    proc = start_daemon(args.bin, port, {})
    print(f"daemon pid {proc.pid} ({args.bin}), start: {mem(proc.pid)}")
    # Valid JSON that fails validation: 400 once read whole.
    pad = 1_000_000 - len(b'{"pad":""}')
    body = b'{"pad":"' + b"x" * pad + b'"}'
    assert len(body) == 1_000_000
    started = time.monotonic()
    statuses = await asyncio.gather(*(post_body(port, body) for _ in range(args.bodies)))
    print(f"{args.bodies} concurrent 1 MB bodies in {time.monotonic() - started:.1f}s: "
          f"{dict(collections.Counter(statuses))}")
    print(f"  right after: {mem(proc.pid)}")
    await asyncio.sleep(args.settle)
    print(f"  {args.settle}s later: {mem(proc.pid)}")
    stop_daemon(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("probe", choices=["flood", "bodies"])
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--silent", type=int, default=300)
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--hold", type=int, default=30)
    parser.add_argument("--flood", type=int, default=18000, help="client connections in total")
    parser.add_argument("--flood-time", type=int, default=60)
    parser.add_argument("--after", type=int, default=15)
    parser.add_argument("--bodies", type=int, default=512)
    parser.add_argument("--settle", type=int, default=10)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.flood > hard - 200:
        args.flood = hard - 200
    asyncio.run(flood(args) if args.probe == "flood" else bodies(args))


if __name__ == "__main__":
    main()
