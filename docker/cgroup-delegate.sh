#!/usr/bin/env bash
# Create the cgroup subtree the kakoi container (docker-compose.yml) creates its sandboxes'
# cgroups in, owned by the container's runner uid, and optionally limit all of it.
# Run as root on the host, once per boot (cgroups do not survive a reboot); idempotent.
#
#   docker/cgroup-delegate.sh [--uid 10000] [--name kakoi-serve] [--memory 4G] [--pids 1024]
#   docker/cgroup-delegate.sh [--name N] --remove  # after `docker-compose down`: rmdir the tree
#                                                  # (in every hierarchy Docker made it in)
#
# cgroup v1 (this host): for each of memory, pids, cpu, cpuacct:
#   /sys/fs/cgroup/<c>/<name>/             the container's cgroup_parent (limits go here)
#   /sys/fs/cgroup/<c>/<name>/sandboxes/   chowned to uid, mounted over /sys/fs/cgroup/<c>
# cgroup v2: /sys/fs/cgroup/<name>/sandboxes, with memory, pids and cpu enabled in the
# subtree_control of the root and of <name> (see README for the compose settings on v2).
set -euo pipefail
uid=10000
name=kakoi-serve
memory=
pids=
remove=
while [ $# -gt 0 ]; do
    case $1 in
    --uid) uid=$2; shift ;;
    --name) name=$2; shift ;;
    --memory) memory=$2; shift ;;
    --pids) pids=$2; shift ;;
    --remove) remove=1 ;;
    *) echo "cgroup-delegate: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$(id -u)" != 0 ]; then
    echo "cgroup-delegate: run as root" >&2
    exit 1
fi
bytes() { numfmt --from=iec "$1"; }

if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    top=/sys/fs/cgroup/$name
    if [ -n "$remove" ]; then
        [ ! -d "$top" ] || find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        if [ -d "$top" ]; then
            echo "cgroup-delegate: still in use (stop the container first): $top" >&2
            exit 1
        fi
        exit 0
    fi
    echo "+memory +pids +cpu" >/sys/fs/cgroup/cgroup.subtree_control
    mkdir -p "$top/sandboxes"
    echo "+memory +pids +cpu" >"$top/cgroup.subtree_control"
    chown -R "$uid:$uid" "$top/sandboxes"
    [ -z "$memory" ] || echo "$(bytes "$memory")" >"$top/memory.max"
    [ -z "$pids" ] || echo "$pids" >"$top/pids.max"
    echo "cgroup-delegate: v2: $top/sandboxes delegated to uid $uid"
    exit 0
fi

if [ -n "$remove" ]; then
    # Docker makes the container's cgroup_parent in every hierarchy (blkio, devices, ...), not
    # only in the delegated ones: remove it everywhere, deepest first. A cgroup that still
    # holds processes stays (rmdir fails with EBUSY), and then this says so and fails.
    left=
    for top in /sys/fs/cgroup/*/"$name"; do
        [ -d "$top" ] || continue
        find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        [ ! -d "$top" ] || left="$left $top"
    done
    if [ -n "$left" ]; then
        echo "cgroup-delegate: still in use (stop the container first):$left" >&2
        exit 1
    fi
    exit 0
fi
for c in memory pids cpu cpuacct; do
    base=/sys/fs/cgroup/$c
    if [ ! -d "$base" ]; then
        echo "cgroup-delegate: no cgroup v1 $c hierarchy at $base" >&2
        exit 1
    fi
    top=$base/$name
    mkdir -p "$top/sandboxes"
    # Only the subtree the container sees, never its parent: the container can raise no
    # limit set on $top.
    chown -R "$uid:$uid" "$top/sandboxes"
done
[ -z "$memory" ] || echo "$(bytes "$memory")" >"/sys/fs/cgroup/memory/$name/memory.limit_in_bytes"
[ -z "$pids" ] || echo "$pids" >"/sys/fs/cgroup/pids/$name/pids.max"
echo "cgroup-delegate: v1: /sys/fs/cgroup/{memory,pids,cpu,cpuacct}/$name/sandboxes delegated to uid $uid"
