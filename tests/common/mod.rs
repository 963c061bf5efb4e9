//! Helpers shared by the integration tests: capability gating (never skip silently), running
//! the `kakoi` binary, and counting what a run could leave behind on the host.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kakoi::RunResult;

/// First host uid a root launcher maps the sandbox user to (`HOST_ID_BASE` in src/sandbox).
pub const HOST_ID_BASE: u32 = 2_000_000_000;

/// Every test of the binary takes this lock: the tests count host-global things (processes,
/// cgroups, mounts), so they must not overlap.
static LOCK: Mutex<()> = Mutex::new(());

/// Take the binary-wide lock (a failed test does not poison the others).
pub fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Capability gate. When `available` is false, print `SKIP: <test>: <reason>` and return
/// false — unless `KAKOI_TEST_REQUIRE` (comma-separated, e.g. `root,userns,cgroup`) names
/// `cap`, in which case the test fails.
pub fn require(cap: &str, available: bool, reason: &str) -> bool {
    if available {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unknown test>");
    let required = std::env::var("KAKOI_TEST_REQUIRE").unwrap_or_default();
    if required.split(',').map(str::trim).any(|c| c == cap) {
        panic!(
            "{test}: capability {cap:?} is required by KAKOI_TEST_REQUIRE but missing: {reason}"
        );
    }
    // Written to the real stderr: the test harness captures eprintln!, and a skip must show.
    let _ = writeln!(std::io::stderr(), "SKIP: {test}: {reason}");
    false
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn userns_available() -> bool {
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    max.is_some_and(|n| n > 0)
}

fn cgroup_available() -> bool {
    let v1 = Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
        && Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists();
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.contains("memory") && c.contains("pids"));
    v1 || v2
}

/// The gate every sandbox test passes: root, user namespaces and a cgroup hierarchy.
pub fn sandbox_available() -> bool {
    require(
        "root",
        is_root(),
        "needs root (run the suite as root, e.g. .ci/run)",
    ) && require(
        "userns",
        userns_available(),
        "user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0)",
    ) && require(
        "cgroup",
        cgroup_available(),
        "no cgroup v1 memory+pids hierarchy and no cgroup v2 with memory+pids",
    )
}

/// Whether PyPI can be reached (environment builds resolve and download from it): a TCP
/// connection to pypi.org:443. Prints SKIP, or fails under `KAKOI_TEST_REQUIRE=pypi`.
pub fn pypi_available() -> bool {
    use std::net::ToSocketAddrs as _;
    let reachable = ("pypi.org", 443)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(10)).is_ok());
    require(
        "pypi",
        reachable,
        "pypi.org:443 cannot be reached (environment builds need PyPI)",
    )
}

/// The data directory the environment tests share (`tests/env.rs`, `tests/server.rs`): kept
/// between test runs so each environment is built once per machine. A data directory may not
/// lie under /tmp or /work (envs are bound into sandboxes at their host path).
pub const SHARED_DATA_DIR: &str = "/var/tmp/kakoi-test-env/shared";

/// `kakoi` binary built by cargo for this test.
pub fn kakoi() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kakoi"));
    cmd.stdin(Stdio::null()).current_dir("/");
    cmd
}

/// Run `kakoi <args>` to completion.
pub fn kakoi_output(args: &[&str]) -> Output {
    kakoi().args(args).output().expect("spawn kakoi")
}

/// Parse a `--json` run's stdout; panics with the raw output when it is not one result.
pub fn parse_result(out: &Output) -> RunResult {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kakoi did not print one JSON result ({e}); exit {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `kakoi exec --json <flags> -- <cmd>`; returns the result and the process output.
pub fn exec_json(flags: &[&str], cmd: &[&str]) -> (RunResult, Output) {
    let mut args = vec!["exec", "--json"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(cmd);
    let out = kakoi_output(&args);
    (parse_result(&out), out)
}

/// The host uid a root launcher with pid `pid` maps its sandbox to.
pub fn host_uid_of_launcher(pid: u32) -> u32 {
    HOST_ID_BASE + pid % 100_000_000
}

/// A process on the host: pid, real uid, state letter, command name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostProcess {
    /// pid.
    pub pid: u32,
    /// Real uid.
    pub uid: u32,
    /// State (R, S, Z, ...).
    pub state: String,
    /// `Name:` line.
    pub name: String,
}

/// Every host process, read from /proc/*/status.
pub fn host_processes() -> Vec<HostProcess> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue; // exited meanwhile
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let uid = field("Uid:")
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        out.push(HostProcess {
            pid,
            uid,
            state: field("State:").chars().take(1).collect(),
            name: field("Name:"),
        });
    }
    out
}

/// Live (not zombie) host processes whose uid is one of `uids`.
///
/// Zombies are excluded: they are dead and hold nothing but a pid. When a runner is
/// SIGKILLed its init dies of PDEATHSIG and is reparented to the host's pid 1, which reaps
/// it on its own schedule (this machine's pid 1 is not a prompt reaper).
pub fn processes_of(uids: &BTreeSet<u32>) -> Vec<HostProcess> {
    host_processes()
        .into_iter()
        .filter(|p| uids.contains(&p.uid) && p.state != "Z")
        .collect()
}

/// Live host processes with a sandbox uid (≥ 2 000 000 000).
pub fn sandbox_processes() -> Vec<HostProcess> {
    host_processes()
        .into_iter()
        .filter(|p| p.uid >= HOST_ID_BASE && p.state != "Z")
        .collect()
}

/// Poll until no process of `uids` is left or `within` passes; returns what is left.
pub fn wait_gone(uids: &BTreeSet<u32>, within: Duration) -> Vec<HostProcess> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_of(uids);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `<mount>/kakoi` directories of every cgroup hierarchy (v1 controllers or the v2 root).
pub fn cgroup_bases() -> Vec<PathBuf> {
    let mut bases = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/fs/cgroup") {
        for entry in dir.flatten() {
            let base = entry.path().join("kakoi");
            if base.is_dir() {
                bases.push(base);
            }
        }
    }
    let v2 = Path::new("/sys/fs/cgroup/kakoi");
    if v2.is_dir() && !bases.iter().any(|b| b == v2) {
        bases.push(v2.to_path_buf());
    }
    bases
}

/// Every `run-*` cgroup under every kakoi base.
pub fn run_cgroups() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for base in cgroup_bases() {
        if let Ok(dir) = std::fs::read_dir(&base) {
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().starts_with("run-") {
                    out.insert(entry.path());
                }
            }
        }
    }
    out
}

/// Launcher pid encoded in a `run-<pid>-<start>-<n>` cgroup name.
pub fn run_cgroup_launcher(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_prefix("run-")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// `run-*` cgroups created by one of the launchers `pids`.
pub fn run_cgroups_of(pids: &BTreeSet<u32>) -> Vec<PathBuf> {
    run_cgroups()
        .into_iter()
        .filter(|p| run_cgroup_launcher(p).is_some_and(|pid| pids.contains(&pid)))
        .collect()
}

/// The pool of pre-made network namespaces (`src/sandbox/netns.rs`): persistent by design
/// (one nsfs mount and one lock file per slot), so leftover counts leave it out.
pub const NETNS_POOL: &str = "/run/kakoi/netns-v1";

/// Lines of this process's mountinfo (the host mount namespace), without the persistent
/// network namespace pool.
pub fn host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains(NETNS_POOL))
        .map(|l| {
            // Drop the mount id and parent id, which change on remounts elsewhere.
            l.split_whitespace().skip(2).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// Entries under `dir` (recursively, up to `depth` levels).
pub fn tree(dir: &Path, depth: usize) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    if depth == 0 {
        return out;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.flatten() {
            let p = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(tree(&p, depth - 1));
            }
            out.insert(p);
        }
    }
    out
}

/// Entries of the host's /tmp whose name starts with `kakoi`.
pub fn tmp_kakoi_entries() -> BTreeSet<PathBuf> {
    std::fs::read_dir("/tmp")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("kakoi"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Open fds of this process.
pub fn open_fds() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What a run could leave behind, host-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Live processes with a sandbox uid (any launcher's).
    pub sandbox_processes: usize,
    /// `run-*` cgroups (any launcher's).
    pub run_cgroups: usize,
    /// Host mounts.
    pub mounts: Vec<String>,
    /// Entries under /run/kakoi.
    pub runtime_entries: BTreeSet<PathBuf>,
    /// /tmp/kakoi* entries.
    pub tmp_entries: BTreeSet<PathBuf>,
    /// Open fds of this process.
    pub fds: BTreeSet<String>,
}

/// Snapshot of [`Leftovers`].
pub fn leftovers() -> Leftovers {
    Leftovers {
        sandbox_processes: sandbox_processes().len(),
        run_cgroups: run_cgroups().len(),
        mounts: host_mounts(),
        runtime_entries: tree(Path::new("/run/kakoi"), 3)
            .into_iter()
            .filter(|p| !p.starts_with(NETNS_POOL))
            .collect(),
        tmp_entries: tmp_kakoi_entries(),
        fds: open_fds(),
    }
}

/// A unique name for host files a test creates.
pub fn unique(tag: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("itest-{tag}-{}-{n}", std::process::id())
}

/// A scratch directory on the host (removed on drop).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("itest-scratch-")
        .tempdir()
        .expect("create scratch dir")
}

/// Path of a fixture.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}
pub mod attack;
