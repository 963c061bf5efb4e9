#!/usr/bin/env bash
# Start the Docker engine for kakoi's Docker mode, idempotently: nothing happens when
# `docker info` already answers. No bridge and no iptables rules: kakoi's containers run with
# --network none (or host), and this machine's firewall is not ours to change.
# The engine's log goes to ${KAKOI_DOCKERD_LOG:-/var/log/kakoi/dockerd.log}.
set -euo pipefail

if docker info >/dev/null 2>&1; then
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "start-engine: dockerd is not installed (apt-get install docker.io)" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "start-engine: starting dockerd needs root" >&2
    exit 1
fi
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
