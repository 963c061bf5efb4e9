//! cgroup limits and accounting for one run, on cgroup v1 (hybrid) and v2 hosts.
//!
//! A [`CgroupDriver`] is created once per host (it knows where the hierarchies are mounted
//! and which controllers are writable); for each run it creates a [`RunCgroup`] under
//! `<base>/kakoi/run-<launcher pid>-<launcher start time>-<n>`. The filesystem roots are
//! parameters so unit tests drive both versions against a fake cgroupfs in a temp dir.
//!
//! Hot path: v2 hands a directory fd to `clone3(CLONE_INTO_CGROUP)` so the child is born in
//! its cgroup. v1 has no such thing, and a launcher writing the child's pid to `cgroup.procs`
//! takes the global threadgroup lock, whose write side waits for an RCU grace period (10 to
//! 20 ms per run unless the hierarchy has `favordynmods`). So on v1 the launcher opens each
//! hierarchy's `tasks` file and the single-threaded child writes `0` ("this thread") to it
//! right after clone: the one migration the kernel performs without that lock. Attaching by
//! pid remains the fallback.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;

mod control;
mod host;
pub mod v1;
pub mod v2;

pub use host::{
    CgroupMount, DetectOptions, FAVORDYNMODS_NAME, FavorDynmods, HostCgroupInfo, describe_host,
    detect, enable_favordynmods,
};
pub use v1::V1Driver;
pub use v2::V2Driver;

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
    /// CPU bandwidth in thousandths of a core (1000 = one core); 0 means no CPU limit, and
    /// anything below 10 is raised to the kernel's 1 ms per 100 ms minimum.
    pub cpu_millicores: u64,
}

/// What the kernel accounted for one run, read just before the cgroup is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Peak memory usage (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub peak_memory_bytes: Option<u64>,
    /// Number of OOM kills inside the cgroup.
    pub oom_kills: u64,
    /// Whether the memory limit was hit at least once (v1 `memory.failcnt`,
    /// `memory.memsw.failcnt` or an OOM kill; v2 `max` event).
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
    /// A handle to the next run's cgroup without creating it, for a cgroup another process
    /// creates (`RunCgroup::create_planned`; the pre-warmed stub, v1). `None` where the
    /// driver does not support it. Removing the handle's cgroup works whether or not it was
    /// created.
    fn plan(&self) -> Option<Result<Box<dyn RunCgroup>, CgroupError>> {
        None
    }
    /// Kill and remove cgroups left by kakoi processes that no longer exist; returns how many.
    fn cleanup_stale(&self) -> Result<usize, CgroupError>;
}

/// The cgroup of one run. Dropping it without [`RunCgroup::destroy`] must still remove it.
pub trait RunCgroup: Send + std::fmt::Debug {
    /// Directory fd for `clone3(CLONE_INTO_CGROUP)` (v2 only).
    fn clone_into_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Move a process into this cgroup (every hierarchy on v1).
    fn attach(&self, pid: i32) -> Result<(), CgroupError>;
    /// Write-only fds (one per hierarchy) through which a *single-threaded* child moves
    /// itself in by writing `0` (v1 `tasks`: "this thread"). The kernel skips the global
    /// threadgroup lock for that one case, so there is no RCU grace period to wait for (about
    /// 0.3 ms instead of 10 to 20 ms for [`RunCgroup::attach`] on this 6.18 host). The fds
    /// carry the opener's credentials, which the kernel checks at write time. `None` where
    /// the driver has no such path (v2 clones into the cgroup instead) or a file cannot be
    /// opened (a delegation that chowned only `cgroup.procs`): the caller falls back to
    /// `attach`.
    fn open_self_move(&self) -> Option<Vec<std::os::fd::OwnedFd>> {
        None
    }
    /// Move the calling process in; it must be single-threaded (a forked stub). Uses the
    /// lock-free self-move where the driver has one, else [`RunCgroup::attach`].
    fn enter_self(&self) -> Result<(), CgroupError> {
        use std::io::Write as _;
        let Some(fds) = self.open_self_move() else {
            return self.attach(std::process::id() as i32);
        };
        for fd in fds {
            let path = PathBuf::from(format!("{}/tasks", self.path()));
            std::fs::File::from(fd)
                .write_all(b"0")
                .map_err(|source| CgroupError::Write {
                    path,
                    value: "0".into(),
                    source,
                })?;
        }
        Ok(())
    }
    /// Write new limits (for a cgroup created ahead of its run; see `SandboxConfig::prewarm`).
    fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError>;
    /// Create the directories of a handle from [`CgroupDriver::plan`] and write `limits`.
    fn create_planned(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let _ = limits;
        Err(CgroupError::Unavailable {
            reason: "this cgroup driver creates run cgroups only with create()".into(),
        })
    }
    /// Read the accounting; missing files give `None` fields, never an error.
    fn stats(&self) -> CgroupStats;
    /// SIGKILL every process in the cgroup (v2 `cgroup.kill`, else a loop over `cgroup.procs`).
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Kill what is left, wait until empty, and remove the directories.
    fn destroy(self: Box<Self>) -> Result<(), CgroupError>;
    /// Human-readable path (for diagnostics and the result's `isolation` object).
    fn path(&self) -> String;
}

/// How a new sandbox enters its run cgroup.
#[derive(Debug, Clone, Copy)]
pub enum CgroupEntry<'a> {
    /// Born in it: `clone3(CLONE_INTO_CGROUP)` with this directory fd (v2). No migration, so
    /// no wait on the cgroup threadgroup lock, and every limit holds from the first
    /// instruction.
    CloneInto(BorrowedFd<'a>),
    /// Moved in by the launcher after clone, while the child builds its root and before it is
    /// released to exec (v1, which has no `CLONE_INTO_CGROUP`).
    Migrate,
    /// The child moves itself in right after clone, through `tasks` fds the launcher opened
    /// ([`RunCgroup::open_self_move`]; v1).
    MoveSelf,
}

impl CgroupEntry<'_> {
    /// `clone_into` or `migrate`, for `isolation.cgroup.attach`.
    pub fn name(&self) -> &'static str {
        match self {
            CgroupEntry::CloneInto(_) => "clone_into",
            CgroupEntry::Migrate => "migrate",
            CgroupEntry::MoveSelf => "move_self",
        }
    }
}

/// How a sandbox enters `run`.
pub fn entry(run: &dyn RunCgroup) -> CgroupEntry<'_> {
    match run.clone_into_fd() {
        Some(fd) => CgroupEntry::CloneInto(fd),
        None => CgroupEntry::Migrate,
    }
}

#[cfg(test)]
mod tests {
    use super::control::{self, CgroupFs, RunName};
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;
    use std::time::Instant;

    /// Print `SKIP: <reason>` and fail if `KAKOI_TEST_REQUIRE` lists `capability`.
    fn skip_or_fail(capability: &str, reason: &str) {
        let required = std::env::var("KAKOI_TEST_REQUIRE").unwrap_or_default();
        if required.split(',').any(|c| c.trim() == capability) {
            panic!("KAKOI_TEST_REQUIRE has {capability} but: {reason}");
        }
        eprintln!("SKIP: {reason}");
    }

    /// The v2 path: the sandbox is cloned straight into the run directory (the fd handed to
    /// clone3 is that directory) and nothing writes `cgroup.procs`; v1 migrates.
    #[test]
    fn v2_clones_into_the_run_directory_and_v1_migrates() {
        use std::os::unix::fs::MetadataExt;
        let host = tempfile::tempdir().unwrap();
        let top = host.path();
        std::fs::write(top.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(top.join("cgroup.subtree_control"), "").unwrap();
        std::fs::write(top.join("cgroup.procs"), "").unwrap();
        for file in ["memory.max", "memory.swap.max", "pids.max", "cpu.max"] {
            std::fs::write(top.join(file), "max\n").unwrap();
        }
        let base = top.join("kakoi");
        let driver = V2Driver::with_fs(top, &base, Path::new("/proc"), CgroupFs::FAKE).unwrap();
        let limits = CgroupLimits {
            memory_bytes: 64 << 20,
            pids: 8,
            cpu_millicores: 1000,
        };
        let run = driver.create(&limits).unwrap();
        let dir = std::path::PathBuf::from(run.path());
        match entry(run.as_ref()) {
            CgroupEntry::CloneInto(fd) => {
                let by_fd = nix::sys::stat::fstat(fd).unwrap();
                let by_path = std::fs::metadata(&dir).unwrap();
                assert_eq!((by_fd.st_dev, by_fd.st_ino), (by_path.dev(), by_path.ino()));
                assert_eq!(entry(run.as_ref()).name(), "clone_into");
            }
            CgroupEntry::Migrate | CgroupEntry::MoveSelf => {
                panic!("v2 must clone into the cgroup")
            }
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            ""
        );
        run.destroy().unwrap();

        let mut mounts = BTreeMap::new();
        for hierarchy in ["memory", "pids"] {
            let mount = host.path().join("v1").join(hierarchy);
            std::fs::create_dir_all(&mount).unwrap();
            std::fs::write(mount.join("cgroup.procs"), "").unwrap();
            mounts.insert(hierarchy.to_owned(), mount);
        }
        std::fs::write(host.path().join("v1/memory/memory.limit_in_bytes"), "0").unwrap();
        std::fs::write(host.path().join("v1/memory/memory.swappiness"), "60").unwrap();
        std::fs::write(host.path().join("v1/pids/pids.max"), "max").unwrap();
        let v1 = V1Driver::with_fs(&mounts, "kakoi", Path::new("/proc"), CgroupFs::FAKE).unwrap();
        let run = v1.create(&limits).unwrap();
        assert!(matches!(entry(run.as_ref()), CgroupEntry::Migrate));
        run.destroy().unwrap();
    }

    #[test]
    fn run_names_are_unique_and_parse() {
        let names: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..250)
                            .map(|_| control::next_run_name().unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        let parsed = RunName::parse(&names[0]).unwrap();
        assert_eq!(parsed.pid, std::process::id());
        assert_eq!(parsed.start_time, control::launcher_start_time().unwrap());
        assert_eq!(parsed.to_dir_name(), names[0]);
        assert_eq!(RunName::parse("run-1-2"), None);
        assert_eq!(RunName::parse("run-1-2-3-4"), None);
        assert_eq!(RunName::parse("kakoi-1-2-3"), None);
    }

    #[test]
    fn stat_start_time_survives_odd_command_names() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615";
        assert_eq!(control::stat_start_time(stat), Some(987_654));
        assert_eq!(control::stat_start_time("42 (x) S 1"), None);
    }

    /// Directories of a fake base: ours alive, ours with another start time (pid reused),
    /// a dead pid, and an unrelated directory.
    fn populate_stale(base: &Path) -> (String, Vec<String>) {
        let pid = std::process::id();
        let start = control::launcher_start_time().unwrap();
        let alive = format!("run-{pid}-{start}-7");
        let stale = vec![
            format!("run-{pid}-{}-0", start + 1),
            "run-999999999-12345-0".to_owned(),
        ];
        for name in stale.iter().chain([&alive, &"not-a-run".to_owned()]) {
            let dir = base.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
            std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        }
        (alive, stale)
    }

    #[test]
    fn cleanup_stale_v2_removes_dead_launchers_only() {
        let host = tempfile::tempdir().unwrap();
        let top = host.path();
        std::fs::write(top.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(top.join("cgroup.subtree_control"), "cpu memory pids\n").unwrap();
        std::fs::write(top.join("cgroup.procs"), "").unwrap();
        let driver = V2Driver::with_fs(top, top, Path::new("/proc"), CgroupFs::FAKE).unwrap();
        let (alive, stale) = populate_stale(top);
        assert_eq!(driver.cleanup_stale().unwrap(), 2);
        assert!(top.join(&alive).is_dir());
        assert!(top.join("not-a-run").is_dir());
        for name in &stale {
            assert!(!top.join(name).exists(), "{name}");
        }
        assert_eq!(driver.cleanup_stale().unwrap(), 0);
    }

    #[test]
    fn cleanup_stale_v1_sweeps_every_hierarchy() {
        let host = tempfile::tempdir().unwrap();
        let mut mounts = BTreeMap::new();
        for hierarchy in ["memory", "pids", "cpu"] {
            let mount = host.path().join(hierarchy);
            std::fs::create_dir_all(&mount).unwrap();
            mounts.insert(hierarchy.to_owned(), mount);
        }
        let driver =
            V1Driver::with_fs(&mounts, "kakoi", Path::new("/proc"), CgroupFs::FAKE).unwrap();
        let (alive, stale) = populate_stale(&host.path().join("memory/kakoi"));
        // A run that only made it into the pids hierarchy before its launcher died.
        let partial = host.path().join("pids/kakoi/run-999999998-1-3");
        std::fs::create_dir_all(&partial).unwrap();
        assert_eq!(driver.cleanup_stale().unwrap(), 3);
        assert!(!partial.exists());
        assert!(host.path().join("memory/kakoi").join(&alive).is_dir());
        for name in &stale {
            assert!(!host.path().join("memory/kakoi").join(name).exists());
        }
    }

    /// On a real host (root, cgroups mounted): create a run cgroup, put a process in it, read
    /// stats, destroy it, and check that the process and the directories are gone.
    #[test]
    fn real_host_run_cgroup() {
        if !nix::unistd::geteuid().is_root() {
            return skip_or_fail("cgroup", "real cgroup test needs root");
        }
        // A base of its own so the test leaves nothing behind, not even the shared base.
        let options = DetectOptions {
            base_name: format!("kakoi-test-{}", std::process::id()),
            ..DetectOptions::default()
        };
        let info = describe_host(&options);
        let driver = match detect(&options) {
            Ok(driver) => driver,
            Err(error) => return skip_or_fail("cgroup", &format!("no usable cgroup: {error}")),
        };
        eprintln!(
            "cgroup {:?} controllers {:?} bases {:?}",
            driver.version(),
            driver.controllers(),
            info.bases
        );
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            exercise_real_run(driver.as_ref());
        }));
        drop(driver);
        for base in &info.bases {
            if let Err(error) = std::fs::remove_dir(base) {
                eprintln!("cannot remove test base {}: {error}", base.display());
            }
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        for base in &info.bases {
            assert!(!base.exists(), "{} left behind", base.display());
        }
    }

    /// On a real host: a process that outgrows the memory limit is OOM-killed inside the run
    /// cgroup, and the stats say so.
    #[test]
    fn real_host_oom_is_counted() {
        if !nix::unistd::geteuid().is_root() {
            return skip_or_fail("cgroup", "real cgroup test needs root");
        }
        let options = DetectOptions {
            base_name: format!("kakoi-test-oom-{}", std::process::id()),
            ..DetectOptions::default()
        };
        let info = describe_host(&options);
        let driver = match detect(&options) {
            Ok(driver) => driver,
            Err(error) => return skip_or_fail("cgroup", &format!("no usable cgroup: {error}")),
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let limits = CgroupLimits {
                memory_bytes: 16 << 20,
                pids: 16,
                cpu_millicores: 1000,
            };
            let run = driver.create(&limits).unwrap();
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg("read _; v=$(head -c 200000000 /dev/zero | tr '\\0' a); exit 0")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            run.attach(child.id() as i32).unwrap();
            {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"go\n").unwrap();
            }
            let status = child.wait().unwrap();
            let stats = run.stats();
            eprintln!("oom run: {status:?} {stats:?}");
            assert!(stats.oom_kills >= 1, "{stats:?}");
            assert!(stats.memory_limit_hit, "{stats:?}");
            run.destroy().unwrap();
        }));
        drop(driver);
        for base in &info.bases {
            let _ = std::fs::remove_dir(base);
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    fn exercise_real_run(driver: &dyn CgroupDriver) {
        let limits = CgroupLimits {
            memory_bytes: 64 << 20,
            pids: 16,
            cpu_millicores: 500,
        };
        // A stale run of a launcher that cannot exist, to check the sweep on the real fs.
        let started = Instant::now();
        let stale_probe = driver.create(&limits).unwrap();
        let stale_dir = PathBuf::from(stale_probe.path());
        let stale_name = stale_dir.with_file_name("run-999999999-1-0");
        std::fs::create_dir(&stale_name).unwrap();
        stale_probe.destroy().unwrap();
        assert_eq!(driver.cleanup_stale().unwrap(), 1);
        assert!(!stale_name.exists());
        eprintln!("stale sweep round trip: {:?}", started.elapsed());

        let started = Instant::now();
        let run = driver.create(&limits).unwrap();
        let created = started.elapsed();
        let dir = PathBuf::from(run.path());
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // The child waits for a line, then allocates ~4 MB so the charge lands in the run
        // cgroup (v1 does not move charges made before the attach), then sleeps.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read _; v=$(head -c 4000000 /dev/zero | tr '\\0' a); echo ready; exec sleep 30")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        run.attach(child.id() as i32).unwrap();
        let attached = started.elapsed();
        let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        let lines: Vec<&str> = membership
            .lines()
            .filter(|line| line.ends_with(&format!("/{name}")))
            .collect();
        match driver.version() {
            // One line per hierarchy (`7:cpu,cpuacct:/...` when co-mounted): every controller
            // the driver manages is named in one of the run's lines.
            CgroupVersion::V1 => {
                for controller in driver.controllers() {
                    assert!(
                        lines.iter().any(|line| line
                            .split(':')
                            .nth(1)
                            .is_some_and(|cs| cs.split(',').any(|c| c == controller))),
                        "{controller} missing in {membership}"
                    );
                }
            }
            CgroupVersion::V2 => assert_eq!(lines.len(), 1, "{membership}"),
        }
        match driver.version() {
            CgroupVersion::V1 => {
                let limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap();
                assert_eq!(limit.trim(), (64u64 << 20).to_string());
            }
            CgroupVersion::V2 => {
                let limit = std::fs::read_to_string(dir.join("memory.max")).unwrap();
                assert_eq!(limit.trim(), (64u64 << 20).to_string());
                assert!(run.clone_into_fd().is_some());
            }
        }
        {
            use std::io::{BufRead, Write};
            child.stdin.take().unwrap().write_all(b"go\n").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ready");
        }
        let stats = run.stats();
        eprintln!("stats: {stats:?}");
        assert!(
            stats.peak_memory_bytes.is_some_and(|peak| peak > 0),
            "{stats:?}"
        );
        assert_eq!(stats.oom_kills, 0);
        assert_eq!(stats.pids_limit_hit, 0);

        let started = Instant::now();
        run.destroy().unwrap();
        let destroyed = started.elapsed();
        assert!(!dir.exists(), "{} left behind", dir.display());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        eprintln!("create {created:?}, attach {attached:?}, destroy {destroyed:?}");
    }
}
