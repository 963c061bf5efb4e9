#!/usr/bin/env python3
"""Load test of `kakoi serve` on loopback (a benchmark, not a timed test).

    cargo build --release && python3 benches/server_load.py [--quick]

What it measures, interleaved so a shared machine's load hits every variant alike:

1. bare python: `python3 main.py` (hello world) started directly on the host, sequentially;
2. `POST /run` hello world with wrk (Debian's `wrk`), 2 threads, 8 connections, against a
   manager with 2 long-lived launchers (the default) and against one that starts a fresh
   `kakoi __launch` for every run (`max_runs_per_worker = 1`), alternating;
3. the manager's RSS (and its launchers') before and after 10,000 runs.

Targets from issue 5 (reported, never asserted): throughput >= 0.8 x (2 cores / bare python
start), p99 <= 3 x bare python start. Results go to benches/results/server-load-<time>.md.
"""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KAKOI = os.path.join(ROOT, "target/release/kakoi")
PYTHON = "/usr/bin/python3"
HELLO = 'print("hello")\n'
QUICK = "--quick" in sys.argv


def bare_python(n):
    d = tempfile.mkdtemp(prefix="kakoi-bench-")
    main = os.path.join(d, "main.py")
    with open(main, "w") as f:
        f.write(HELLO)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([PYTHON, main], stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - t) * 1000)
    shutil.rmtree(d)
    return times


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def children(pid):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        if int(rest[1]) == pid and rest[0] != "Z":
            out.append(int(p))
    return out


class Server:
    def __init__(self, extra):
        self.dir = tempfile.mkdtemp(prefix="kakoi-bench-")
        cfg = os.path.join(self.dir, "kakoi.toml")
        with open(cfg, "w") as f:
            f.write('listen = "127.0.0.1:0"\nworkers = 2\nqueue = 64\n' + extra)
        self.proc = subprocess.Popen(
            [KAKOI, "serve", "--config", cfg],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
            text=True,
        )
        for line in self.proc.stderr:
            m = re.match(r"kakoi serve: listening on (\S+)", line)
            if m:
                self.base = m.group(1)
                break
        else:
            raise SystemExit("kakoi serve did not start")

    def sequential(self, n):
        """n requests one after another: (HTTP round trip ms, launcher-reported ms) pairs."""
        out = []
        for _ in range(n):
            t = time.perf_counter()
            body = self.run_once()
            http_ms = (time.perf_counter() - t) * 1000
            tm = body["timings"]
            out.append((http_ms, tm["setup_ms"] + tm["run_ms"] + tm["cleanup_ms"]))
        return out

    def run_once(self):
        req = urllib.request.Request(
            self.base + "/run",
            data=json.dumps({"code": HELLO}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req) as r:
            body = json.load(r)
        assert body["status"] == "ok" and body["stdout"] == "hello\n", body
        return body

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir)


def wrk(base, seconds):
    lua = os.path.join(tempfile.gettempdir(), "kakoi-bench-post.lua")
    with open(lua, "w") as f:
        f.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps({'code': HELLO}))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c8",
            f"-d{seconds}s",
            "--timeout",
            "60s",
            "--latency",
            "-s",
            lua,
            base + "/run",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(text):
        m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
        if not m:
            raise SystemExit(f"cannot parse wrk latency {text!r} in:\n{out}")
        v, unit = m.groups()
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": reqs,
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def main():
    if not os.path.exists(KAKOI):
        raise SystemExit("build first: cargo build --release")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    load_before = open("/proc/loadavg").read().split()[:3]
    rounds = 1 if QUICK else 3
    seconds = 5 if QUICK else 10
    bare, modes = [], {"long-lived launchers": [], "one launcher per run": []}
    seq = {"long-lived launchers": [], "one launcher per run": []}
    servers = {
        "long-lived launchers": "",
        "one launcher per run": "max_runs_per_worker = 1\n",
    }
    for _ in range(rounds):
        bare += bare_python(50 if QUICK else 100)
        for name, extra in servers.items():
            s = Server(extra)
            for _ in range(20):
                s.run_once()
            seq[name] += s.sequential(20 if QUICK else 50)
            modes[name].append(wrk(s.base, seconds))
            s.stop()

    # RSS over 10,000 runs (long-lived launchers).
    s = Server("")
    for _ in range(50):
        s.run_once()
    pid = s.proc.pid
    rss_before = rss_kib(pid)
    workers_before = {c: rss_kib(c) for c in children(pid)}
    total = 0
    target_runs = 2000 if QUICK else 10000
    soak = []
    checkpoints = []
    rate = statistics.median(r["rps"] for r in modes["long-lived launchers"])
    while total < target_runs:
        # Long wrk runs: each run's end closes connections mid-request (cancelling runs).
        left = target_runs - total
        r = wrk(s.base, max(10, min(120, int(left / max(rate, 1) * 1.1) + 1)))
        total += r["requests"]
        soak.append(r)
        checkpoints.append((total, rss_kib(pid)))
    rss_after = rss_kib(pid)
    workers_after = {c: rss_kib(c) for c in children(pid)}
    s.run_once()
    s.stop()
    load_after = open("/proc/loadavg").read().split()[:3]

    bare_mean = statistics.mean(bare)
    bare_median = statistics.median(bare)
    target_rps = 0.8 * 2 / (bare_mean / 1000)
    target_p99 = 3 * bare_mean
    lines = [
        f"# kakoi serve load test ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})",
        "",
        f"Machine: {os.cpu_count()} cores, shared with other engineers' builds and tests "
        f"(load average {' '.join(load_before)} before, {' '.join(load_after)} after): "
        "re-measure on a quiet machine.",
        "",
        f"bare `python3 main.py` (hello world, host, sequential, n={len(bare)}): "
        f"mean {bare_mean:.1f} ms, median {bare_median:.1f} ms",
        f"targets: throughput >= 0.8 x 2 / {bare_mean:.1f} ms = {target_rps:.0f} req/s; "
        f"p99 <= 3 x {bare_mean:.1f} ms = {target_p99:.1f} ms",
        "",
        "`wrk -t2 -c8 --latency` POST /run hello world, 2 launchers, rounds interleaved:",
        "",
        "| mode | round | requests | req/s | p50 ms | p99 ms | non-2xx |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in modes.items():
        for i, r in enumerate(rs):
            lines.append(
                f"| {name} | {i + 1} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['non_2xx']} {r['socket_errors']} |"
            )
    lines += [
        "",
        "Sequential requests (concurrency 1): HTTP round trip vs what the launcher reports "
        "(setup + run + cleanup); the difference is the manager's own cost (HTTP, JSON, "
        "frames, queue; for one launcher per run also the launcher's start):",
        "",
        "| mode | n | round trip median ms | launcher median ms | overhead median ms |",
        "|---|---|---|---|---|",
    ]
    for name, pairs in seq.items():
        rt = statistics.median(p[0] for p in pairs)
        la = statistics.median(p[1] for p in pairs)
        ov = statistics.median(p[0] - p[1] for p in pairs)
        lines.append(f"| {name} | {len(pairs)} | {rt:.1f} | {la:.1f} | {ov:.1f} |")
    for name, rs in modes.items():
        rps = statistics.median(r["rps"] for r in rs)
        p99 = statistics.median(r["p99_ms"] for r in rs)
        lines.append(
            f"\n{name}: median {rps:.1f} req/s ({rps / target_rps:.2f} x target), "
            f"p99 {p99:.1f} ms ({p99 / target_p99:.2f} x target)"
        )
    soak_errors = sum(r["non_2xx"] for r in soak)
    lines += [
        "",
        f"RSS over {total} runs (long-lived launchers, {len(soak)} wrk rounds, "
        f"{soak_errors} non-2xx): manager {rss_before} KiB before, {rss_after} KiB after; "
        f"launchers {sorted(workers_before.values())} KiB before, "
        f"{sorted(v for v in workers_after.values() if v)} KiB after "
        "(a launcher whose run was cancelled when wrk stopped mid-request is replaced on the "
        "next request)",
        "manager RSS by runs done: "
        + ", ".join(f"{n}: {kib} KiB" for n, kib in checkpoints),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.path.join(ROOT, "benches/results", time.strftime("server-load-%Y%m%d-%H%M%S.md"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print("written to", out)


if __name__ == "__main__":
    main()
