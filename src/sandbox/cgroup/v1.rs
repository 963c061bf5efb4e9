//! cgroup v1 (legacy or hybrid hosts): one hierarchy per mount, a run directory in each.
//!
//! Managed controllers: `memory` and `pids` (required), `cpu` and `cpuacct` (optional, co-mounted
//! as `cpu,cpuacct` or each on its own mount, as on hybrid hosts). CPU times come from cpuacct:
//! without it a run's processes killed with the cgroup would be missing from the rusage of the
//! init. See Documentation/admin-guide/cgroup-v1/ in the kernel tree.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use super::control::{
    self, CgroupFs, check_base_name, ensure_dir, read_keyed, read_u64, remove_cgroup, write_control,
};
use super::{CgroupDriver, CgroupError, CgroupLimits, CgroupStats, CgroupVersion, RunCgroup};

/// CFS period written to `cpu.cfs_period_us`, in microseconds (the kernel default).
pub const CFS_PERIOD_USEC: u64 = 100_000;

/// One mounted v1 hierarchy that kakoi writes to.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// Controllers of this mount that kakoi uses (`memory`, `pids`, `cpu`, `cpuacct`).
    controllers: Vec<String>,
    /// `<mount>/<base name>`.
    base: PathBuf,
}

/// Driver for cgroup v1: creates `<mount>/<base>/run-…` in the memory, pids and cpu hierarchies.
#[derive(Debug)]
pub struct V1Driver {
    /// Distinct hierarchies (co-mounted controllers share one).
    hierarchies: Vec<Hierarchy>,
    proc_root: PathBuf,
    fs: CgroupFs,
}

impl V1Driver {
    /// Build the driver from controller → mount directory (for example `memory` →
    /// `/sys/fs/cgroup/memory`; co-mounted controllers map to the same directory), creating
    /// `<mount>/<base_name>` in each managed hierarchy. `memory` and `pids` are required, `cpu`
    /// is used when present. `proc_root` (normally `/proc`) is where
    /// [`CgroupDriver::cleanup_stale`] looks for launcher processes.
    pub fn new(
        mounts: &BTreeMap<String, PathBuf>,
        base_name: &str,
        proc_root: &Path,
    ) -> Result<Self, CgroupError> {
        Self::with_fs(mounts, base_name, proc_root, CgroupFs::REAL)
    }

    pub(crate) fn with_fs(
        mounts: &BTreeMap<String, PathBuf>,
        base_name: &str,
        proc_root: &Path,
        fs: CgroupFs,
    ) -> Result<Self, CgroupError> {
        check_base_name(base_name)?;
        for required in ["memory", "pids"] {
            if !mounts.contains_key(required) {
                return Err(CgroupError::Unavailable {
                    reason: format!("cgroup v1 {required} hierarchy is not mounted"),
                });
            }
        }
        let mut hierarchies: Vec<(PathBuf, Hierarchy)> = Vec::new();
        for controller in ["memory", "pids", "cpu", "cpuacct"] {
            let Some(mount) = mounts.get(controller) else {
                continue;
            };
            if let Some((_, hierarchy)) = hierarchies.iter_mut().find(|(m, _)| m == mount) {
                hierarchy.controllers.push(controller.to_owned());
            } else {
                hierarchies.push((
                    mount.clone(),
                    Hierarchy {
                        controllers: vec![controller.to_owned()],
                        base: mount.join(base_name),
                    },
                ));
            }
        }
        let hierarchies: Vec<Hierarchy> = hierarchies.into_iter().map(|(_, h)| h).collect();
        for hierarchy in &hierarchies {
            ensure_dir(fs, &hierarchy.base)?;
        }
        Ok(V1Driver {
            hierarchies,
            proc_root: proc_root.to_owned(),
            fs,
        })
    }

    fn bases(&self) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.base.clone()).collect()
    }
}

impl CgroupDriver for V1Driver {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn controllers(&self) -> Vec<String> {
        let mut controllers: Vec<String> = self
            .hierarchies
            .iter()
            .flat_map(|h| h.controllers.iter().cloned())
            .collect();
        controllers.sort();
        controllers
    }

    fn create(&self, limits: &CgroupLimits) -> Result<Box<dyn RunCgroup>, CgroupError> {
        let name = control::next_run_name()?;
        let mut run = V1Run {
            dirs: Vec::new(),
            fs: self.fs,
            destroyed: false,
        };
        // Every directory joins `run.dirs` as soon as it exists, so an error below drops `run`
        // and removes what was created.
        for hierarchy in &self.hierarchies {
            let dir = hierarchy.base.join(&name);
            (self.fs.mkdir)(&dir).map_err(|source| CgroupError::Create {
                path: dir.clone(),
                source,
            })?;
            run.dirs.push(RunDir {
                path: dir,
                controllers: hierarchy.controllers.clone(),
            });
        }
        run.apply(limits)?;
        Ok(Box::new(run))
    }

    fn cleanup_stale(&self) -> Result<usize, CgroupError> {
        control::cleanup_stale_runs(self.fs, &self.bases(), &self.proc_root)
    }

    fn plan(&self) -> Option<Result<Box<dyn RunCgroup>, CgroupError>> {
        let name = match control::next_run_name() {
            Ok(name) => name,
            Err(e) => return Some(Err(e)),
        };
        let dirs = self
            .hierarchies
            .iter()
            .map(|hierarchy| RunDir {
                path: hierarchy.base.join(&name),
                controllers: hierarchy.controllers.clone(),
            })
            .collect();
        Some(Ok(Box::new(V1Run {
            dirs,
            fs: self.fs,
            destroyed: false,
        })))
    }
}

/// One run directory and the controllers of its hierarchy.
#[derive(Debug)]
struct RunDir {
    path: PathBuf,
    controllers: Vec<String>,
}

/// The cgroup of one run on v1: the same relative directory in each managed hierarchy.
#[derive(Debug)]
pub struct V1Run {
    dirs: Vec<RunDir>,
    fs: CgroupFs,
    destroyed: bool,
}

impl V1Run {
    /// Directory of the hierarchy that holds `controller`.
    fn dir_of(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|dir| dir.controllers.iter().any(|c| c == controller))
            .map(|dir| dir.path.as_path())
    }

    fn apply(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        if let Some(memory) = self.dir_of("memory") {
            let bytes = limits.memory_bytes.to_string();
            // memory.limit_in_bytes first: the kernel refuses memsw below the memory limit.
            write_control(&memory.join("memory.limit_in_bytes"), &bytes)?;
            let memsw = memory.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                // memory+swap = memory: the run gets no swap.
                write_control(&memsw, &bytes)?;
            } else {
                // Swap is not accounted (swapaccount=0): at least make the run avoid it.
                write_control(&memory.join("memory.swappiness"), "0")?;
            }
        }
        if let Some(pids) = self.dir_of("pids") {
            write_control(&pids.join("pids.max"), &limits.pids.to_string())?;
        }
        if let Some(cpu) = self.dir_of("cpu") {
            write_control(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_USEC.to_string())?;
            write_control(
                &cpu.join("cpu.cfs_quota_us"),
                &cfs_quota_usec(limits.cpu_millicores),
            )?;
        }
        Ok(())
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|dir| dir.path.join("cgroup.procs"))
            .collect()
    }

    fn remove(&mut self) -> Result<(), CgroupError> {
        self.destroyed = true;
        self.kill_all()?;
        let mut first_error = None;
        for dir in &self.dirs {
            if let Err(error) = remove_cgroup(self.fs, &dir.path) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// `cpu.cfs_quota_us` for a CPU share: millicores × period / 1000, at least the kernel's 1 ms
/// minimum; 0 millicores means no limit (`-1`).
pub(crate) fn cfs_quota_usec(millicores: u64) -> String {
    if millicores == 0 {
        return "-1".to_owned();
    }
    (millicores.saturating_mul(CFS_PERIOD_USEC) / 1000)
        .max(1000)
        .to_string()
}

impl RunCgroup for V1Run {
    fn clone_into_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        for dir in &self.dirs {
            write_control(&dir.path.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    fn open_self_move(&self) -> Option<Vec<std::os::fd::OwnedFd>> {
        let mut fds = Vec::with_capacity(self.dirs.len());
        for dir in &self.dirs {
            let tasks = dir.path.join("tasks");
            // std opens with O_CLOEXEC: the child writes and closes them before exec anyway.
            match std::fs::OpenOptions::new().write(true).open(&tasks) {
                Ok(file) => fds.push(std::os::fd::OwnedFd::from(file)),
                Err(e) => {
                    tracing::debug!("cannot open {} ({e}); attaching by pid", tasks.display());
                    return None;
                }
            }
        }
        Some(fds)
    }

    fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.apply(limits)
    }

    fn create_planned(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            (self.fs.mkdir)(&dir.path).map_err(|source| CgroupError::Create {
                path: dir.path.clone(),
                source,
            })?;
        }
        self.apply(limits)
    }

    fn stats(&self) -> CgroupStats {
        let mut stats = CgroupStats::default();
        if let Some(memory) = self.dir_of("memory") {
            stats.peak_memory_bytes = read_u64(&memory.join("memory.max_usage_in_bytes"));
            // `oom_kill` appeared in memory.oom_control in Linux 4.13.
            stats.oom_kills =
                read_keyed(&memory.join("memory.oom_control"), "oom_kill").unwrap_or(0);
            // With memsw limited to the memory limit, the memory+swap counter is charged first
            // and is the one that fails, so `memory.failcnt` can stay 0 through an OOM kill.
            let failcnt = |file: &str| read_u64(&memory.join(file)).unwrap_or(0);
            stats.memory_limit_hit = failcnt("memory.failcnt") > 0
                || failcnt("memory.memsw.failcnt") > 0
                || stats.oom_kills > 0;
        }
        if let Some(pids) = self.dir_of("pids") {
            stats.pids_peak = read_u64(&pids.join("pids.peak"));
            stats.pids_limit_hit = read_keyed(&pids.join("pids.events"), "max").unwrap_or(0);
        }
        if let Some(cpuacct) = self.dir_of("cpuacct") {
            let (user, system) = cpu_times(
                read_u64(&cpuacct.join("cpuacct.usage")),
                read_u64(&cpuacct.join("cpuacct.usage_user")),
                read_u64(&cpuacct.join("cpuacct.usage_sys")),
            );
            stats.cpu_user_usec = user;
            stats.cpu_system_usec = system;
        }
        stats
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        control::kill_procs(&self.procs_files()).map(|_| ())
    }

    fn destroy(mut self: Box<Self>) -> Result<(), CgroupError> {
        self.remove()
    }

    fn path(&self) -> String {
        // The memory hierarchy's directory; the same relative path exists in the others.
        self.dir_of("memory")
            .or_else(|| self.dirs.first().map(|dir| dir.path.as_path()))
            .map(|path| path.display().to_string())
            .unwrap_or_default()
    }
}

impl Drop for V1Run {
    fn drop(&mut self) {
        if !self.destroyed {
            if let Err(error) = self.remove() {
                tracing::warn!(error = %error, "cannot remove run cgroup on drop");
            }
        }
    }
}

/// User and system CPU time in microseconds from cpuacct's nanosecond counters.
/// `cpuacct.usage` is exact (scheduler clock); `usage_user`/`usage_sys` are sampled at timer
/// ticks and undercount, badly under load. So the total is `usage`, split by the sampled ratio
/// (all of it counted as user time when no tick was sampled, which only happens for runs of a
/// few milliseconds).
fn cpu_times(
    total: Option<u64>,
    user: Option<u64>,
    sys: Option<u64>,
) -> (Option<u64>, Option<u64>) {
    let Some(total) = total else {
        return (user.map(|n| n / 1000), sys.map(|n| n / 1000));
    };
    let (user, sys) = (user.unwrap_or(0), sys.unwrap_or(0));
    let sampled = user + sys;
    let user_ns = if sampled == 0 {
        total
    } else {
        (total as u128 * user as u128 / sampled as u128) as u64
    };
    (Some(user_ns / 1000), Some((total - user_ns) / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::cgroup::control::fake;

    const LIMITS: CgroupLimits = CgroupLimits {
        memory_bytes: 256 << 20,
        pids: 64,
        cpu_millicores: 1500,
    };

    /// A fake v1 host: one dir per hierarchy with the control files a child cgroup gets.
    struct FakeV1 {
        _dir: tempfile::TempDir,
        root: PathBuf,
        mounts: BTreeMap<String, PathBuf>,
    }

    fn fake_v1(memsw: bool, cpu_cpuacct: bool) -> FakeV1 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let mut mounts = BTreeMap::new();
        let files = |mount: &Path, files: &[(&str, &str)]| {
            std::fs::create_dir_all(mount).unwrap();
            std::fs::write(mount.join("cgroup.procs"), "").unwrap();
            for (name, content) in files {
                std::fs::write(mount.join(name), content).unwrap();
            }
        };
        let memory = root.join("memory");
        let mut memory_files = vec![
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.max_usage_in_bytes", "12345678\n"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
            ),
            ("memory.failcnt", "7\n"),
            ("memory.swappiness", "60\n"),
        ];
        if memsw {
            memory_files.push(("memory.memsw.limit_in_bytes", "9223372036854771712\n"));
            memory_files.push(("memory.memsw.failcnt", "2\n"));
        }
        files(&memory, &memory_files);
        mounts.insert("memory".to_owned(), memory);
        let pids = root.join("pids");
        files(
            &pids,
            &[
                ("pids.max", "max\n"),
                ("pids.peak", "5\n"),
                ("pids.events", "max 2\n"),
            ],
        );
        mounts.insert("pids".to_owned(), pids);
        let cpu_files = [
            ("cpu.cfs_period_us", "100000\n"),
            ("cpu.cfs_quota_us", "-1\n"),
        ];
        if cpu_cpuacct {
            let cpu = root.join("cpu,cpuacct");
            files(&cpu, &cpu_files);
            files(
                &cpu,
                &[
                    ("cpuacct.usage", "8000000\n"),
                    ("cpuacct.usage_user", "3000000\n"),
                    ("cpuacct.usage_sys", "1000000\n"),
                ],
            );
            mounts.insert("cpu".to_owned(), cpu.clone());
            mounts.insert("cpuacct".to_owned(), cpu);
        } else {
            let cpu = root.join("cpu");
            files(&cpu, &cpu_files);
            mounts.insert("cpu".to_owned(), cpu);
            let cpuacct = root.join("cpuacct");
            files(
                &cpuacct,
                &[
                    ("cpuacct.usage", "2000000\n"),
                    ("cpuacct.usage_user", "1000000\n"),
                    ("cpuacct.usage_sys", "1000000\n"),
                ],
            );
            mounts.insert("cpuacct".to_owned(), cpuacct);
        }
        FakeV1 {
            _dir: dir,
            root,
            mounts,
        }
    }

    fn driver(host: &FakeV1) -> V1Driver {
        V1Driver::with_fs(&host.mounts, "kakoi", Path::new("/proc"), CgroupFs::FAKE).unwrap()
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    fn run_name(run: &dyn RunCgroup) -> String {
        Path::new(&run.path())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn create_writes_limits_with_memsw() {
        let host = fake_v1(true, false);
        let driver = driver(&host);
        let run = driver.create(&LIMITS).unwrap();
        let name = run_name(run.as_ref());
        let memory = host.root.join("memory/kakoi").join(&name);
        assert_eq!(read(memory.join("memory.limit_in_bytes")), "268435456");
        assert_eq!(
            read(memory.join("memory.memsw.limit_in_bytes")),
            "268435456"
        );
        // swappiness is left alone when memsw limits swap.
        assert_eq!(read(memory.join("memory.swappiness")), "60");
        let pids = host.root.join("pids/kakoi").join(&name);
        assert_eq!(read(pids.join("pids.max")), "64");
        let cpu = host.root.join("cpu/kakoi").join(&name);
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "150000");
        // A separately mounted cpuacct (as on this hybrid host) is managed too.
        let cpuacct = host.root.join("cpuacct/kakoi").join(&name);
        assert!(cpuacct.is_dir());
        assert_eq!(driver.controllers(), ["cpu", "cpuacct", "memory", "pids"]);
        assert_eq!(run.path(), memory.display().to_string());
        assert!(run.clone_into_fd().is_none());
        run.destroy().unwrap();
        assert!(!memory.exists() && !pids.exists() && !cpu.exists() && !cpuacct.exists());
        assert!(host.root.join("memory/kakoi").is_dir());
    }

    #[test]
    fn a_planned_cgroup_is_created_later_and_removed_either_way() {
        let host = fake_v1(true, false);
        let driver = driver(&host);
        let planned = driver.plan().unwrap().unwrap();
        let memory = PathBuf::from(planned.path());
        assert!(!memory.exists(), "plan() creates nothing");
        planned.create_planned(&LIMITS).unwrap();
        assert_eq!(read(memory.join("memory.limit_in_bytes")), "268435456");
        assert!(
            host.root
                .join("pids/kakoi")
                .join(memory.file_name().unwrap())
                .is_dir()
        );
        planned.destroy().unwrap();
        assert!(!memory.exists());
        // A plan nobody created is removed without error.
        driver.plan().unwrap().unwrap().destroy().unwrap();
    }

    #[test]
    fn create_without_memsw_sets_swappiness() {
        let host = fake_v1(false, false);
        let run = driver(&host).create(&LIMITS).unwrap();
        let memory = host.root.join("memory/kakoi").join(run_name(run.as_ref()));
        assert_eq!(read(memory.join("memory.limit_in_bytes")), "268435456");
        assert!(!memory.join("memory.memsw.limit_in_bytes").exists());
        assert_eq!(read(memory.join("memory.swappiness")), "0");
        run.destroy().unwrap();
    }

    #[test]
    fn attach_writes_pid_to_every_hierarchy() {
        let host = fake_v1(true, false);
        let run = driver(&host).create(&LIMITS).unwrap();
        let name = run_name(run.as_ref());
        // A pid that cannot exist (above PID_MAX_LIMIT), so kill_all never signals anyone.
        run.attach(999_999_999).unwrap();
        let dirs: Vec<PathBuf> = ["memory", "pids", "cpu"]
            .iter()
            .map(|h| host.root.join(h).join("kakoi").join(&name))
            .collect();
        for dir in &dirs {
            assert_eq!(read(dir.join("cgroup.procs")), "999999999");
            // The fake kernel never removes the pid: empty it so destroy can finish.
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
        run.destroy().unwrap();
    }

    #[test]
    fn self_move_opens_every_hierarchys_tasks_file_or_none() {
        use std::io::Write as _;
        let host = fake_v1(true, false);
        let run = driver(&host).create(&LIMITS).unwrap();
        let name = run_name(run.as_ref());
        let dirs: Vec<PathBuf> = host
            .mounts
            .values()
            .map(|mount| mount.join("kakoi").join(&name))
            .filter(|dir| dir.is_dir())
            .collect();
        assert!(dirs.len() >= 3, "{dirs:?}");
        // The fake kernel has no `tasks` yet: the caller must fall back to attach by pid.
        assert!(run.open_self_move().is_none());
        for dir in &dirs {
            std::fs::write(dir.join("tasks"), "").unwrap();
        }
        let fds = run.open_self_move().expect("tasks files exist");
        assert_eq!(fds.len(), dirs.len());
        for fd in fds {
            std::fs::File::from(fd).write_all(b"0").unwrap();
        }
        for dir in &dirs {
            assert_eq!(read(dir.join("tasks")), "0");
        }
        run.destroy().unwrap();
    }

    #[test]
    fn stats_parse_v1_files() {
        let host = fake_v1(true, false);
        let run = driver(&host).create(&LIMITS).unwrap();
        let stats = run.stats();
        assert_eq!(
            stats,
            CgroupStats {
                peak_memory_bytes: Some(12_345_678),
                oom_kills: 3,
                memory_limit_hit: true,
                cpu_user_usec: Some(1000),
                cpu_system_usec: Some(1000),
                pids_peak: Some(5),
                pids_limit_hit: 2,
            }
        );
    }

    #[test]
    fn memsw_failcnt_alone_means_limit_hit() {
        let host = fake_v1(true, false);
        let run = driver(&host).create(&LIMITS).unwrap();
        let memory = PathBuf::from(run.path());
        std::fs::write(memory.join("memory.failcnt"), "0\n").unwrap();
        std::fs::write(
            memory.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .unwrap();
        assert!(run.stats().memory_limit_hit);
        std::fs::write(memory.join("memory.memsw.failcnt"), "0\n").unwrap();
        assert!(!run.stats().memory_limit_hit);
    }

    #[test]
    fn cpu_times_split_the_exact_total_by_the_sampled_ratio() {
        assert_eq!(
            cpu_times(Some(10_000), Some(3), Some(1)),
            (Some(7), Some(2))
        );
        assert_eq!(cpu_times(Some(5_000), Some(0), Some(0)), (Some(5), Some(0)));
        assert_eq!(
            cpu_times(None, Some(4_000), Some(2_000)),
            (Some(4), Some(2))
        );
        assert_eq!(cpu_times(None, None, None), (None, None));
    }

    #[test]
    fn cpu_cpuacct_comounted_gives_cpu_times() {
        let host = fake_v1(true, true);
        let driver = driver(&host);
        assert_eq!(driver.controllers(), ["cpu", "cpuacct", "memory", "pids"]);
        let run = driver.create(&LIMITS).unwrap();
        let cpu = host
            .root
            .join("cpu,cpuacct/kakoi")
            .join(run_name(run.as_ref()));
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "150000");
        let stats = run.stats();
        // The exact total (8 ms) split by the sampled user:sys ratio (3:1).
        assert_eq!(stats.cpu_user_usec, Some(6000));
        assert_eq!(stats.cpu_system_usec, Some(2000));
        drop(run);
        assert!(!cpu.exists(), "drop removes the run cgroup");
    }

    #[test]
    fn failed_create_removes_what_it_made() {
        let host = fake_v1(true, false);
        let driver = driver(&host);
        // pids.max missing in the template: the write fails after all mkdirs.
        std::fs::remove_file(host.root.join("pids/kakoi/pids.max")).unwrap();
        let error = driver.create(&LIMITS).unwrap_err();
        assert!(
            matches!(&error, CgroupError::Write { path, .. } if path.ends_with("pids.max")),
            "{error:?}"
        );
        for hierarchy in ["memory", "pids", "cpu"] {
            let base = host.root.join(hierarchy).join("kakoi");
            let runs = std::fs::read_dir(&base)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                .count();
            assert_eq!(runs, 0, "{}", base.display());
        }
    }

    #[test]
    fn missing_pids_hierarchy_is_unavailable() {
        let host = fake_v1(true, false);
        let mut mounts = host.mounts.clone();
        mounts.remove("pids");
        let error =
            V1Driver::with_fs(&mounts, "kakoi", Path::new("/proc"), CgroupFs::FAKE).unwrap_err();
        assert!(error.to_string().contains("pids"), "{error}");
    }

    #[test]
    fn cfs_quota_rounding() {
        assert_eq!(cfs_quota_usec(0), "-1");
        assert_eq!(cfs_quota_usec(1), "1000");
        assert_eq!(cfs_quota_usec(1000), "100000");
        assert_eq!(cfs_quota_usec(250), "25000");
    }

    #[test]
    fn fake_rmdir_refuses_dir_with_child() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        assert!(fake::rmdir(&dir.path().join("a")).is_err());
    }
}
