//! Peak memory and CPU time of a container, read from a per-run parent cgroup.
//!
//! The Engine API only reports memory and CPU through `/containers/{id}/stats`, which is
//! sampled (about once a second) and empty once the container stopped: a short run has no
//! sample at all, and the peak of a longer one can fall between samples. So when the engine
//! uses the `cgroupfs` cgroup driver, each container gets `CgroupParent =
//! /kakoi-docker/run-<owner>-<n>`; runc creates the container's cgroup beneath it and removes
//! only that leaf when the container goes. The parent keeps the hierarchical counters: the
//! memory high-water mark (`memory.max_usage_in_bytes` on v1, `memory.peak` on v2) and the
//! CPU time charged to every ancestor (`cpuacct.usage_user/sys` on v1, `cpu.stat` on v2).
//! kakoi reads them after the container is removed, then removes the parent.
//!
//! This needs the engine on this host (the parent must appear in our `/sys/fs/cgroup`).
//! When it does not (remote engine, `systemd` driver), the figures are reported as
//! unavailable rather than guessed.

use std::path::{Path, PathBuf};

use super::owner::Owner;

/// Directory under each cgroup hierarchy that holds the per-run parents.
pub const PARENT_BASE: &str = "kakoi-docker";

/// What the parent cgroup recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Memory high-water mark in bytes.
    pub peak_memory_bytes: Option<u64>,
    /// User CPU time in microseconds.
    pub cpu_user_usec: Option<u64>,
    /// System CPU time in microseconds.
    pub cpu_system_usec: Option<u64>,
}

/// The per-run parent cgroup.
#[derive(Debug, Clone)]
pub struct RunParent {
    root: PathBuf,
    name: String,
}

impl RunParent {
    /// The parent for run number `n` of `owner`, under the cgroup root `root`
    /// (`/sys/fs/cgroup`).
    pub fn new(root: &Path, owner: &Owner, n: u64) -> RunParent {
        RunParent {
            root: root.to_owned(),
            name: format!("run-{}.{}-{n}", owner.pid, owner.start),
        }
    }

    /// The value for `HostConfig.CgroupParent`.
    pub fn cgroup_parent(&self) -> String {
        format!("/{PARENT_BASE}/{}", self.name)
    }

    /// Every directory of this parent on this host (one per v1 hierarchy, or the v2 one).
    fn dirs(&self) -> Vec<PathBuf> {
        parent_dirs(&self.root, &self.name)
    }

    /// Read the counters, if the parent exists on this host.
    pub fn stats(&self) -> Option<Stats> {
        let dirs = self.dirs();
        if dirs.is_empty() {
            return None;
        }
        let mut stats = Stats::default();
        for dir in &dirs {
            // v2: one directory with every controller's files.
            if let Some(peak) = read_u64(&dir.join("memory.peak")) {
                stats.peak_memory_bytes = Some(peak);
            }
            if let Ok(cpu) = std::fs::read_to_string(dir.join("cpu.stat")) {
                for line in cpu.lines() {
                    let mut kv = line.split_whitespace();
                    match (kv.next(), kv.next().and_then(|v| v.parse().ok())) {
                        (Some("user_usec"), Some(v)) => stats.cpu_user_usec = Some(v),
                        (Some("system_usec"), Some(v)) => stats.cpu_system_usec = Some(v),
                        _ => {}
                    }
                }
            }
            // v1: per-controller directories.
            if let Some(peak) = read_u64(&dir.join("memory.max_usage_in_bytes")) {
                stats.peak_memory_bytes = Some(peak);
            }
            if let Some((user, system)) = cpuacct_split(dir) {
                stats.cpu_user_usec = Some(user);
                stats.cpu_system_usec = Some(system);
            }
        }
        Some(stats)
    }

    /// Remove the parent from every hierarchy (after the container is removed; a directory
    /// that still holds a cgroup is left and logged).
    pub fn remove(&self) {
        for dir in self.dirs() {
            if let Err(e) = std::fs::remove_dir(&dir) {
                tracing::warn!("cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// User and system CPU time (µs) from a v1 cpuacct directory.
///
/// `cpuacct.usage` is the scheduler's exact run time; `cpuacct.usage_user` and `_sys` come
/// from tick sampling, which under load (and with steal time in a VM) can miss a fifth of
/// it. So the exact total is split in the sampled user:system proportion, as the kernel does
/// for `/proc/<pid>/stat` (`cputime_adjust`).
fn cpuacct_split(dir: &Path) -> Option<(u64, u64)> {
    let user = read_u64(&dir.join("cpuacct.usage_user"));
    let system = read_u64(&dir.join("cpuacct.usage_sys"));
    let total = read_u64(&dir.join("cpuacct.usage"));
    match (total, user, system) {
        (Some(total), Some(user), Some(system)) => {
            let sampled = u128::from(user) + u128::from(system);
            // Nothing sampled yet (a very short run): count it all as user time.
            let user_ns = (u128::from(total) * u128::from(user))
                .checked_div(sampled)
                .map_or(total, |ns| ns as u64);
            Some((user_ns / 1000, (total - user_ns.min(total)) / 1000))
        }
        (None, Some(user), Some(system)) => Some((user / 1000, system / 1000)),
        _ => None,
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `<root>/<hierarchy>/kakoi-docker/<name>` for every v1 hierarchy and
/// `<root>/kakoi-docker/<name>` on v2, where they exist.
fn parent_dirs(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let v2 = root.join(PARENT_BASE).join(name);
    if v2.is_dir() {
        out.push(v2);
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let dir = entry.path().join(PARENT_BASE).join(name);
            if dir.is_dir() {
                out.push(dir);
            }
        }
    }
    out
}

/// Remove the parents of runs whose kakoi process is gone (cgroupfs does not outlive a
/// boot, so liveness on this boot decides). Parents still holding a container's cgroup are
/// left (rmdir refuses them).
pub fn cleanup_stale(root: &Path, proc: &Path, here: &Owner) {
    let mut bases = vec![root.join(PARENT_BASE)];
    if let Ok(entries) = std::fs::read_dir(root) {
        bases.extend(entries.flatten().map(|e| e.path().join(PARENT_BASE)));
    }
    for base in bases {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(owner) = name.to_str().and_then(parse_parent_owner) else {
                continue;
            };
            let owner = Owner {
                boot_id: here.boot_id.clone(),
                ..owner
            };
            if owner.is_stale(here, proc, true) {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// Owner pid and start time of `run-<pid>.<start>-<n>`.
fn parse_parent_owner(name: &str) -> Option<Owner> {
    let rest = name.strip_prefix("run-")?;
    let (process, _n) = rest.rsplit_once('-')?;
    let (pid, start) = process.split_once('.')?;
    Some(Owner {
        pid: pid.parse().ok()?,
        start: start.parse().ok()?,
        boot_id: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            pid: 7,
            start: 99,
            boot_id: "b".into(),
        }
    }

    #[test]
    fn v1_counters_are_read_from_every_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let parent = RunParent::new(root.path(), &owner(), 3);
        assert_eq!(parent.cgroup_parent(), "/kakoi-docker/run-7.99-3");
        assert_eq!(parent.stats(), None, "no parent yet");
        let memory = root.path().join("memory/kakoi-docker/run-7.99-3");
        let cpuacct = root.path().join("cpuacct/kakoi-docker/run-7.99-3");
        std::fs::create_dir_all(&memory).unwrap();
        std::fs::create_dir_all(&cpuacct).unwrap();
        std::fs::write(memory.join("memory.max_usage_in_bytes"), "1048576\n").unwrap();
        std::fs::write(cpuacct.join("cpuacct.usage_user"), "3000000\n").unwrap();
        std::fs::write(cpuacct.join("cpuacct.usage_sys"), "1000000\n").unwrap();
        assert_eq!(
            parent.stats(),
            Some(Stats {
                peak_memory_bytes: Some(1 << 20),
                cpu_user_usec: Some(3000),
                cpu_system_usec: Some(1000),
            })
        );
        // The exact total, split 3:1 as sampled.
        std::fs::write(cpuacct.join("cpuacct.usage"), "8000000\n").unwrap();
        let stats = parent.stats().unwrap();
        assert_eq!(
            (stats.cpu_user_usec, stats.cpu_system_usec),
            (Some(6000), Some(2000))
        );
    }

    #[test]
    fn v2_counters_are_read_from_the_unified_parent() {
        let root = tempfile::tempdir().unwrap();
        let parent = RunParent::new(root.path(), &owner(), 1);
        let dir = root.path().join("kakoi-docker/run-7.99-1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.peak"), "4096\n").unwrap();
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 30\nuser_usec 20\nsystem_usec 10\n",
        )
        .unwrap();
        assert_eq!(
            parent.stats(),
            Some(Stats {
                peak_memory_bytes: Some(4096),
                cpu_user_usec: Some(20),
                cpu_system_usec: Some(10),
            })
        );
    }

    #[test]
    fn parent_names_carry_the_owner() {
        let o = parse_parent_owner("run-7.99-12").unwrap();
        assert_eq!((o.pid, o.start), (7, 99));
        assert!(parse_parent_owner("docker").is_none());
        assert!(parse_parent_owner("run-x").is_none());
    }
}
