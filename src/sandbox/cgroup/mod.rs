//! cgroup limits and accounting for one run, on cgroup v1 (hybrid) and v2 hosts.
//!
//! A [`CgroupDriver`] is created once per host (it knows where the hierarchies are mounted
//! and which controllers are writable); for each run it creates a [`RunCgroup`] under
//! `<base>/kakoi/run-<launcher pid>-<launcher start time>-<n>`. The filesystem roots are
//! parameters so unit tests drive both versions against a fake cgroupfs in a temp dir.
//!
//! Hot path: v2 hands a directory fd to `clone3(CLONE_INTO_CGROUP)` so the child is born in
//! its cgroup; v1 has no such thing, so the parent attaches the child while the child builds
//! its root filesystem (the attach waits for an RCU grace period on v1, milliseconds, and
//! overlapping hides it).

use std::os::fd::BorrowedFd;
use std::path::PathBuf;

/// Which cgroup version the driver manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// Legacy or hybrid hierarchy: one mount per controller.
    V1,
    /// Unified hierarchy.
    V2,
}

/// Limits applied to one run's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory limit in bytes; swap is limited to zero where the host accounts swap.
    pub memory_bytes: u64,
    /// Maximum number of tasks (processes and threads).
    pub pids: u64,
    /// CPU bandwidth in thousandths of a core (1000 = one core).
    pub cpu_millicores: u64,
}

/// What the kernel accounted for one run, read just before the cgroup is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Peak memory usage (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub peak_memory_bytes: Option<u64>,
    /// Number of OOM kills inside the cgroup.
    pub oom_kills: u64,
    /// Whether the memory limit was hit at least once (v1 `failcnt`, v2 `max` event).
    pub memory_limit_hit: bool,
    /// CPU time in user mode, microseconds (v2 `cpu.stat`; v1 only if cpuacct is managed).
    pub cpu_user_usec: Option<u64>,
    /// CPU time in kernel mode, microseconds.
    pub cpu_system_usec: Option<u64>,
    /// Peak number of tasks (v2 `pids.peak` where the kernel has it).
    pub pids_peak: Option<u64>,
    /// Number of times the pids limit refused a fork (`pids.events` max).
    pub pids_limit_hit: u64,
}

/// Errors of the cgroup layer; every variant names the path it was working on.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Creating a cgroup directory failed.
    #[error("cannot create cgroup {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing a control file failed.
    #[error("cannot write {value:?} to {path}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a control file failed.
    #[error("cannot read {path}")]
    Read {
        /// The control file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Removing a cgroup directory failed.
    #[error("cannot remove cgroup {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No usable cgroup hierarchy was found.
    #[error("no writable cgroup hierarchy: {reason}")]
    Unavailable {
        /// Why, in words a user can act on.
        reason: String,
    },
}

/// A host's cgroup setup: created once, shared by every run.
pub trait CgroupDriver: Send + Sync + std::fmt::Debug {
    /// The hierarchy version this driver writes to.
    fn version(&self) -> CgroupVersion;
    /// Controllers that runs get (for example `memory`, `pids`, `cpu`).
    fn controllers(&self) -> Vec<String>;
    /// Create the cgroup of one run with its limits applied.
    fn create(&self, limits: &CgroupLimits) -> Result<Box<dyn RunCgroup>, CgroupError>;
    /// Kill and remove cgroups left by kakoi processes that no longer exist; returns how many.
    fn cleanup_stale(&self) -> Result<usize, CgroupError>;
}

/// The cgroup of one run. Dropping it without [`RunCgroup::destroy`] must still remove it.
pub trait RunCgroup: Send + std::fmt::Debug {
    /// Directory fd for `clone3(CLONE_INTO_CGROUP)` (v2 only).
    fn clone_into_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Move a process into this cgroup (every hierarchy on v1).
    fn attach(&self, pid: i32) -> Result<(), CgroupError>;
    /// Read the accounting; missing files give `None` fields, never an error.
    fn stats(&self) -> CgroupStats;
    /// SIGKILL every process in the cgroup (v2 `cgroup.kill`, else a loop over `cgroup.procs`).
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Kill what is left, wait until empty, and remove the directories.
    fn destroy(self: Box<Self>) -> Result<(), CgroupError>;
    /// Human-readable path (for diagnostics and the result's `isolation` object).
    fn path(&self) -> String;
}

/// How to find the host's cgroup hierarchy.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// Root of procfs (`/proc`).
    pub proc_root: PathBuf,
    /// Name of kakoi's parent cgroup (`kakoi`).
    pub base_name: String,
    /// Force a version instead of auto-detecting.
    pub prefer: Option<CgroupVersion>,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            proc_root: "/proc".into(),
            base_name: "kakoi".into(),
            prefer: None,
        }
    }
}

/// Find a usable cgroup hierarchy (placeholder until the drivers land).
pub fn detect(_options: &DetectOptions) -> Result<Box<dyn CgroupDriver>, CgroupError> {
    Err(CgroupError::Unavailable {
        reason: "cgroup drivers are not built yet".into(),
    })
}
