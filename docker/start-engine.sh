#!/usr/bin/env bash
# Start the Docker engine for kakoi's Docker mode and packaging, idempotently: nothing
# happens when `docker info` already answers and the kakoi-systempaths runtime is registered.
# No bridge and no iptables rules: kakoi's worker containers run with --network none (or
# host), compose's user-defined network publishes on loopback through docker-proxy, and this
# machine's firewall is not ours to change.
#
# Also registers the OCI runtime `kakoi-systempaths` (docker/runtime/runc-systempaths,
# installed to /usr/local/lib/kakoi/) in /etc/docker/daemon.json: runc without Docker's
# masked /proc paths, the compose 1.x way to say `--security-opt systempaths=unconfined`
# (see README, "Packaging (Docker)"). A running engine reloads it on SIGHUP (no restart).
# The engine's log goes to ${KAKOI_DOCKERD_LOG:-/var/log/kakoi/dockerd.log}.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runtime_name=kakoi-systempaths
runtime_path=/usr/local/lib/kakoi/runc-systempaths
config=/etc/docker/daemon.json

registered() {
    docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q "\"$runtime_name\""
}

install_runtime() {
    if [ "$(id -u)" != 0 ]; then
        echo "start-engine: registering the $runtime_name runtime needs root" >&2
        return 1
    fi
    install -D -m 0755 "$here/runtime/runc-systempaths" "$runtime_path"
    mkdir -p "$(dirname "$config")"
    python3 - "$config" "$runtime_name" "$runtime_path" <<'PY'
import json, os, sys
path, name, binary = sys.argv[1:4]
config = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    config = json.loads(text) if text else {}
runtimes = config.setdefault("runtimes", {})
if runtimes.get(name, {}).get("path") != binary:
    runtimes[name] = {"path": binary}
    tmp = path + ".kakoi"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
PY
}

if docker info >/dev/null 2>&1; then
    if registered && cmp -s "$here/runtime/runc-systempaths" "$runtime_path"; then
        exit 0
    fi
    # A changed wrapper is picked up by the next container (runc is run per container).
    install_runtime
    if registered; then
        exit 0
    fi
    pid=$(pidof dockerd || true)
    if [ -z "$pid" ]; then
        echo "start-engine: the engine answers but no local dockerd runs; register $runtime_name in its daemon.json yourself" >&2
        exit 1
    fi
    kill -HUP $pid
    for _ in $(seq 1 40); do
        if registered; then
            echo "start-engine: registered the $runtime_name runtime (dockerd reloaded)" >&2
            exit 0
        fi
        sleep 0.25
    done
    echo "start-engine: dockerd did not pick up the $runtime_name runtime from $config" >&2
    exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "start-engine: dockerd is not installed (apt-get install docker.io)" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "start-engine: starting dockerd needs root" >&2
    exit 1
fi
install_runtime
log=${KAKOI_DOCKERD_LOG:-/var/log/kakoi/dockerd.log}
mkdir -p "$(dirname "$log")"
# setsid + nohup: the engine outlives this script and the CI step that ran it.
setsid nohup dockerd --bridge=none --iptables=false >>"$log" 2>&1 </dev/null &
for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then
        echo "start-engine: dockerd is up (log: $log)" >&2
        exit 0
    fi
    sleep 0.5
done
echo "start-engine: dockerd did not answer within 60 s; the end of $log:" >&2
tail -n 30 "$log" >&2 || true
exit 1
