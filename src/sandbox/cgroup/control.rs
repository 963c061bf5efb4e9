//! Pieces both drivers share: control-file I/O, run names, the kill loop, removal with retry,
//! and the stale-run sweep.
//!
//! Directory creation and removal go through [`CgroupFs`] so unit tests can run the real driver
//! code against a temp dir: the kernel fills a new cgroup directory with control files and lets
//! `rmdir` remove a directory that still holds them, a plain filesystem does neither.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::CgroupError;

/// How long the kill loop and the `rmdir` retry keep trying before giving up.
pub(crate) const SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Prefix of every run directory: `run-<launcher pid>-<launcher start time>-<counter>`.
pub(crate) const RUN_PREFIX: &str = "run-";

/// The two directory operations whose semantics differ between cgroupfs and a plain filesystem.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CgroupFs {
    /// `mkdir(2)` of a cgroup (the kernel populates it with control files).
    pub(crate) mkdir: fn(&Path) -> io::Result<()>,
    /// `rmdir(2)` of a cgroup (allowed while control files are inside).
    pub(crate) rmdir: fn(&Path) -> io::Result<()>,
}

impl CgroupFs {
    /// The real cgroupfs.
    pub(crate) const REAL: CgroupFs = CgroupFs {
        mkdir: real_mkdir,
        rmdir: real_rmdir,
    };

    /// A cgroupfs imitation on a plain directory tree, for unit tests.
    #[cfg(test)]
    pub(crate) const FAKE: CgroupFs = CgroupFs {
        mkdir: fake::mkdir,
        rmdir: fake::rmdir,
    };
}

fn real_mkdir(path: &Path) -> io::Result<()> {
    std::fs::create_dir(path)
}

fn real_rmdir(path: &Path) -> io::Result<()> {
    std::fs::remove_dir(path)
}

/// Imitation of the two kernel behaviours for tests on a temp dir.
#[cfg(test)]
pub(crate) mod fake {
    use std::io;
    use std::path::Path;

    /// Create the directory and copy the parent's regular files into it, as the kernel
    /// populates a new cgroup with the control files of its hierarchy.
    pub(crate) fn mkdir(path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)?;
        let parent = path.parent().expect("cgroup dir has a parent");
        for entry in std::fs::read_dir(parent)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = entry.file_name();
                // A new cgroup starts with no processes and no controllers for children,
                // whatever its parent has.
                if name == "cgroup.procs" || name == "cgroup.subtree_control" {
                    std::fs::write(path.join(&name), "")?;
                } else {
                    std::fs::copy(entry.path(), path.join(&name))?;
                }
            }
        }
        Ok(())
    }

    /// Fail with `EBUSY` if a child cgroup exists (as the kernel does), else remove the
    /// control files and the directory.
    pub(crate) fn rmdir(path: &Path) -> io::Result<()> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            files.push(entry.path());
        }
        for file in files {
            std::fs::remove_file(file)?;
        }
        std::fs::remove_dir(path)
    }
}

/// Write `value` to a control file that must exist (never creates a file).
pub(crate) fn write_control(path: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_owned(),
            value: value.to_owned(),
            source,
        })
}

/// Read a whole control file.
pub(crate) fn read_control(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Read a control file holding one number; `None` if missing or unparsable (for stats).
pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Value of `key` in a flat-keyed file (`key value` per line, as `memory.events`, `cpu.stat`,
/// `memory.oom_control`, `pids.events`).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// Read `key` from a flat-keyed control file; `None` if the file or key is missing.
pub(crate) fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    keyed_value(&std::fs::read_to_string(path).ok()?, key)
}

/// The pids listed in `cgroup.procs`; a missing file (cgroup already gone) is empty.
pub(crate) fn read_procs(path: &Path) -> Result<Vec<i32>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .split_whitespace()
            .filter_map(|word| word.parse().ok())
            .collect()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// SIGKILL every process listed in the given `cgroup.procs` files until they are all empty or
/// [`SETTLE_TIMEOUT`] passes (processes can fork between the read and the kill, hence the loop).
///
/// Pid 0 (a process outside our pid namespace) and our own pid are never signalled. Returns
/// whether the cgroups ended empty; a non-empty cgroup shows up as `EBUSY` at `rmdir`.
pub(crate) fn kill_procs(procs_files: &[PathBuf]) -> Result<bool, CgroupError> {
    let own_pid = std::process::id() as i32;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut pause = Duration::from_micros(200);
    loop {
        let mut pids = BTreeSet::new();
        for file in procs_files {
            pids.extend(read_procs(file)?);
        }
        pids.retain(|&pid| pid > 0 && pid != own_pid);
        if pids.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        for pid in pids {
            // ESRCH: it exited between the read and the kill, which is what we want.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Wait until the given `cgroup.procs` files are empty (after `cgroup.kill`), bounded.
pub(crate) fn wait_empty(procs_file: &Path) -> Result<bool, CgroupError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut pause = Duration::from_micros(200);
    loop {
        if read_procs(procs_file)?.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Remove a cgroup directory, retrying `EBUSY` (processes still exiting) for
/// [`SETTLE_TIMEOUT`]; a directory that is already gone is fine.
pub(crate) fn remove_cgroup(fs: CgroupFs, dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut pause = Duration::from_micros(200);
    loop {
        match (fs.rmdir)(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error)
                if error.raw_os_error() == Some(Errno::EBUSY as i32)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Create `dir` if it does not exist yet (the shared base directory).
pub(crate) fn ensure_dir(fs: CgroupFs, dir: &Path) -> Result<(), CgroupError> {
    if dir.is_dir() {
        return Ok(());
    }
    match (fs.mkdir)(dir) {
        Ok(()) => Ok(()),
        // Another launcher created it between our check and our mkdir.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Reject base names that would escape or be ambiguous as one path component.
pub(crate) fn check_base_name(base_name: &str) -> Result<(), CgroupError> {
    if base_name.is_empty() || base_name == "." || base_name == ".." || base_name.contains('/') {
        return Err(CgroupError::Unavailable {
            reason: format!("invalid cgroup base name {base_name:?}: must be one path component"),
        });
    }
    Ok(())
}

/// Identity of one launcher process: its pid and its start time in clock ticks since boot
/// (field 22 of `/proc/<pid>/stat`), which together survive pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunName {
    /// Launcher pid.
    pub(crate) pid: u32,
    /// Launcher start time, clock ticks after boot.
    pub(crate) start_time: u64,
    /// Per-process counter.
    pub(crate) counter: u64,
}

impl RunName {
    /// Parse `run-<pid>-<start>-<counter>`; anything else is not ours.
    pub(crate) fn parse(name: &str) -> Option<RunName> {
        let mut parts = name.strip_prefix(RUN_PREFIX)?.split('-');
        let name = RunName {
            pid: parts.next()?.parse().ok()?,
            start_time: parts.next()?.parse().ok()?,
            counter: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(name)
    }

    /// The directory name.
    pub(crate) fn to_dir_name(self) -> String {
        format!(
            "{RUN_PREFIX}{}-{}-{}",
            self.pid, self.start_time, self.counter
        )
    }
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);
static LAUNCHER_START_TIME: OnceLock<u64> = OnceLock::new();

/// Start time of this process, read once from the real `/proc/self/stat` (this is about our own
/// process, not about a possibly fake `proc_root`).
pub(crate) fn launcher_start_time() -> Result<u64, CgroupError> {
    if let Some(start_time) = LAUNCHER_START_TIME.get() {
        return Ok(*start_time);
    }
    let path = Path::new("/proc/self/stat");
    let text = read_control(path)?;
    let start_time = stat_start_time(&text).ok_or_else(|| CgroupError::Read {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, "no start time in field 22"),
    })?;
    Ok(*LAUNCHER_START_TIME.get_or_init(|| start_time))
}

/// The name of this process's next run cgroup; unique within the process and across live
/// launchers on the host.
pub(crate) fn next_run_name() -> Result<String, CgroupError> {
    Ok(RunName {
        pid: std::process::id(),
        start_time: launcher_start_time()?,
        counter: RUN_COUNTER.fetch_add(1, Ordering::Relaxed),
    }
    .to_dir_name())
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may contain spaces and parentheses, so count from the last `)`; see proc(5).
pub(crate) fn stat_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (`state`), so field 22 is index 19.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the launcher that created a run directory is gone (pid missing, or the pid now
/// belongs to a process that started at another time).
pub(crate) fn launcher_is_gone(proc_root: &Path, name: &RunName) -> bool {
    let stat = proc_root.join(name.pid.to_string()).join("stat");
    match std::fs::read_to_string(stat) {
        Ok(text) => stat_start_time(&text) != Some(name.start_time),
        Err(error) => error.kind() == io::ErrorKind::NotFound,
    }
}

/// Sweep stale run directories: `bases` are the per-hierarchy base directories (one on v2).
/// One `readdir` per base; a run whose launcher is gone has its processes killed and its
/// directories removed in every base. Returns the number of runs removed.
pub(crate) fn cleanup_stale_runs(
    fs: CgroupFs,
    bases: &[PathBuf],
    proc_root: &Path,
) -> Result<usize, CgroupError> {
    let mut stale = BTreeSet::new();
    for base in bases {
        let entries = match std::fs::read_dir(base) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(CgroupError::Read {
                    path: base.clone(),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(RunName::parse) else {
                continue;
            };
            if launcher_is_gone(proc_root, &name) {
                stale.insert(file_name.to_string_lossy().into_owned());
            }
        }
    }
    let mut first_error = None;
    let mut removed = 0;
    for name in &stale {
        let dirs: Vec<PathBuf> = bases.iter().map(|base| base.join(name)).collect();
        let procs: Vec<PathBuf> = dirs.iter().map(|dir| dir.join("cgroup.procs")).collect();
        let result =
            kill_procs(&procs).and_then(|_| dirs.iter().try_for_each(|dir| remove_cgroup(fs, dir)));
        match result {
            Ok(()) => removed += 1,
            Err(error) => {
                tracing::warn!(run = %name, error = %error, "cannot remove stale cgroup");
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(removed),
    }
}
