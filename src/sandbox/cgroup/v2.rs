//! cgroup v2 (unified hierarchy): one run directory under a base kakoi owns.
//!
//! The base needs `memory`, `pids` (required) and `cpu` (when available) in its
//! `cgroup.subtree_control`, and so does every cgroup between the top kakoi may configure and
//! the base. The "no internal processes" rule (Documentation/admin-guide/cgroup-v2.rst) means a
//! non-root cgroup that enables controllers for its children cannot hold processes itself, so
//! the base must stay empty: runs live in its children only.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::control::{
    self, CgroupFs, ensure_dir, read_control, read_keyed, read_procs, read_u64, remove_cgroup,
    write_control,
};
use super::{CgroupDriver, CgroupError, CgroupLimits, CgroupStats, CgroupVersion, RunCgroup};

/// CFS period written as the second field of `cpu.max`, in microseconds.
pub const CPU_MAX_PERIOD_USEC: u64 = 100_000;

/// Controllers a run must get.
const REQUIRED: [&str; 2] = ["memory", "pids"];
/// Controllers a run gets when the host offers them.
const OPTIONAL: [&str; 1] = ["cpu"];

/// Driver for cgroup v2: creates `<base>/run-…` with limits and hands out a directory fd for
/// `clone3(CLONE_INTO_CGROUP)`.
#[derive(Debug)]
pub struct V2Driver {
    base: PathBuf,
    controllers: Vec<String>,
    proc_root: PathBuf,
    fs: CgroupFs,
}

impl V2Driver {
    /// Prepare `base` for runs. `top` is the highest cgroup kakoi may configure: the mount
    /// point when running as root, the delegated cgroup otherwise; `base` is `top` or a
    /// descendant, created if missing. Every cgroup from `top` down to `base` gets the
    /// controllers enabled in its `cgroup.subtree_control`. Fails if `memory` or `pids` is not
    /// available, or if `base` holds processes. `proc_root` (normally `/proc`) is where
    /// [`CgroupDriver::cleanup_stale`] looks for launcher processes.
    pub fn new(top: &Path, base: &Path, proc_root: &Path) -> Result<Self, CgroupError> {
        Self::with_fs(top, base, proc_root, CgroupFs::REAL)
    }

    pub(crate) fn with_fs(
        top: &Path,
        base: &Path,
        proc_root: &Path,
        fs: CgroupFs,
    ) -> Result<Self, CgroupError> {
        let relative = base
            .strip_prefix(top)
            .map_err(|_| CgroupError::Unavailable {
                reason: format!(
                    "cgroup base {} is not inside {}",
                    base.display(),
                    top.display()
                ),
            })?;
        let mut chain = vec![top.to_owned()];
        for component in relative.components() {
            let next = chain.last().expect("chain starts with top").join(component);
            chain.push(next);
        }
        let mut controllers: Vec<String> = Vec::new();
        for (index, dir) in chain.iter().enumerate() {
            if index > 0 {
                ensure_dir(fs, dir)?;
            }
            let available = read_control(&dir.join("cgroup.controllers"))?;
            let available: Vec<&str> = available.split_whitespace().collect();
            if index == 0 {
                for required in REQUIRED {
                    if !available.contains(&required) {
                        return Err(CgroupError::Unavailable {
                            reason: format!(
                                "controller {required} is not available in {} (cgroup.controllers: {:?})",
                                dir.display(),
                                available.join(" ")
                            ),
                        });
                    }
                }
                controllers = REQUIRED
                    .iter()
                    .chain(OPTIONAL.iter().filter(|c| available.contains(c)))
                    .map(|c| (*c).to_owned())
                    .collect();
            }
            enable_controllers(dir, &controllers)?;
        }
        let procs = base.join("cgroup.procs");
        let holders = read_procs(&procs)?;
        if !holders.is_empty() {
            return Err(CgroupError::Unavailable {
                reason: format!(
                    "cgroup {} holds processes {holders:?}; it must be empty because a cgroup \
                     that hands controllers to its children cannot hold processes",
                    base.display()
                ),
            });
        }
        controllers.sort();
        Ok(V2Driver {
            base: base.to_owned(),
            controllers,
            proc_root: proc_root.to_owned(),
            fs,
        })
    }

    /// The directory runs are created in.
    pub fn base(&self) -> &Path {
        &self.base
    }
}

/// Add the controllers missing from `dir/cgroup.subtree_control`.
fn enable_controllers(dir: &Path, controllers: &[String]) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = read_control(&path)?;
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !enabled.contains(&c.as_str()))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // EBUSY here means `dir` holds processes (the no internal processes rule).
    write_control(&path, &missing.join(" "))
}

/// `cpu.max` for a CPU share: `<quota> <period>`, quota at least the kernel's 1 ms minimum;
/// 0 millicores means no limit.
pub(crate) fn cpu_max(millicores: u64) -> String {
    if millicores == 0 {
        return format!("max {CPU_MAX_PERIOD_USEC}");
    }
    let quota = (millicores.saturating_mul(CPU_MAX_PERIOD_USEC) / 1000).max(1000);
    format!("{quota} {CPU_MAX_PERIOD_USEC}")
}

impl CgroupDriver for V2Driver {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn controllers(&self) -> Vec<String> {
        self.controllers.clone()
    }

    fn create(&self, limits: &CgroupLimits) -> Result<Box<dyn RunCgroup>, CgroupError> {
        let dir = self.base.join(control::next_run_name()?);
        (self.fs.mkdir)(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        // Open before writing limits so that from here on an error drops a `V2Run` and removes
        // the directory. O_PATH would not do: CLONE_INTO_CGROUP needs a real open directory.
        let fd = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&dir)
        {
            Ok(file) => OwnedFd::from(file),
            Err(source) => {
                let _ = remove_cgroup(self.fs, &dir);
                return Err(CgroupError::Read { path: dir, source });
            }
        };
        let run = V2Run {
            dir,
            fd,
            fs: self.fs,
            destroyed: false,
            controllers: self.controllers.clone(),
        };
        run.apply(limits)?;
        Ok(Box::new(run))
    }

    fn cleanup_stale(&self) -> Result<usize, CgroupError> {
        control::cleanup_stale_runs(self.fs, std::slice::from_ref(&self.base), &self.proc_root)
    }
}

/// The cgroup of one run on v2.
#[derive(Debug)]
pub struct V2Run {
    dir: PathBuf,
    fd: OwnedFd,
    fs: CgroupFs,
    destroyed: bool,
    controllers: Vec<String>,
}

impl V2Run {
    fn apply(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let has = |c: &str| self.controllers.iter().any(|x| x == c);
        if has("memory") {
            write_control(
                &self.dir.join("memory.max"),
                &limits.memory_bytes.to_string(),
            )?;
            let swap = self.dir.join("memory.swap.max");
            // Absent when the kernel has no swap accounting.
            if swap.exists() {
                write_control(&swap, "0")?;
            }
        }
        if has("pids") {
            write_control(&self.dir.join("pids.max"), &limits.pids.to_string())?;
        }
        if has("cpu") {
            write_control(&self.dir.join("cpu.max"), &cpu_max(limits.cpu_millicores))?;
        }
        Ok(())
    }

    fn remove(&mut self) -> Result<(), CgroupError> {
        self.destroyed = true;
        self.kill_all()?;
        remove_cgroup(self.fs, &self.dir)
    }
}

impl RunCgroup for V2Run {
    fn clone_into_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        write_control(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.apply(limits)
    }

    fn stats(&self) -> CgroupStats {
        let events = self.dir.join("memory.events");
        let cpu_stat = self.dir.join("cpu.stat");
        CgroupStats {
            peak_memory_bytes: read_u64(&self.dir.join("memory.peak")),
            oom_kills: read_keyed(&events, "oom_kill").unwrap_or(0),
            memory_limit_hit: read_keyed(&events, "max").unwrap_or(0) > 0,
            cpu_user_usec: read_keyed(&cpu_stat, "user_usec"),
            cpu_system_usec: read_keyed(&cpu_stat, "system_usec"),
            pids_peak: read_u64(&self.dir.join("pids.peak")),
            pids_limit_hit: read_keyed(&self.dir.join("pids.events"), "max").unwrap_or(0),
        }
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        let procs = self.dir.join("cgroup.procs");
        let kill = self.dir.join("cgroup.kill");
        // cgroup.kill (Linux 5.14) kills the whole subtree atomically, forks included.
        if kill.exists() {
            write_control(&kill, "1")?;
            if control::wait_empty(&procs)? {
                return Ok(());
            }
        }
        control::kill_procs(&[procs]).map(|_| ())
    }

    fn destroy(mut self: Box<Self>) -> Result<(), CgroupError> {
        self.remove()
    }

    fn path(&self) -> String {
        self.dir.display().to_string()
    }
}

impl Drop for V2Run {
    fn drop(&mut self) {
        if !self.destroyed {
            if let Err(error) = self.remove() {
                tracing::warn!(error = %error, "cannot remove run cgroup on drop");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CgroupLimits = CgroupLimits {
        memory_bytes: 512 << 20,
        pids: 32,
        cpu_millicores: 500,
    };

    /// A fake unified mount whose root offers `controllers` and whose children get the v2
    /// control files.
    fn fake_v2(controllers: &str, swap: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut files = vec![
            ("cgroup.controllers", controllers),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
            ("cgroup.kill", ""),
            ("memory.max", "max\n"),
            ("memory.peak", "4096000\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
            ),
            ("pids.max", "max\n"),
            ("pids.peak", "9\n"),
            ("pids.events", "max 1\n"),
            ("cpu.max", "max 100000\n"),
            (
                "cpu.stat",
                "usage_usec 3500\nuser_usec 2500\nsystem_usec 1000\nnr_periods 0\n",
            ),
        ];
        if swap {
            files.push(("memory.swap.max", "max\n"));
        }
        for (name, content) in files {
            std::fs::write(root.join(name), content).unwrap();
        }
        dir
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    #[test]
    fn new_enables_controllers_down_to_base() {
        let host = fake_v2("cpuset cpu io memory hugetlb pids rdma misc", true);
        let top = host.path();
        let base = top.join("kakoi");
        let driver = V2Driver::with_fs(top, &base, Path::new("/proc"), CgroupFs::FAKE).unwrap();
        assert_eq!(driver.controllers(), ["cpu", "memory", "pids"]);
        // The fake kernel does not interpret "+x", so the written text is what we check.
        assert_eq!(
            read(top.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(
            read(base.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
    }

    #[test]
    fn new_leaves_enabled_controllers_alone() {
        let host = fake_v2("cpu memory pids", false);
        std::fs::write(
            host.path().join("cgroup.subtree_control"),
            "cpu memory pids\n",
        )
        .unwrap();
        let driver =
            V2Driver::with_fs(host.path(), host.path(), Path::new("/proc"), CgroupFs::FAKE)
                .unwrap();
        assert_eq!(driver.base(), host.path());
        assert_eq!(
            read(host.path().join("cgroup.subtree_control")),
            "cpu memory pids"
        );
    }

    #[test]
    fn new_without_memory_is_unavailable() {
        let host = fake_v2("hugetlb", true);
        let error = V2Driver::with_fs(
            host.path(),
            &host.path().join("kakoi"),
            Path::new("/proc"),
            CgroupFs::FAKE,
        )
        .unwrap_err();
        assert!(
            matches!(&error, CgroupError::Unavailable { reason } if reason.contains("memory")),
            "{error}"
        );
    }

    #[test]
    fn new_refuses_base_with_processes() {
        let host = fake_v2("cpu memory pids", true);
        std::fs::write(host.path().join("cgroup.procs"), "1234\n").unwrap();
        let error = V2Driver::with_fs(host.path(), host.path(), Path::new("/proc"), CgroupFs::FAKE)
            .unwrap_err();
        assert!(error.to_string().contains("holds processes"), "{error}");
    }

    #[test]
    fn create_writes_limits_and_opens_fd() {
        let host = fake_v2("cpu memory pids", true);
        let base = host.path().join("kakoi");
        let driver =
            V2Driver::with_fs(host.path(), &base, Path::new("/proc"), CgroupFs::FAKE).unwrap();
        let run = driver.create(&LIMITS).unwrap();
        let dir = PathBuf::from(run.path());
        assert_eq!(dir.parent(), Some(base.as_path()));
        assert_eq!(read(dir.join("memory.max")), "536870912");
        assert_eq!(read(dir.join("memory.swap.max")), "0");
        assert_eq!(read(dir.join("pids.max")), "32");
        assert_eq!(read(dir.join("cpu.max")), "50000 100000");
        assert!(run.clone_into_fd().is_some());
        run.attach(999_999_999).unwrap();
        assert_eq!(read(dir.join("cgroup.procs")), "999999999");
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        run.destroy().unwrap();
        assert!(!dir.exists());
        assert!(base.is_dir());
    }

    #[test]
    fn create_without_swap_accounting_and_cpu() {
        let host = fake_v2("memory pids", false);
        let driver =
            V2Driver::with_fs(host.path(), host.path(), Path::new("/proc"), CgroupFs::FAKE)
                .unwrap();
        assert_eq!(driver.controllers(), ["memory", "pids"]);
        let run = driver.create(&LIMITS).unwrap();
        let dir = PathBuf::from(run.path());
        assert!(!dir.join("memory.swap.max").exists());
        assert_eq!(read(dir.join("cpu.max")), "max 100000", "cpu.max untouched");
        drop(run);
        assert!(!dir.exists(), "drop removes the run cgroup");
    }

    #[test]
    fn stats_parse_v2_files() {
        let host = fake_v2("cpu memory pids", true);
        let driver =
            V2Driver::with_fs(host.path(), host.path(), Path::new("/proc"), CgroupFs::FAKE)
                .unwrap();
        let run = driver.create(&LIMITS).unwrap();
        assert_eq!(
            run.stats(),
            CgroupStats {
                peak_memory_bytes: Some(4_096_000),
                oom_kills: 1,
                memory_limit_hit: true,
                cpu_user_usec: Some(2500),
                cpu_system_usec: Some(1000),
                pids_peak: Some(9),
                pids_limit_hit: 1,
            }
        );
    }

    #[test]
    fn cpu_max_rounding() {
        assert_eq!(cpu_max(0), "max 100000");
        assert_eq!(cpu_max(2000), "200000 100000");
        assert_eq!(cpu_max(5), "1000 100000");
    }
}
