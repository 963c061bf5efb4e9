#!/usr/bin/env python3
"""First env build with kakoi vs a plain `uv pip install` of the same requirements.

Alternates, N times each, both starting from an empty uv cache (so both download):

  kakoi: kakoi env build -r req --data-dir <fresh dir with the toolchain already installed>
         (uv pip compile --no-build + uv venv + uv pip sync --no-build --link-mode hardlink,
          then python -I -S compileall, in three sandbox runs, then chown and rename into
          the store)
  uv:    uv venv v && uv pip install -r req --compile-bytecode --cache-dir <fresh>
         (the same uv binary, on the host, no sandbox)
  recipe: kakoi's exact uv commands on the host, no sandbox (to split the difference)

The toolchain bootstrap (downloading uv and ruff, once per machine) is not part of a build
and is excluded: the fresh data directories get a copy of an installed toolchain.

Usage: python3 benches/env_build.py [--runs 3] [--requirements FILE]
                                    [--kakoi target/release/kakoi]
Needs root (or working user namespaces) and PyPI. Stdlib only.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BASE = "/var/tmp"

# The compile step of src/env/uv.rs (COMPILE_PY).
COMPILE_PY = ("import compileall, py_compile, sys\n"
              "compileall.compile_dir(sys.argv[1], quiet=1, workers=0, "
              "invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "..", "target"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kakoi", default=os.path.join(target, "release", "kakoi"))
    ap.add_argument("--requirements", help="default: numpy and pandas")
    ap.add_argument("--seed-data-dir", default="/var/tmp/kakoi-bench-env",
                    help="a data dir whose toolchain is copied (bootstrapped if missing)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(dir=BASE, prefix="kakoi-bench-build-")
    os.chmod(work, 0o755)
    req = args.requirements or os.path.join(work, "requirements.txt")
    if not args.requirements:
        with open(req, "w") as f:
            f.write("numpy\npandas\n")
    tc = subprocess.run([args.kakoi, "env", "toolchain", "--json", "--data-dir", args.seed_data_dir],
                        capture_output=True, text=True)
    if tc.returncode != 0:
        sys.exit(f"toolchain: {tc.stderr}")
    tool = json.loads(tc.stdout)
    uv = tool["uv"]["path"]
    tools_dir = os.path.dirname(os.path.dirname(uv))
    python = tool["python"]["path"]

    def kakoi(i):
        data = os.path.join(work, f"k{i}")
        os.makedirs(os.path.join(data, "toolchain"))
        shutil.copytree(tools_dir, os.path.join(data, "toolchain", os.path.basename(tools_dir)))
        t = time.perf_counter()
        out = subprocess.run([args.kakoi, "env", "build", "--json", "--quiet", "-r", req,
                              "--data-dir", data], capture_output=True, text=True)
        elapsed = time.perf_counter() - t
        if out.returncode != 0 or json.loads(out.stdout)["env"]["cache_hit"]:
            sys.exit(f"kakoi build failed or hit a cache: {out.stdout}\n{out.stderr}")
        shutil.rmtree(data)
        return elapsed

    def plain(i):
        d = os.path.join(work, f"u{i}")
        os.makedirs(d)
        env = dict(os.environ, UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
        if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
            env["SSL_CERT_FILE"] = "/etc/ssl/certs/ca-certificates.crt"
        t = time.perf_counter()
        subprocess.run([uv, "venv", "-q", "--python", python, os.path.join(d, "v")],
                       env=env, check=True, capture_output=True)
        subprocess.run([uv, "pip", "install", "-q", "-r", req, "--python",
                        os.path.join(d, "v", "bin", "python"), "--compile-bytecode",
                        "--cache-dir", os.path.join(d, "cache")],
                       env=env, check=True, capture_output=True)
        elapsed = time.perf_counter() - t
        shutil.rmtree(d)
        return elapsed

    def recipe(i):
        # kakoi's own commands (src/env/uv.rs, wheel-only path), run on the host without a
        # sandbox: separates the cost of the recipe (lock with hashes, second resolution,
        # copies, hash pycs compiled apart) from the cost of the sandbox.
        d = os.path.join(work, f"r{i}")
        os.makedirs(d)
        env = dict(os.environ, UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never",
                   PYC_INVALIDATION_MODE="UNCHECKED_HASH", UV_CACHE_DIR=os.path.join(d, "cache"))
        if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
            env["SSL_CERT_FILE"] = "/etc/ssl/certs/ca-certificates.crt"
        shutil.copy(req, os.path.join(d, "requirements.in"))
        t = time.perf_counter()
        for argv in (
            [uv, "pip", "compile", "-q", "requirements.in", "-o", "requirements.lock",
             "--generate-hashes", "--python", python, "--no-build"],
            [uv, "venv", "-q", "--python", python, "venv"],
            [uv, "pip", "sync", "-q", "requirements.lock", "--python", "venv/bin/python",
             "--link-mode", "hardlink", "--require-hashes", "--no-build"],
            [python, "-I", "-S", "-c", COMPILE_PY, os.path.join(d, "venv", "lib")],
        ):
            subprocess.run(argv, cwd=d, env=env, check=True, capture_output=True)
        elapsed = time.perf_counter() - t
        shutil.rmtree(d)
        return elapsed

    samples = {"kakoi": [], "uv": [], "recipe": []}
    for i in range(args.runs):
        samples["uv"].append(plain(i))
        samples["kakoi"].append(kakoi(i))
        samples["recipe"].append(recipe(i))
        print(f"round {i + 1}: uv {samples['uv'][-1]:.2f} s, kakoi {samples['kakoi'][-1]:.2f} s, "
              f"recipe on host {samples['recipe'][-1]:.2f} s", flush=True)
    with open(req) as f:
        reqs = " ".join(f.read().split())
    shutil.rmtree(work, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"first build of [{reqs}], empty uv cache, {args.runs} interleaved rounds, "
          f"load {' '.join(load)}")
    for name, xs in samples.items():
        print(f"{name:6} median {statistics.median(xs):.2f} s  (min {min(xs):.2f}, max {max(xs):.2f})")
    ratio = statistics.median(samples["kakoi"]) / statistics.median(samples["uv"])
    print(f"kakoi / uv: {ratio:.3f}x  (target <= 1.2x)")
    ratio = statistics.median(samples["recipe"]) / statistics.median(samples["uv"])
    print(f"recipe on host / uv: {ratio:.3f}x  (the uv commands alone, no sandbox)")
    ratio = statistics.median(samples["kakoi"]) / statistics.median(samples["recipe"])
    print(f"kakoi / recipe on host: {ratio:.3f}x  (the sandbox's share)")


if __name__ == "__main__":
    main()
