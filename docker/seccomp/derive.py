#!/usr/bin/env python3
"""Derive docker/seccomp/kakoi-runner.json from Docker's default seccomp profile.

The runner (`kakoi serve`, `kakoi exec`) inside a container builds its own sandboxes: it
creates user, pid, net, mount, ipc, uts and cgroup namespaces, mounts the sandbox's root and
pivots into it. Docker's default profile allows those calls only to containers with
CAP_SYS_ADMIN. This script adds exactly the calls kakoi needs, unconditionally, to the
default profile and changes nothing else, so the container keeps every other restriction
(and needs no extra capability). Each addition was measured: removing any one of them makes
the sandbox fail at that step (tests/docker_compose.rs; README, "Packaging (Docker)"). `setns`
is not added: the pool of pre-made network namespaces needs a bind mount in the container's
own mount namespace (CAP_SYS_ADMIN), so inside a container every run gets a fresh one.

Source: Debian's golang-github-docker-docker-dev package (moby's
profiles/seccomp/default.json, Apache-2.0), the same version as Debian's docker.io:

    apt-get install golang-github-docker-docker-dev
    python3 docker/seccomp/derive.py [DEFAULT_JSON] > docker/seccomp/kakoi-runner.json
"""

import json
import sys

DEFAULT = "/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json"

# name -> why kakoi needs it (the native launcher, src/sandbox/).
KAKOI_NEEDS = {
    "clone": "the sandbox child is cloned with CLONE_NEWUSER|NEWPID|NEWNET|NEWNS|NEWIPC|NEWUTS|"
             "NEWCGROUP (the default profile allows clone only without namespace flags; clone3 "
             "stays ENOSYS, kakoi falls back to clone)",
    "unshare": "the child enters a new cgroup namespace (unshare(CLONE_NEWCGROUP)) once it is in "
               "its cgroup",
    "mount": "the sandbox root: a tmpfs, read-only binds of the toolchain, /proc, /dev",
    "mount_setattr": "a read-only bind is made recursively read-only in one call "
                     "(MOUNT_ATTR_RDONLY with AT_RECURSIVE)",
    "umount2": "the old root is detached after pivot_root",
    "pivot_root": "the sandbox enters its new root",
    "sethostname": "the sandbox's hostname is `sandbox` (its own uts namespace)",
}


def derive(default: dict, needs: dict) -> dict:
    profile = json.loads(json.dumps(default))
    profile["syscalls"].append({
        "names": sorted(needs),
        "action": "SCMP_ACT_ALLOW",
        "args": [],
        "comment": "kakoi: build its sandboxes without CAP_SYS_ADMIN (docker/seccomp/derive.py)",
        "includes": {},
        "excludes": {},
    })
    return profile


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    needs = dict(KAKOI_NEEDS)
    # --without NAME: leave one addition out (to measure that it is needed).
    if len(sys.argv) > 3 and sys.argv[2] == "--without":
        for name in sys.argv[3].split(","):
            needs.pop(name)
    with open(path) as f:
        default = json.load(f)
    json.dump(derive(default, needs), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
