#!/usr/bin/env python3
"""`import numpy` inside the kakoi sandbox vs outside it, with the same env.

Builds (or reuses) the env of `numpy` in a data directory, then alternates, N times each:

  outside: <env>/venv/bin/python prog.py            (same env, same thread variables)
  inside:  kakoi run -r req --data-dir D prog.py    (read-only env bind, no network, cgroup)

prog.py times `import numpy` in-process with perf_counter, so the figure is the import
itself (reading precompiled .pyc and extension modules through the sandbox's mounts), not
the launch. The wall time of the whole process is reported too, for context.

Usage: python3 benches/env_import.py [--runs 30] [--kakoi target/release/kakoi]
                                     [--data-dir /var/tmp/kakoi-bench-env] [--module numpy]
Needs root (or working user namespaces) and PyPI for the first build. Stdlib only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROG = """
import time
t = time.perf_counter()
import {module}
print(time.perf_counter() - t)
"""


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "..", "target"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--kakoi", default=os.path.join(target, "release", "kakoi"))
    ap.add_argument("--data-dir", default="/var/tmp/kakoi-bench-env")
    ap.add_argument("--module", default="numpy")
    args = ap.parse_args()

    work = tempfile.mkdtemp()
    req = os.path.join(work, "requirements.txt")
    prog = os.path.join(work, "prog.py")
    with open(req, "w") as f:
        f.write(args.module + "\n")
    with open(prog, "w") as f:
        f.write(PROG.format(module=args.module))

    build = subprocess.run(
        [args.kakoi, "env", "build", "--json", "--quiet", "-r", req, "--data-dir", args.data_dir],
        capture_output=True, text=True)
    if build.returncode != 0:
        sys.exit(f"env build failed:\n{build.stdout}\n{build.stderr}")
    info = json.loads(build.stdout)["info"]
    python = info["python"]
    # The variables `kakoi run` sets for a 1-core run, so both sides start the same pools.
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", NUMEXPR_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    inside_cmd = [args.kakoi, "run", "--json", "-r", req, "--data-dir", args.data_dir,
                  "--memory", "1G", prog]
    outside_cmd = [python, prog]

    def outside():
        t = time.perf_counter()
        out = subprocess.run(outside_cmd, capture_output=True, text=True, env=env, check=True)
        return float(out.stdout), time.perf_counter() - t

    def inside():
        t = time.perf_counter()
        out = subprocess.run(inside_cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        result = json.loads(out.stdout)
        if result["status"] != "ok" or not result["env"]["cache_hit"]:
            sys.exit(f"sandbox run failed: {out.stdout}")
        return float(result["stdout"]), wall

    outside(), inside()  # warm the page cache for both
    samples = {"outside": [], "inside": []}
    for _ in range(args.runs):
        samples["outside"].append(outside())
        samples["inside"].append(inside())

    def med(xs):
        return statistics.median(xs) * 1000

    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"import {args.module} ({info['packages']}), {args.runs} interleaved runs, "
          f"load {' '.join(load)}")
    print(f"{'':8} {'import median ms':>17} {'import p90 ms':>14} {'process median ms':>18}")
    for name, xs in samples.items():
        imports = sorted(x[0] for x in xs)
        p90 = imports[int(0.9 * (len(imports) - 1))] * 1000
        print(f"{name:8} {med(imports):17.1f} {p90:14.1f} {med([x[1] for x in xs]):18.1f}")
    ratio = med([x[0] for x in samples["inside"]]) / med([x[0] for x in samples["outside"]])
    print(f"inside / outside (import): {ratio:.3f}x  (target <= 1.1x)")


if __name__ == "__main__":
    main()
