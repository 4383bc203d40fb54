#!/usr/bin/env python3
"""Where the CPU goes during `gamestream bench`'s pipeline phase, when the services run
on this machine: CPU seconds per command name (postgres backends summed, redis-server,
tansu, gamestream, ...) from when the bench prints 'bench: pipeline' until it exits
(use --latency-duration 0 so that the pipeline phase is the last one). CPU time is a
steadier figure than wall-clock rates on a shared machine.

usage: benches/cpu_by_process.py LOGFILE -- target/release/gamestream bench --events 1000000 --latency-duration 0
"""
import os, subprocess, sys, time
log = sys.argv[1]; cmd = sys.argv[sys.argv.index('--') + 1:]
tick = os.sysconf('SC_CLK_TCK')
def snap():
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try:
            s = open(f'/proc/{pid}/stat').read()
        except OSError: continue
        comm = s[s.index('(') + 1:s.rindex(')')]
        f = s[s.rindex(')') + 2:].split()
        out[int(pid)] = (comm, int(f[11]) + int(f[12]))
    return out
with open(log, 'w') as fh:
    p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    last = None; total = {}; t0 = None
    while p.poll() is None:
        time.sleep(0.2)
        if last is None:
            if 'bench: pipeline' in open(log).read():
                last = snap(); t0 = time.time()
            continue
        cur = snap()
        for pid, (comm, t) in cur.items():
            prev = last.get(pid, (comm, 0))[1] if pid in last else 0
            name = 'postgres' if comm.startswith('postgres') else comm
            total[name] = total.get(name, 0) + (t - prev)
        last = cur
    wall = time.time() - t0 if t0 else 0
print(open(log).read().split('gamestream bench:')[-1])
print(f'pipeline phase wall {wall:.1f}s; CPU seconds by command:')
for k, v in sorted(total.items(), key=lambda kv: -kv[1])[:8]:
    print(f'  {k:20s} {v / tick:7.1f}')
