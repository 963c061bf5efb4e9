#!/usr/bin/env python3
"""Compare launch latency: bare python vs bubblewrap vs kakoi (vs docker).

Everything runs in ONE process and the variants are interleaved round-robin per
iteration (the order is rotated every iteration), so machine noise hits every
variant alike. Each sample is `time.perf_counter_ns()` around `subprocess.run`.

Stdlib only. Usage (from the repository root, as root, after `cargo build --release`):

    python3 benches/compare.py                       # 200 runs, workload `pass`
    python3 benches/compare.py --runs 500 --workloads pass,hello
    python3 benches/compare.py --kakoi /path/to/kakoi --docker

Writes benches/results/compare-<UTC date-time>.json, benches/results/latest.md and
benches/results/latest.svg. Exits non-zero if any variant fails to run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PYTHON = "/usr/bin/python3.11"
WORKLOADS = {
    "pass": "pass",
    "hello": 'print("hello")',
}
# Issue 2 targets, relative to bare python.
TARGET_MEDIAN = 1.15
TARGET_P95 = 1.30

BWRAP_ARGS = [
    "bwrap",
    "--unshare-all",
    "--die-with-parent",
    "--new-session",
    "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64",
    "--symlink", "usr/bin", "/bin",
    "--proc", "/proc",
    "--dev", "/dev",
    "--tmpfs", "/tmp",
]


# A warm launcher (a long-lived single-threaded process reusing one `Sandbox`, as a server
# runs it): `examples/embed --serve` reads one JSON argv per line and answers one line per
# run. Its samples are the round trip of one request.
WARM = "@warm"


class Warm:
    """A persistent `embed --serve` process."""

    def __init__(self, embed: str, mode: str):
        flags = {"cgroup": [], "nocgroup": ["--no-cgroup"], "prewarm": ["--prewarm"]}[mode]
        argv = [embed, "--serve"] + flags
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0)

    def run(self, argv: list[str]) -> tuple[int, str]:
        line = (json.dumps(argv) + "\n").encode()
        t0 = time.perf_counter_ns()
        self.proc.stdin.write(line)
        reply = self.proc.stdout.readline()
        t1 = time.perf_counter_ns()
        return t1 - t0, reply.decode()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


WARM_PROCS: dict[str, Warm] = {}


def variants(kakoi: str, docker: str | None, code: str,
             embed: str | None = None,
             extra: dict[str, str] | None = None) -> dict[str, list[str]]:
    py = [PYTHON, "-c", code]
    out = {
        "bare": py,
        "bwrap": BWRAP_ARGS + py,
        "kakoi": [kakoi, "exec", "--"] + py,
        "kakoi-nocg": [kakoi, "exec", "--no-cgroup", "--"] + py,
    }
    for name, binary in (extra or {}).items():
        out[name] = [binary, "exec", "--"] + py
        out[f"{name}-nocg"] = [binary, "exec", "--no-cgroup", "--"] + py
    if embed:
        out["kakoi-warm"] = [WARM, embed, "cgroup"] + py
        out["kakoi-warm-prewarm"] = [WARM, embed, "prewarm"] + py
        out["kakoi-warm-nocg"] = [WARM, embed, "nocgroup"] + py
    if docker:
        # python:3.11-slim's interpreter lives at /usr/local/bin/python3.11.
        out["docker"] = [docker, "run", "--rm", "--network", "none", "python:3.11-slim",
                         "python3.11", "-c", code]
    return out


def percentile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (same as numpy's default), q in [0, 100]."""
    if not sorted_xs:
        return float("nan")
    k = (len(sorted_xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return sorted_xs[lo]
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def summarize(samples_ms: list[float]) -> dict[str, float]:
    xs = sorted(samples_ms)
    return {
        "n": len(xs),
        "min": xs[0],
        "median": statistics.median(xs),
        "p95": percentile(xs, 95),
        "p99": percentile(xs, 99),
        "max": xs[-1],
        "mean": statistics.fmean(xs),
        "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0,
    }


def run_once(argv: list[str]) -> tuple[int, subprocess.CompletedProcess]:
    if argv and argv[0] == WARM:
        _, embed, mode, *payload = argv
        key = f"{embed}/{mode}"
        if key not in WARM_PROCS:
            WARM_PROCS[key] = Warm(embed, mode)
        ns, reply = WARM_PROCS[key].run(payload)
        try:
            r = json.loads(reply)
            code = 0 if r.get("status") == "ok" else 1
            out = r.get("stdout", "").encode()
            err = (r.get("stderr", "") or json.dumps(r)).encode() if code else b""
        except ValueError:
            code, out, err = 1, b"", f"no reply from the warm launcher: {reply!r}".encode()
        return ns, subprocess.CompletedProcess(argv, code, out, err)
    t0 = time.perf_counter_ns()
    cp = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    t1 = time.perf_counter_ns()
    return t1 - t0, cp


def check(name: str, argv: list[str], expect_stdout: bytes | None) -> str | None:
    """Run once; return an error text if it fails."""
    try:
        _, cp = run_once(argv)
    except OSError as e:
        return f"{name}: cannot start {argv[0]!r}: {e}"
    if cp.returncode != 0:
        return (f"{name}: exit code {cp.returncode}\n  argv: {' '.join(argv)}\n"
                f"  stderr:\n{cp.stderr.decode(errors='replace')}")
    if expect_stdout is not None and cp.stdout != expect_stdout:
        return f"{name}: unexpected stdout {cp.stdout!r} (wanted {expect_stdout!r})"
    return None


# ---------------------------------------------------------------- host facts

def host_facts(kakoi: str) -> dict:
    facts: dict = {
        "kernel": platform.release(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "python_of_script": sys.version.split()[0],
        "payload_python": PYTHON,
        "loadavg_start": os.getloadavg(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cg_mounts = []
    favor = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            fstype, _src, superopts = (post.split() + ["", "", ""])[:3]
            if fstype not in ("cgroup", "cgroup2"):
                continue
            mnt = {"mountpoint": fields[4], "fstype": fstype,
                   "mount_opts": fields[5], "super_opts": superopts}
            cg_mounts.append(mnt)
            if "favordynmods" in fields[5] or "favordynmods" in superopts:
                favor.append(fields[4])
    except OSError:
        pass
    facts["cgroup_mounts"] = cg_mounts
    facts["cgroup_v1_mounted"] = any(m["fstype"] == "cgroup" for m in cg_mounts)
    facts["favordynmods_mounts"] = favor
    facts["favordynmods"] = bool(favor)
    try:
        facts["kakoi_version"] = subprocess.run(
            [kakoi, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        facts["kakoi_version"] = None
    try:
        facts["bwrap_version"] = subprocess.run(
            ["bwrap", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        facts["bwrap_version"] = None
    try:
        facts["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            timeout=10, cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        facts["git_commit"] = None
    return facts


def kakoi_timings(kakoi: str, n: int, extra: list[str]) -> dict | None:
    """Median of kakoi's own `timings` (from --json) over n runs of /bin/true."""
    acc: dict[str, list[float]] = {}
    for _ in range(n):
        cp = subprocess.run([kakoi, "exec", "--json", *extra, "--", "/bin/true"],
                            capture_output=True)
        try:
            t = json.loads(cp.stdout)["timings"]
        except (ValueError, KeyError, TypeError):
            return None
        for k, v in t.items():
            if isinstance(v, (int, float)):
                acc.setdefault(k, []).append(float(v))
    return {k: statistics.median(v) for k, v in acc.items()}


def docker_available(docker_bin: str) -> tuple[bool, str]:
    try:
        cp = subprocess.run([docker_bin, "info", "--format", "{{.ServerVersion}}"],
                            capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"docker: {e}"
    if cp.returncode != 0:
        return False, f"docker daemon not answering: {cp.stderr.strip()[:200]}"
    img = subprocess.run([docker_bin, "image", "inspect", "python:3.11-slim"],
                         capture_output=True, text=True, timeout=30)
    if img.returncode != 0:
        return False, "docker image python:3.11-slim not present (docker pull python:3.11-slim)"
    return True, f"docker server {cp.stdout.strip()}"


# ---------------------------------------------------------------- output

def fmt_table(results: dict, facts: dict, runs: int) -> str:
    lines = []
    lines.append("# kakoi launch comparison")
    lines.append("")
    lines.append(f"- date (UTC): {facts['date']}")
    lines.append(f"- kernel: {facts['kernel']}; CPUs: {facts['cpu_count']}"
                 f" ({facts.get('cpu_model', '?')}); load at start: "
                 f"{', '.join(f'{x:.2f}' for x in facts['loadavg_start'])}")
    lines.append(f"- kakoi: {facts.get('kakoi_version')} (git {facts.get('git_commit')}); "
                 f"{facts.get('bwrap_version')}")
    lines.append(f"- cgroup v1 mounted: {'yes (hybrid)' if facts['cgroup_v1_mounted'] else 'no'}")
    if facts["favordynmods"]:
        lines.append("- **favordynmods: YES** on " + ", ".join(facts["favordynmods_mounts"])
                     + " — this makes cgroup attach (migration) cheap; numbers with a cgroup"
                       " are NOT representative of a default-mounted host.")
    else:
        lines.append("- favordynmods: no cgroup mount in /proc/self/mountinfo has it"
                     " (default: cgroup attach pays the threadgroup rwsem/RCU sync cost)")
    la = facts["loadavg_start"][0]
    if la > (facts["cpu_count"] or 1):
        lines.append(f"- **noisy host**: 1-min load {la:.2f} (start) / "
                     f"{facts.get('loadavg_end', [float('nan')])[0]:.2f} (end) on "
                     f"{facts['cpu_count']} CPUs — tails (p95/p99) are inflated by other load")
    lines.append(f"- {runs} runs per variant, interleaved round-robin in one process;"
                 " time = perf_counter_ns around subprocess.run")
    lines.append(f"- targets (issue 2): kakoi median ≤ {TARGET_MEDIAN}× bare,"
                 f" p95 ≤ {TARGET_P95}× bare")
    lines.append("")
    for wl, res in results.items():
        lines.append(f"## workload `{wl}`: `python3.11 -c '{WORKLOADS[wl]}'`")
        lines.append("")
        lines.append("| variant | median ms | p95 ms | p99 ms | mean ms | max ms |"
                     " median / bare | p95 / bare | target |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        bare = res["bare"]["stats"]
        for name, r in res.items():
            s = r["stats"]
            rm = s["median"] / bare["median"]
            rp = s["p95"] / bare["p95"]
            if name.startswith("kakoi"):
                ok = rm <= TARGET_MEDIAN and rp <= TARGET_P95
                tgt = "met" if ok else "**missed**"
            else:
                tgt = ""
            lines.append(f"| {name} | {s['median']:.2f} | {s['p95']:.2f} | {s['p99']:.2f} |"
                         f" {s['mean']:.2f} | {s['max']:.2f} | {rm:.2f}× | {rp:.2f}× | {tgt} |")
        lines.append("")
    if facts.get("kakoi_timings"):
        lines.append("## kakoi's own timings (`--json`, median of runs of /bin/true)")
        lines.append("")
        lines.append("| mode | " + " | ".join(f"{k}" for k in
                                               next(iter(facts["kakoi_timings"].values()))) + " |")
        lines.append("|---|" + "---:|" * len(next(iter(facts["kakoi_timings"].values()))))
        for mode, t in facts["kakoi_timings"].items():
            if t:
                lines.append(f"| {mode} | " + " | ".join(f"{v:.2f}" for v in t.values()) + " |")
        lines.append("")
    for note in facts.get("notes", []):
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_plot(results: dict, facts: dict) -> str:
    """Horizontal bars = median, whisker to p95 (tick at p99), one panel per workload."""
    rows = [(wl, name, r["stats"]) for wl, res in results.items() for name, r in res.items()]
    # Scale to the largest non-docker p95: docker (~200 ms) and p99 tails would squash the
    # medians; anything beyond the axis is clipped and marked with ">".
    non_docker = [s for _, n, s in rows if n != "docker"]
    xmax = max(s["p95"] for s in non_docker) * 1.08
    left, right, top, row_h = 110, 250, 60, 26
    width = 960
    plot_w = width - left - right
    height = top + row_h * len(rows) + 20 * len(results) + 60
    colors = {"bare": "#6b7280", "bwrap": "#d97706", "kakoi": "#2563eb",
              "kakoi-nocg": "#60a5fa", "kakoi-warm": "#059669",
              "kakoi-warm-prewarm": "#10b981",
              "kakoi-warm-nocg": "#34d399", "docker": "#9333ea"}

    def x(v: float) -> float:
        return left + plot_w * min(v, xmax) / xmax

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
           f' viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14" font-weight="bold">kakoi launch latency'
           f' (bar = median, whisker = p95, tick = p99; ms)</text>',
           f'<text x="{left}" y="38" fill="#444">{esc(facts["date"])} · kernel '
           f'{esc(facts["kernel"])} · {facts["cpu_count"]} CPUs · favordynmods: '
           f'{"YES" if facts["favordynmods"] else "no"} · n={facts["runs"]}</text>']
    # grid
    step = 1.0
    for cand in (1, 2, 5, 10, 20, 50):
        if xmax / cand <= 12:
            step = cand
            break
    y_end = height - 40
    v = 0.0
    while v <= xmax:
        out.append(f'<line x1="{x(v):.1f}" y1="{top - 8}" x2="{x(v):.1f}" y2="{y_end}"'
                   f' stroke="#e5e7eb"/>')
        out.append(f'<text x="{x(v):.1f}" y="{y_end + 14}" text-anchor="middle"'
                   f' fill="#444">{v:g}</text>')
        v += step
    y = top
    for wl, res in results.items():
        out.append(f'<text x="8" y="{y + 4}" font-weight="bold">workload: {esc(wl)}</text>')
        y += 12
        bare_med = res["bare"]["stats"]["median"]
        for name, r in res.items():
            s = r["stats"]
            c = colors.get(name, "#111")
            out.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end">{esc(name)}</text>')
            out.append(f'<rect x="{left}" y="{y + 4}" width="{x(s["median"]) - left:.1f}"'
                       f' height="{row_h - 10}" fill="{c}" opacity="0.85"/>')
            cy = y + 4 + (row_h - 10) / 2
            out.append(f'<line x1="{x(s["median"]):.1f}" y1="{cy}" x2="{x(s["p95"]):.1f}"'
                       f' y2="{cy}" stroke="#111" stroke-width="1.5"/>')
            out.append(f'<line x1="{x(s["p95"]):.1f}" y1="{cy - 6}" x2="{x(s["p95"]):.1f}"'
                       f' y2="{cy + 6}" stroke="#111" stroke-width="1.5"/>')
            out.append(f'<line x1="{x(s["p99"]):.1f}" y1="{cy - 3}" x2="{x(s["p99"]):.1f}"'
                       f' y2="{cy + 3}" stroke="#b91c1c" stroke-width="1.5"/>')
            if s["p99"] > xmax:
                out.append(f'<text x="{left + plot_w + 2}" y="{cy + 4}" fill="#b91c1c">&gt;</text>')
            label = (f'med {s["median"]:.2f} · p95 {s["p95"]:.2f} · p99 {s["p99"]:.1f} ms'
                     f' · {s["median"] / bare_med:.2f}×')
            lx = left + plot_w + 14
            out.append(f'<text x="{lx:.1f}" y="{y + 14}" fill="#111">{esc(label)}</text>')
            y += row_h
        # target line: 1.15 × bare median
        tx = x(bare_med * TARGET_MEDIAN)
        out.append(f'<line x1="{tx:.1f}" y1="{y - row_h * len(res) - 2}" x2="{tx:.1f}"'
                   f' y2="{y}" stroke="#16a34a" stroke-dasharray="4 3"/>')
        y += 8
    out.append(f'<text x="{left}" y="{height - 8}" fill="#16a34a">dashed green: target'
               f' {TARGET_MEDIAN}× bare median</text>')
    out.append(f'<text x="{left + 260}" y="{height - 8}" fill="#b91c1c">red tick: p99'
               f' ("&gt;" = beyond the axis)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- main

def main() -> int:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="iterations per variant (200)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed iterations first (5)")
    ap.add_argument("--kakoi", default=None,
                    help="kakoi binary (default: $CARGO_TARGET_DIR or target/release/kakoi)")
    ap.add_argument("--embed", default=None,
                    help="warm-launcher binary for the kakoi-warm variants (default: "
                         "target/release/examples/embed if built with "
                         "`cargo build --release --examples`; skipped otherwise)")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                    help="another kakoi binary to time as variants NAME and NAME-nocg "
                         "(for example a static build: kakoi-static=PATH)")
    ap.add_argument("--workloads", default="pass", help="comma list of: pass,hello")
    ap.add_argument("--docker", action="store_true", help="also time docker run (if a daemon answers)")
    ap.add_argument("--variants", default=None,
                    help="comma list to restrict to (bare is always included)")
    ap.add_argument("--out", default=str(root / "benches" / "results"), help="results dir")
    ap.add_argument("--no-write", action="store_true", help="print only, write no files")
    args = ap.parse_args()

    kakoi = args.kakoi
    if kakoi is None:
        td = os.environ.get("CARGO_TARGET_DIR")
        kakoi = str(Path(td) / "release" / "kakoi") if td else str(root / "target/release/kakoi")
    if not os.access(kakoi, os.X_OK):
        print(f"error: kakoi binary not found at {kakoi} (cargo build --release, or --kakoi)",
              file=sys.stderr)
        return 2
    embed = args.embed
    if embed is None:
        td = os.environ.get("CARGO_TARGET_DIR")
        guess = (Path(td) if td else root / "target") / "release" / "examples" / "embed"
        embed = str(guess) if os.access(guess, os.X_OK) else None
    extra = {}
    for item in args.extra:
        name, sep, path = item.partition("=")
        if not sep or not name.startswith("kakoi") or not os.access(path, os.X_OK):
            print(f"error: --extra {item!r}: expected kakoi-NAME=EXECUTABLE", file=sys.stderr)
            return 2
        extra[name] = path
    wls = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in wls:
        if w not in WORKLOADS:
            print(f"error: unknown workload {w!r} (known: {', '.join(WORKLOADS)})", file=sys.stderr)
            return 2

    notes: list[str] = []
    if embed is None:
        notes.append("kakoi-warm variants skipped: no examples/embed binary "
                     "(cargo build --release --examples, or --embed PATH)")
    docker_bin = None
    if args.docker:
        d = shutil.which("docker")
        if d is None:
            notes.append("--docker given but no docker binary; skipped")
        else:
            ok, why = docker_available(d)
            if ok:
                docker_bin = d
            else:
                notes.append(f"--docker given but skipped: {why}")
    for n in notes:
        print(f"note: {n}")
    if shutil.which("bwrap") is None:
        print("error: bwrap not installed (apt-get install -y bubblewrap)", file=sys.stderr)
        return 2

    # Build the job list and check that everything runs before timing anything.
    jobs: list[tuple[str, str, list[str]]] = []
    for wl in wls:
        for name, argv in variants(kakoi, docker_bin, WORKLOADS[wl], embed, extra).items():
            if args.variants and name != "bare" and name not in args.variants.split(","):
                continue
            jobs.append((wl, name, argv))
    failures = []
    for wl, name, argv in jobs:
        want = b"hello\n" if wl == "hello" else b""
        err = check(f"{name}/{wl}", argv, want)
        if err:
            failures.append(err)
    if failures:
        for f in failures:
            print("FAILED " + f, file=sys.stderr)
        return 1

    samples: dict[tuple[str, str], list[float]] = {(wl, n): [] for wl, n, _ in jobs}
    for _ in range(args.warmup):
        for _wl, _n, argv in jobs:
            run_once(argv)
    failed: dict[tuple[str, str], str] = {}
    for i in range(args.runs):
        # Rotate the starting point so no variant always runs right after another.
        k = i % len(jobs)
        for wl, name, argv in jobs[k:] + jobs[:k]:
            ns, cp = run_once(argv)
            if cp.returncode != 0 and (wl, name) not in failed:
                failed[(wl, name)] = (f"iteration {i}: exit {cp.returncode}\n"
                                      + cp.stderr.decode(errors="replace"))
            samples[(wl, name)].append(ns / 1e6)
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{args.runs}", file=sys.stderr, flush=True)

    for warm in WARM_PROCS.values():
        warm.close()
    facts = host_facts(kakoi)
    facts["loadavg_end"] = os.getloadavg()
    facts["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    facts["runs"] = args.runs
    facts["kakoi_path"] = kakoi
    facts["argv"] = {f"{n}/{wl}": a for wl, n, a in jobs}
    facts["kakoi_timings"] = {
        "kakoi": kakoi_timings(kakoi, 30, []),
        "kakoi-nocg": kakoi_timings(kakoi, 30, ["--no-cgroup"]),
    }
    facts["notes"] = notes + [
        "kakoi timings.setup_ms is kakoi's own figure; compare with the wall time above",
    ]

    results: dict = {}
    for wl, name, _ in jobs:
        results.setdefault(wl, {})[name] = {
            "stats": summarize(samples[(wl, name)]),
            "samples_ms": [round(v, 4) for v in samples[(wl, name)]],
        }
    for wl, res in results.items():
        bare = res["bare"]["stats"]
        for name, r in res.items():
            r["ratio_median"] = r["stats"]["median"] / bare["median"]
            r["ratio_p95"] = r["stats"]["p95"] / bare["p95"]
            if name.startswith("kakoi"):
                r["target_met"] = (r["ratio_median"] <= TARGET_MEDIAN
                                   and r["ratio_p95"] <= TARGET_P95)

    md = fmt_table(results, facts, args.runs)
    print(md)
    if not args.no_write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        doc = {"facts": facts, "targets": {"median": TARGET_MEDIAN, "p95": TARGET_P95},
               "results": results}
        (out / f"compare-{stamp}.json").write_text(json.dumps(doc, indent=1) + "\n")
        (out / "latest.md").write_text(md)
        (out / "latest.svg").write_text(svg_plot(results, facts))
        print(f"wrote {out}/compare-{stamp}.json, latest.md, latest.svg")

    if failed:
        for (wl, name), err in failed.items():
            print(f"FAILED {name}/{wl}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
