//! What this host supports, and which isolation layers a run will get here.
//!
//! Everything in this module is read-only detection; nothing is printed (the `doctor`
//! subcommand renders a [`HostReport`]). The system roots (`/proc`, `/sys`, `/etc` and `/`)
//! are parameters ([`HostRoots`]) so unit tests run against a fake tree in a temp dir. The
//! two facts that cannot be read from files — a live `unshare` probe of user namespaces and
//! the Landlock ABI queried from the kernel — are gathered separately into [`LiveFacts`], so
//! tests pass fabricated ones and spawn nothing.
//!
//! The cgroup part is a small mountinfo-based detector of its own; `crate::sandbox::cgroup`
//! owns the driver that actually writes cgroups and may later replace it.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Filesystem roots the detection reads from (defaults: the real `/proc`, `/sys`, `/etc`, `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoots {
    /// Where procfs is (`/proc`).
    pub proc: PathBuf,
    /// Where sysfs is (`/sys`).
    pub sys: PathBuf,
    /// Where the host configuration is (`/etc`), used to look for AppArmor profiles.
    pub etc: PathBuf,
    /// The filesystem root (`/`), used for container marker files such as `/.dockerenv`
    /// and for mount points outside `/proc` and `/sys`.
    pub root: PathBuf,
}

impl Default for HostRoots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
            etc: PathBuf::from("/etc"),
            root: PathBuf::from("/"),
        }
    }
}

impl HostRoots {
    /// All four roots under one directory (`<base>/proc`, `<base>/sys`, `<base>/etc`, `<base>`).
    pub fn under(base: &Path) -> Self {
        Self {
            proc: base.join("proc"),
            sys: base.join("sys"),
            etc: base.join("etc"),
            root: base.to_path_buf(),
        }
    }

    /// Map an absolute host path (for example a mount point from mountinfo) into these roots.
    pub fn resolve(&self, host_path: &Path) -> PathBuf {
        let relative: PathBuf = host_path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        for (prefix, base) in [("proc", &self.proc), ("sys", &self.sys), ("etc", &self.etc)] {
            if let Ok(rest) = relative.strip_prefix(prefix) {
                return base.join(rest);
            }
        }
        self.root.join(relative)
    }

    fn proc_file(&self, relative: &str) -> PathBuf {
        self.proc.join(relative)
    }
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works as kakoi needs it.
    Ok,
    /// Works with a reduced guarantee or a cost; the detail says which.
    Warn,
    /// Broken; the remedy says how to fix it.
    Fail,
    /// A fact worth knowing, neither good nor bad.
    Info,
}

/// One line of the doctor output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name of what was checked (for example `user namespaces`).
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found, in one sentence.
    pub detail: String,
    /// How to fix it, when there is a fix; may span several lines.
    pub remedy: Option<String>,
}

impl Check {
    fn new(name: &str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            status,
            detail: detail.into(),
            remedy: None,
        }
    }

    fn with_remedy(mut self, remedy: impl Into<String>) -> Self {
        self.remedy = Some(remedy.into());
        self
    }
}

/// One isolation layer and whether a run on this host gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layer {
    /// Layer name (`user namespace`, `cgroup`, `landlock`, ...).
    pub name: String,
    /// Whether a run gets this layer here.
    pub available: bool,
    /// What exactly the run gets, or what replaces it.
    pub detail: String,
}

/// Result of running `unshare` with every namespace kakoi creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum UsernsProbe {
    /// `unshare` created all the namespaces and ran `true`.
    Succeeded,
    /// `unshare` ran and failed.
    Failed {
        /// Its exit code, if it exited.
        exit_code: Option<i32>,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// No `unshare` binary on `PATH`: the probe could not run.
    UnshareMissing,
    /// The probe could not be run or did not finish.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// The command line of the live user namespace probe.
pub const USERNS_PROBE_ARGS: &[&str] = &[
    "--user",
    "--map-root-user",
    "--pid",
    "--fork",
    "--net",
    "--mount",
    "--ipc",
    "--uts",
    "--cgroup",
    "true",
];

/// How long the live probe may take before it is killed.
const USERNS_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl UsernsProbe {
    /// Run `unshare` with a new user, pid, net, mount, ipc, uts and cgroup namespace.
    ///
    /// There is no in-process probe: creating a user namespace needs `unshare(2)` or a
    /// fork, both outside safe Rust and unwise in a possibly multi-threaded process.
    pub fn run() -> Self {
        let spawned = Command::new("unshare")
            .args(USERNS_PROBE_ARGS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Self::UnshareMissing,
            Err(err) => {
                return Self::Error {
                    message: format!("cannot run unshare: {err}"),
                };
            }
        };
        let deadline = Instant::now() + USERNS_PROBE_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => {
                    // Best effort: the child is ours; kill and reap it.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Self::Error {
                        message: format!("unshare did not finish in {USERNS_PROBE_TIMEOUT:?}"),
                    };
                }
                Err(err) => {
                    return Self::Error {
                        message: format!("cannot wait for unshare: {err}"),
                    };
                }
            }
        };
        if status.success() {
            return Self::Succeeded;
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        Self::Failed {
            exit_code: status.code(),
            stderr: stderr.trim().to_string(),
        }
    }
}

/// What the kernel answered to the Landlock ABI version query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum LandlockProbe {
    /// Landlock is enabled; `abi` is the kernel's ABI version.
    Available {
        /// The ABI version.
        abi: u32,
    },
    /// Built into the kernel but not enabled at boot (`EOPNOTSUPP`).
    NotEnabled,
    /// Not built into the kernel (`ENOSYS`).
    NotImplemented,
}

impl LandlockProbe {
    /// Ask the running kernel through the `landlock` crate.
    ///
    /// `RestrictSelf` with no flags and `no_new_privs(false)` only performs the
    /// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)` query: it neither
    /// restricts this process nor sets no_new_privs.
    pub fn query() -> Self {
        match landlock::RestrictSelf::default()
            .no_new_privs(false)
            .apply()
        {
            Ok(status) => Self::from_status(status.landlock),
            Err(_) => Self::NotImplemented,
        }
    }

    fn from_status(status: landlock::LandlockStatus) -> Self {
        match status {
            landlock::LandlockStatus::Available {
                effective_abi,
                kernel_abi,
            } => {
                let abi = kernel_abi
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(effective_abi as u32);
                Self::Available { abi }
            }
            landlock::LandlockStatus::NotEnabled => Self::NotEnabled,
            _ => Self::NotImplemented,
        }
    }
}

/// Facts that cannot be read from files: gathered once, passed to [`HostReport::detect`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveFacts {
    /// The kakoi binary, named in the AppArmor profile remedy.
    pub exe: Option<PathBuf>,
    /// The live user namespace probe, if it was run.
    pub userns: Option<UsernsProbe>,
    /// The kernel's Landlock answer, if it was asked.
    pub landlock: Option<LandlockProbe>,
}

impl LiveFacts {
    /// Run the live probes on this host (spawns `unshare` once).
    pub fn probe() -> Self {
        Self {
            exe: std::env::current_exe().ok(),
            userns: Some(UsernsProbe::run()),
            landlock: Some(LandlockProbe::query()),
        }
    }
}

/// User namespace facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsernsInfo {
    /// `/proc/sys/user/max_user_namespaces` (0 disables user namespaces).
    pub max_user_namespaces: Option<u64>,
    /// Debian's `/proc/sys/kernel/unprivileged_userns_clone` (0 = root only).
    pub unprivileged_userns_clone: Option<u64>,
    /// Ubuntu's `/proc/sys/kernel/apparmor_restrict_unprivileged_userns` (1 = restricted).
    pub apparmor_restrict_unprivileged_userns: Option<u64>,
    /// An AppArmor profile under `/etc/apparmor.d` granting `userns` to kakoi, if any.
    pub apparmor_profile: Option<PathBuf>,
    /// The live probe.
    pub probe: Option<UsernsProbe>,
    /// Whether kakoi can create its namespaces here (the probe wins over the sysctls).
    pub usable: bool,
}

/// How cgroups are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// No cgroup filesystem is mounted.
    None,
    /// Only v1 hierarchies.
    V1,
    /// v1 controller hierarchies plus a cgroup2 mount (usually `/sys/fs/cgroup/unified`).
    Hybrid,
    /// Only the unified hierarchy.
    V2,
}

/// One cgroup filesystem mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupMount {
    /// Mount point on the host.
    pub mount_point: PathBuf,
    /// `cgroup` or `cgroup2`.
    pub fs_type: String,
    /// Controllers bound to it (v1), or listed in its `cgroup.controllers` (v2).
    pub controllers: Vec<String>,
    /// v1 hierarchy name (`name=...`), if any.
    pub name: Option<String>,
    /// Whether it was mounted with `favordynmods`.
    pub favordynmods: bool,
    /// Whether the mount is read-only.
    pub read_only: bool,
}

/// Whether one controller kakoi limits with can be written by this uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerAccess {
    /// `memory`, `pids` or `cpu`.
    pub controller: String,
    /// The directory kakoi would create run cgroups under, if the controller is mounted.
    pub path: Option<PathBuf>,
    /// Whether this uid can create cgroups there.
    pub writable: bool,
}

/// cgroup facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupInfo {
    /// v1, hybrid or v2.
    pub mode: CgroupMode,
    /// Every cgroup and cgroup2 mount.
    pub mounts: Vec<CgroupMount>,
    /// Access to the controllers kakoi limits with.
    pub access: Vec<ControllerAccess>,
    /// Whether any cgroup mount has `favordynmods` (fast v1 attach).
    pub favordynmods: bool,
}

impl CgroupInfo {
    /// Names of the writable controllers among memory, pids and cpu.
    pub fn writable_controllers(&self) -> Vec<String> {
        self.access
            .iter()
            .filter(|a| a.writable)
            .map(|a| a.controller.clone())
            .collect()
    }
}

/// Where the Landlock ABI figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LandlockSource {
    /// The kernel's answer to the ABI version query (through the `landlock` crate).
    Syscall,
    /// `/sys/kernel/security/lsm` plus the ABI table by kernel version.
    KernelVersion,
    /// Nothing could be determined.
    Unknown,
}

/// Landlock facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockInfo {
    /// ABI version, if Landlock is available.
    pub abi: Option<u32>,
    /// How the ABI was found.
    pub source: LandlockSource,
    /// Whether `landlock` is listed in `/sys/kernel/security/lsm` (None: unreadable).
    pub lsm_listed: Option<bool>,
    /// Kernel release from `/proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
}

/// seccomp facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeccompInfo {
    /// `Seccomp:` of `/proc/self/status`: 0 none, 1 strict, 2 filter (None: no seccomp).
    pub mode: Option<u32>,
    /// `Seccomp_filters:` of `/proc/self/status`.
    pub filters: Option<u32>,
    /// `/proc/sys/kernel/seccomp/actions_avail`.
    pub actions: Vec<String>,
}

/// Container detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// Whether the evidence says this process runs inside a container.
    pub likely: bool,
    /// Every hint found, strong or weak.
    pub evidence: Vec<String>,
}

/// Whether procfs is fully visible (required to mount a new /proc inside a user namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcVisibility {
    /// No mount covers anything below `/proc` (except permanently empty directories).
    pub fully_visible: bool,
    /// Mount points below `/proc` that hide part of it.
    pub masked: Vec<PathBuf>,
}

/// Everything `kakoi doctor` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReport {
    /// Effective uid (from `/proc/self/status`).
    pub uid: Option<u32>,
    /// Whether kakoi runs as root.
    pub root: bool,
    /// User namespaces.
    pub userns: UsernsInfo,
    /// cgroups.
    pub cgroup: CgroupInfo,
    /// Landlock.
    pub landlock: LandlockInfo,
    /// seccomp.
    pub seccomp: SeccompInfo,
    /// Container detection.
    pub container: ContainerInfo,
    /// procfs visibility.
    pub proc_mount: ProcVisibility,
    /// Every check, in output order.
    pub checks: Vec<Check>,
    /// The isolation layers a run gets here.
    pub layers: Vec<Layer>,
    /// Whether a run can start at all (user namespaces usable).
    pub run_can_start: bool,
    /// The pool of pre-made network namespaces (root launchers only; see
    /// `crate::sandbox::netns`), `None` when runs create a fresh one each.
    pub netns_pool: Option<NetnsPoolInfo>,
}

/// State of the pre-made network namespaces under `/run/kakoi/netns-v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetnsPoolInfo {
    /// The pool directory.
    pub dir: PathBuf,
    /// Slots a launcher uses with the default configuration.
    pub size: usize,
    /// Slots whose namespace exists now.
    pub made: usize,
    /// Slots held by a run right now.
    pub busy: usize,
}

impl HostReport {
    /// Detect the real host: default roots, live probes.
    pub fn detect_host() -> Self {
        let mut report = Self::detect(&HostRoots::default(), &LiveFacts::probe());
        if report.root {
            let size = crate::sandbox::SandboxConfig::default_netns_pool();
            if let Ok(Some(pool)) =
                crate::sandbox::netns::NetnsPool::open(Path::new("/run/kakoi"), size)
            {
                let (made, busy) = pool.census();
                report.checks.push(Check::new(
                    "network namespaces",
                    Status::Info,
                    format!(
                        "runs join one of up to {size} pre-made namespaces with only lo (under {}: {made} made, {busy} in use), or get a fresh one when all are busy",
                        pool.dir().display()
                    ),
                ));
                report.netns_pool = Some(NetnsPoolInfo {
                    dir: pool.dir().to_owned(),
                    size,
                    made,
                    busy,
                });
            }
        }
        report
    }

    /// Detect from the given roots and live facts; reads files only.
    pub fn detect(roots: &HostRoots, live: &LiveFacts) -> Self {
        let process = ProcessIds::read(roots);
        let root = process.uid == Some(0);
        let mounts = read_mountinfo(&roots.proc_file("self/mountinfo"));
        let userns = detect_userns(roots, live, root);
        let cgroup = detect_cgroup(roots, &mounts, &process);
        let landlock = detect_landlock(roots, live);
        let seccomp = detect_seccomp(roots);
        let container = detect_container(roots, &mounts);
        let proc_mount = detect_proc_visibility(&mounts);

        let mut report = Self {
            uid: process.uid,
            root,
            userns,
            cgroup,
            landlock,
            seccomp,
            container,
            proc_mount,
            checks: Vec::new(),
            layers: Vec::new(),
            run_can_start: false,
            netns_pool: None,
        };
        report.run_can_start = report.userns.usable;
        report.checks = build_checks(&report, live);
        report.layers = build_layers(&report, roots);
        report
    }
}

// ---------------------------------------------------------------------------------------
// Small readers

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn read_number(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// The `Key:\tvalue` lines of `/proc/<pid>/status`.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then_some(v.trim())
    })
}

/// uid, gid and supplementary groups of this process, from `/proc/self/status`.
#[derive(Debug, Clone, Default)]
struct ProcessIds {
    uid: Option<u32>,
    gids: Vec<u32>,
}

impl ProcessIds {
    fn read(roots: &HostRoots) -> Self {
        let Ok(status) = fs::read_to_string(roots.proc_file("self/status")) else {
            return Self::default();
        };
        // Uid: real effective saved fs — the effective one decides permissions.
        let effective = |key| {
            status_field(&status, key)
                .and_then(|v| v.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok())
        };
        let mut gids: Vec<u32> = effective("Gid").into_iter().collect();
        if let Some(groups) = status_field(&status, "Groups") {
            gids.extend(
                groups
                    .split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
        Self {
            uid: effective("Uid"),
            gids,
        }
    }

    /// Whether this process may create entries in `dir` (DAC only; root bypasses DAC).
    fn can_write(&self, dir: &Path) -> bool {
        let Some(uid) = self.uid else { return false };
        let Ok(meta) = fs::metadata(dir) else {
            return false;
        };
        if uid == 0 {
            return true;
        }
        let mode = meta.mode();
        if meta.uid() == uid {
            mode & 0o200 != 0
        } else if self.gids.contains(&meta.gid()) {
            mode & 0o020 != 0
        } else {
            mode & 0o002 != 0
        }
    }
}

/// One line of `/proc/self/mountinfo` (proc_pid_mountinfo(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    root: String,
    mount_point: PathBuf,
    mount_options: Vec<String>,
    fs_type: String,
    super_options: Vec<String>,
}

impl MountEntry {
    fn read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }

    fn has_super_option(&self, option: &str) -> bool {
        self.super_options.iter().any(|o| o == option)
    }
}

/// Undo the octal escapes (`\040` for space) the kernel uses in mountinfo paths.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escaped {
            Some(value) => {
                out.push(value);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split_whitespace().collect();
            let tail: Vec<&str> = after.split_whitespace().collect();
            if fields.len() < 6 || tail.len() < 2 {
                return None;
            }
            Some(MountEntry {
                root: unescape_mount_path(fields[3]),
                mount_point: PathBuf::from(unescape_mount_path(fields[4])),
                mount_options: fields[5].split(',').map(str::to_string).collect(),
                fs_type: tail[0].to_string(),
                super_options: tail
                    .get(2)
                    .map(|o| o.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn read_mountinfo(path: &Path) -> Vec<MountEntry> {
    fs::read_to_string(path)
        .map(|text| parse_mountinfo(&text))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// User namespaces

fn find_apparmor_profile(roots: &HostRoots, exe: Option<&Path>) -> Option<PathBuf> {
    let entries = fs::read_dir(roots.etc.join("apparmor.d")).ok()?;
    let exe = exe.map(|p| p.to_string_lossy().into_owned());
    entries.flatten().map(|e| e.path()).find(|path| {
        let Ok(text) = fs::read_to_string(path) else {
            return false;
        };
        let names_kakoi = match &exe {
            Some(exe) => text.contains(exe.as_str()),
            None => text.contains("kakoi"),
        };
        names_kakoi && text.lines().any(|l| l.trim() == "userns,")
    })
}

fn detect_userns(roots: &HostRoots, live: &LiveFacts, root: bool) -> UsernsInfo {
    let max = read_number(&roots.proc_file("sys/user/max_user_namespaces"));
    let clone = read_number(&roots.proc_file("sys/kernel/unprivileged_userns_clone"));
    let restrict =
        read_number(&roots.proc_file("sys/kernel/apparmor_restrict_unprivileged_userns"));
    let profile = find_apparmor_profile(roots, live.exe.as_deref());
    let by_sysctl = max != Some(0)
        && (root || (clone != Some(0) && (restrict != Some(1) || profile.is_some())));
    let usable = match &live.userns {
        Some(UsernsProbe::Succeeded) => true,
        Some(UsernsProbe::Failed { .. }) => false,
        _ => by_sysctl,
    };
    UsernsInfo {
        max_user_namespaces: max,
        unprivileged_userns_clone: clone,
        apparmor_restrict_unprivileged_userns: restrict,
        apparmor_profile: profile,
        probe: live.userns.clone(),
        usable,
    }
}

/// The AppArmor profile that lets one binary create user namespaces on Ubuntu 23.10+.
pub fn apparmor_profile_text(exe: &Path) -> String {
    format!(
        "abi <abi/4.0>,\ninclude <tunables/global>\n\nprofile kakoi {} flags=(unconfined) {{\n  userns,\n\n  include if exists <local/kakoi>\n}}\n",
        exe.display()
    )
}

fn apparmor_remedy(exe: &Path) -> String {
    format!(
        "allow kakoi alone (a per-binary AppArmor profile), as root:\n\
         cat > /etc/apparmor.d/kakoi <<'EOF'\n{}EOF\n\
         apparmor_parser -r /etc/apparmor.d/kakoi\n\
         or lift the restriction for every program: sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        apparmor_profile_text(exe)
    )
}

fn userns_checks(report: &HostReport, live: &LiveFacts, checks: &mut Vec<Check>) {
    let info = &report.userns;
    let who = if report.root { "root" } else { "non-root" };
    match report.uid {
        Some(uid) => checks.push(Check::new(
            "user",
            Status::Info,
            format!(
                "running as uid {uid} ({who}){}",
                if report.root {
                    "; the sandbox still runs as uid 1000 inside a user namespace, without capabilities"
                } else {
                    "; rootless mode: namespaces need unprivileged user namespaces"
                }
            ),
        )),
        None => checks.push(Check::new(
            "user",
            Status::Warn,
            "cannot read Uid from /proc/self/status",
        )),
    }

    let max_check = match info.max_user_namespaces {
        Some(0) => Check::new(
            "user namespaces",
            Status::Fail,
            "disabled: user.max_user_namespaces = 0",
        )
        .with_remedy("sysctl -w user.max_user_namespaces=15000 (persist it in /etc/sysctl.d/)"),
        Some(max) => Check::new(
            "user namespaces",
            Status::Ok,
            format!("enabled (user.max_user_namespaces = {max})"),
        ),
        None => Check::new(
            "user namespaces",
            Status::Warn,
            "cannot read /proc/sys/user/max_user_namespaces (kernel without CONFIG_USER_NS, or /proc/sys hidden)",
        ),
    };
    checks.push(max_check);

    if let Some(clone) = info.unprivileged_userns_clone {
        let check = match (clone, report.root) {
            (0, false) => Check::new(
                "unprivileged userns",
                Status::Fail,
                "kernel.unprivileged_userns_clone = 0: only root may create user namespaces",
            )
            .with_remedy("sysctl -w kernel.unprivileged_userns_clone=1, or run kakoi as root"),
            (0, true) => Check::new(
                "unprivileged userns",
                Status::Info,
                "kernel.unprivileged_userns_clone = 0 (root only); kakoi runs as root, so it does not apply",
            ),
            _ => Check::new(
                "unprivileged userns",
                Status::Ok,
                format!("kernel.unprivileged_userns_clone = {clone}"),
            ),
        };
        checks.push(check);
    }

    if let Some(restrict) = info.apparmor_restrict_unprivileged_userns {
        let exe = live
            .exe
            .clone()
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/kakoi"));
        let check = match (restrict, report.root, &info.apparmor_profile) {
            (1, true, _) => Check::new(
                "apparmor userns",
                Status::Info,
                "kernel.apparmor_restrict_unprivileged_userns = 1, which does not apply to root",
            ),
            (1, false, Some(profile)) => Check::new(
                "apparmor userns",
                Status::Ok,
                format!(
                    "kernel.apparmor_restrict_unprivileged_userns = 1, and {} grants kakoi `userns,`",
                    profile.display()
                ),
            ),
            (1, false, None) => Check::new(
                "apparmor userns",
                Status::Fail,
                "kernel.apparmor_restrict_unprivileged_userns = 1 (Ubuntu 23.10+): unconfined programs may not create user namespaces (uid_map writes fail with EPERM)",
            )
            .with_remedy(apparmor_remedy(&exe)),
            (value, _, _) => Check::new(
                "apparmor userns",
                Status::Ok,
                format!("kernel.apparmor_restrict_unprivileged_userns = {value}"),
            ),
        };
        checks.push(check);
    }

    let command = format!("unshare {}", USERNS_PROBE_ARGS.join(" "));
    let probe = match &info.probe {
        Some(UsernsProbe::Succeeded) => Check::new(
            "userns probe",
            Status::Ok,
            format!("`{command}` succeeded (user, pid, net, mount, ipc, uts, cgroup)"),
        ),
        Some(UsernsProbe::Failed { exit_code, stderr }) => {
            let code = exit_code.map_or_else(|| "a signal".to_string(), |c| c.to_string());
            let mut check = Check::new(
                "userns probe",
                Status::Fail,
                format!("`{command}` failed (exit {code}): {stderr}"),
            );
            if report.container.likely {
                check = check.with_remedy(DOCKER_REMEDY);
            }
            check
        }
        Some(UsernsProbe::UnshareMissing) => Check::new(
            "userns probe",
            Status::Info,
            "`unshare` (util-linux) is not installed, so namespaces were not tried live; the verdict rests on the sysctls",
        ),
        Some(UsernsProbe::Error { message }) => {
            Check::new("userns probe", Status::Warn, message.clone())
        }
        None => Check::new("userns probe", Status::Info, "not run"),
    };
    checks.push(probe);
}

// ---------------------------------------------------------------------------------------
// cgroups

const LIMIT_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// v1 controllers whose names appear as super options of a `cgroup` mount.
const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// `/proc/self/cgroup`: hierarchy id, controllers, path.
fn read_self_cgroups(roots: &HostRoots) -> Vec<(String, String)> {
    fs::read_to_string(roots.proc_file("self/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            Some((controllers, path))
        })
        .collect()
}

/// Join a cgroup path (`/user.slice/...`) below a mount point, inside the roots.
fn cgroup_dir(roots: &HostRoots, mount: &MountEntry, cgroup_path: &str) -> PathBuf {
    // A mount whose root is not `/` (inside a cgroup namespace) shows paths relative to it.
    let relative = cgroup_path
        .strip_prefix(mount.root.as_str())
        .unwrap_or(cgroup_path)
        .trim_start_matches('/');
    let base = roots.resolve(&mount.mount_point);
    if relative.is_empty() {
        base
    } else {
        base.join(relative)
    }
}

fn detect_cgroup(roots: &HostRoots, mounts: &[MountEntry], process: &ProcessIds) -> CgroupInfo {
    let own = read_self_cgroups(roots);
    let mut out = Vec::new();
    let mut access = Vec::new();
    let mut v1_seen = false;
    let mut v2_mount: Option<&MountEntry> = None;

    for mount in mounts {
        match mount.fs_type.as_str() {
            "cgroup" => {
                v1_seen = true;
                let controllers: Vec<String> = mount
                    .super_options
                    .iter()
                    .filter(|o| V1_CONTROLLERS.contains(&o.as_str()))
                    .cloned()
                    .collect();
                let name = mount
                    .super_options
                    .iter()
                    .find_map(|o| o.strip_prefix("name=").map(str::to_string));
                out.push(CgroupMount {
                    mount_point: mount.mount_point.clone(),
                    fs_type: mount.fs_type.clone(),
                    controllers,
                    name,
                    favordynmods: mount.has_super_option("favordynmods"),
                    read_only: mount.read_only(),
                });
            }
            "cgroup2" => {
                let listed =
                    read_trimmed(&roots.resolve(&mount.mount_point).join("cgroup.controllers"))
                        .unwrap_or_default();
                v2_mount.get_or_insert(mount);
                out.push(CgroupMount {
                    mount_point: mount.mount_point.clone(),
                    fs_type: mount.fs_type.clone(),
                    controllers: listed.split_whitespace().map(str::to_string).collect(),
                    name: None,
                    favordynmods: mount.has_super_option("favordynmods"),
                    read_only: mount.read_only(),
                });
            }
            _ => {}
        }
    }

    let mode = match (v1_seen, v2_mount.is_some()) {
        (false, false) => CgroupMode::None,
        (true, false) => CgroupMode::V1,
        (true, true) => CgroupMode::Hybrid,
        (false, true) => CgroupMode::V2,
    };

    for controller in LIMIT_CONTROLLERS {
        // A controller bound to a v1 hierarchy is not available on v2 (hybrid hosts).
        let carries = |m: &&MountEntry| {
            m.fs_type == "cgroup" && m.super_options.iter().any(|o| o == controller)
        };
        // The first mount point of the controller is where a run's cgroup goes (as the
        // sandbox's detection does); of several mounts stacked there the last one is the one
        // visible (a container's read-only cgroup with a delegated subtree mounted over it).
        let v1 = mounts.iter().find(carries).map(|first| {
            mounts
                .iter()
                .rev()
                .filter(carries)
                .find(|m| m.mount_point == first.mount_point)
                .unwrap_or(first)
        });
        let entry = if let Some(mount) = v1 {
            let path = own
                .iter()
                .find(|(list, _)| list.split(',').any(|c| c == controller))
                .map_or("/", |(_, path)| path.as_str());
            // Our own cgroup outside the mount (a bind of another subtree): runs go under
            // the mount point.
            let inside = mount.root == "/"
                || path == mount.root
                || path.starts_with(&format!("{}/", mount.root));
            let dir = cgroup_dir(roots, mount, if inside { path } else { &mount.root });
            let pre_made = dir.join("kakoi");
            let writable_dir = if process.can_write(&pre_made) {
                Some(pre_made)
            } else if process.can_write(&dir) {
                Some(dir.clone())
            } else {
                None
            };
            ControllerAccess {
                controller: controller.to_string(),
                writable: !mount.read_only() && writable_dir.is_some(),
                path: Some(writable_dir.unwrap_or(dir)),
            }
        } else if let Some(mount) = v2_mount {
            let path = own
                .iter()
                .find(|(list, _)| list.is_empty())
                .map_or("/", |(_, path)| path.as_str());
            let dir = cgroup_dir(roots, mount, path);
            let offered = read_trimmed(&dir.join("cgroup.controllers")).unwrap_or_default();
            let offered = offered.split_whitespace().any(|c| c == controller);
            // Delegation: creating children needs the directory, enabling controllers for
            // them needs cgroup.subtree_control (cgroups(7), "Cgroup v2 delegation").
            let delegated = process.can_write(&dir)
                && (process.uid == Some(0)
                    || writable_file(&dir.join("cgroup.subtree_control"), process));
            ControllerAccess {
                controller: controller.to_string(),
                writable: offered && delegated && !mount.read_only(),
                path: Some(dir),
            }
        } else {
            ControllerAccess {
                controller: controller.to_string(),
                path: None,
                writable: false,
            }
        };
        access.push(entry);
    }

    let favordynmods = out.iter().any(|m| m.favordynmods);
    CgroupInfo {
        mode,
        mounts: out,
        access,
        favordynmods,
    }
}

fn writable_file(path: &Path, process: &ProcessIds) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    match process.uid {
        Some(0) => true,
        Some(uid) if meta.uid() == uid => meta.mode() & 0o200 != 0,
        Some(_) if process.gids.contains(&meta.gid()) => meta.mode() & 0o020 != 0,
        Some(_) => meta.mode() & 0o002 != 0,
        None => false,
    }
}

fn cgroup_checks(report: &HostReport, checks: &mut Vec<Check>) {
    let info = &report.cgroup;
    let v1: Vec<String> = info
        .mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup")
        .map(|m| {
            let mut what = m.controllers.join(",");
            if let Some(name) = &m.name {
                if !what.is_empty() {
                    what.push(',');
                }
                what.push_str(&format!("name={name}"));
            }
            what
        })
        .collect();
    let v2 = info.mounts.iter().find(|m| m.fs_type == "cgroup2");
    let v2_text = v2.map(|m| {
        let list = if m.controllers.is_empty() {
            "no controllers".to_string()
        } else {
            m.controllers.join(" ")
        };
        format!("cgroup2 at {} ({list})", m.mount_point.display())
    });
    let detail = match info.mode {
        CgroupMode::None => "no cgroup filesystem is mounted".to_string(),
        CgroupMode::V1 => format!("v1: {}", v1.join("; ")),
        CgroupMode::Hybrid => format!(
            "hybrid: v1 hierarchies {}; {}",
            v1.join("; "),
            v2_text.unwrap_or_default()
        ),
        CgroupMode::V2 => format!("v2: {}", v2_text.unwrap_or_default()),
    };
    let status = if info.mode == CgroupMode::None {
        Status::Warn
    } else {
        Status::Info
    };
    checks.push(Check::new("cgroup version", status, detail));

    let writable = info.writable_controllers();
    let missing: Vec<&str> = info
        .access
        .iter()
        .filter(|a| !a.writable)
        .map(|a| a.controller.as_str())
        .collect();
    let places: Vec<String> = info
        .access
        .iter()
        .filter(|a| a.writable)
        .filter_map(|a| {
            a.path
                .as_ref()
                .map(|p| format!("{} at {}", a.controller, p.display()))
        })
        .collect();
    let check = if missing.is_empty() {
        Check::new(
            "cgroup limits",
            Status::Ok,
            format!("writable for this uid: {}", places.join(", ")),
        )
    } else {
        let fallback = rlimit_fallback(&missing);
        let detail = if writable.is_empty() {
            format!("no writable cgroup for memory, pids or cpu; {fallback}")
        } else {
            format!(
                "writable: {}; not writable: {}; {fallback}",
                places.join(", "),
                missing.join(", ")
            )
        };
        let remedy = match (info.mode, report.root) {
            (_, true) => "mount the missing controllers (v1: mount -t cgroup -o <controller> cgroup /sys/fs/cgroup/<controller>) or remount read-write".to_string(),
            (CgroupMode::V2, false) => "run kakoi in a delegated cgroup: systemd-run --user --scope -p Delegate=yes kakoi ..., or start it from a systemd unit with Delegate=yes (check that memory, pids and cpu are in the cgroup's cgroup.controllers)".to_string(),
            (_, false) => "cgroup v1 cannot be delegated safely; run kakoi as root, or as root pre-create a subtree for your uid: for c in memory pids cpu; do mkdir -p /sys/fs/cgroup/$c/kakoi && chown -R $USER /sys/fs/cgroup/$c/kakoi; done".to_string(),
        };
        Check::new("cgroup limits", Status::Warn, detail).with_remedy(remedy)
    };
    checks.push(check);

    if matches!(info.mode, CgroupMode::V1 | CgroupMode::Hybrid) {
        let check = if let Some(mount) = info.mounts.iter().find(|m| m.favordynmods) {
            Check::new(
                "cgroup v1 attach latency",
                Status::Ok,
                format!(
                    "{} is mounted with favordynmods: attaching a run to its v1 cgroups skips the RCU grace period (measured 0.36 ms median)",
                    mount.mount_point.display()
                ),
            )
        } else {
            let v2_remount = v2.map_or_else(String::new, |m| {
                format!(
                    "\nor remount the cgroup2 hierarchy: mount -o remount,favordynmods {}",
                    m.mount_point.display()
                )
            });
            Check::new(
                "cgroup v1 attach latency",
                Status::Info,
                "no cgroup mount has favordynmods: not needed, a sandbox moves itself into its v1 cgroups (writing 0 to each `tasks`, the one move without the RCU grace period; ~0.3 ms); only the fallback attach by pid, when a `tasks` file cannot be opened, waits for one (measured 5.3 ms median, 20.8 ms p95)",
            )
            .with_remedy(format!(
                "only if runs report `isolation.cgroup.attach` = \"migrate\": as root, opt in with `kakoi doctor --enable-favordynmods` (cuts that attach to 0.36 ms median, at the cost of slightly slower fork/exit host-wide; on 6.18 it cannot be undone without a reboot); it runs:\n\
                 mkdir -p /run/kakoi/kakoi-favordynmods && mount -t cgroup -o none,name=kakoi-favordynmods,favordynmods kakoi-favordynmods /run/kakoi/kakoi-favordynmods{v2_remount}"
            ))
        };
        checks.push(check);
    }
}

fn rlimit_fallback(missing: &[&str]) -> String {
    let mut parts = Vec::new();
    for controller in missing {
        match *controller {
            "memory" => parts.push("memory via RLIMIT_AS (address space, not resident memory)"),
            "pids" => parts.push("pids via RLIMIT_NPROC"),
            "cpu" => parts.push("cpu: no bandwidth cap, only RLIMIT_CPU and the wall clock"),
            _ => {}
        }
    }
    format!("fallback to rlimits ({})", parts.join("; "))
}

// ---------------------------------------------------------------------------------------
// Landlock

/// Kernel version where each Landlock ABI appeared (docs.kernel.org userspace-api/landlock).
const LANDLOCK_ABI_TABLE: [((u32, u32), u32); 7] = [
    ((5, 13), 1),
    ((5, 19), 2),
    ((6, 2), 3),
    ((6, 7), 4),
    ((6, 10), 5),
    ((6, 12), 6),
    ((6, 15), 7),
];

/// `major.minor` of a kernel release string such as `6.18.44-fc-v769`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The Landlock ABI a mainline kernel of this release has (None: older than 5.13).
///
/// Distribution kernels may backport Landlock, so this is a fallback for when the kernel
/// cannot be asked.
pub fn landlock_abi_for_kernel(release: &str) -> Option<u32> {
    let version = kernel_version(release)?;
    LANDLOCK_ABI_TABLE
        .iter()
        .rev()
        .find(|(since, _)| version >= *since)
        .map(|(_, abi)| *abi)
}

fn detect_landlock(roots: &HostRoots, live: &LiveFacts) -> LandlockInfo {
    let kernel = read_trimmed(&roots.proc_file("sys/kernel/osrelease"));
    let lsm_listed = read_trimmed(&roots.sys.join("kernel/security/lsm"))
        .map(|list| list.split(',').any(|l| l == "landlock"));
    let (abi, source) = match live.landlock {
        Some(LandlockProbe::Available { abi }) => (Some(abi), LandlockSource::Syscall),
        Some(_) => (None, LandlockSource::Syscall),
        None => match (
            lsm_listed,
            kernel.as_deref().and_then(landlock_abi_for_kernel),
        ) {
            (Some(false), _) => (None, LandlockSource::KernelVersion),
            (_, Some(abi)) => (Some(abi), LandlockSource::KernelVersion),
            (_, None) if kernel.is_some() => (None, LandlockSource::KernelVersion),
            _ => (None, LandlockSource::Unknown),
        },
    };
    LandlockInfo {
        abi,
        source,
        lsm_listed,
        kernel,
    }
}

fn landlock_features(abi: u32) -> String {
    let mut features = vec!["filesystem"];
    if abi >= 2 {
        features.push("refer");
    }
    if abi >= 3 {
        features.push("truncate");
    }
    if abi >= 4 {
        features.push("TCP bind/connect");
    }
    if abi >= 5 {
        features.push("device ioctl");
    }
    if abi >= 6 {
        features.push("IPC scoping");
    }
    if abi >= 7 {
        features.push("audit logging");
    }
    features.join(", ")
}

fn landlock_check(report: &HostReport, live: &LiveFacts) -> Check {
    let info = &report.landlock;
    let how = match info.source {
        LandlockSource::Syscall => {
            "asked the kernel (landlock_create_ruleset version query)".to_string()
        }
        LandlockSource::KernelVersion => {
            let lsm = match info.lsm_listed {
                Some(true) => "listed in /sys/kernel/security/lsm",
                Some(false) => "not listed in /sys/kernel/security/lsm",
                None => "/sys/kernel/security/lsm unreadable, assumed enabled",
            };
            format!(
                "from kernel {} and the ABI table; {lsm}",
                info.kernel.as_deref().unwrap_or("?")
            )
        }
        LandlockSource::Unknown => "kernel version unknown".to_string(),
    };
    match info.abi {
        Some(abi) => {
            let status = if info.source == LandlockSource::Syscall {
                if abi >= 4 { Status::Ok } else { Status::Warn }
            } else {
                Status::Warn
            };
            let mut detail = format!("ABI {abi} ({}); {how}", landlock_features(abi));
            if abi < 4 {
                detail.push_str("; no TCP restriction before ABI 4 (Linux 6.7)");
            }
            Check::new("landlock", status, detail)
        }
        None => {
            let why = match live.landlock {
                Some(LandlockProbe::NotEnabled) => "built in but not enabled at boot",
                Some(LandlockProbe::NotImplemented) => "not built into this kernel",
                _ if info.lsm_listed == Some(false) => "not in the active LSM list",
                _ => "kernel older than 5.13 or unknown",
            };
            Check::new(
                "landlock",
                Status::Warn,
                format!("unavailable: {why}; {how}; runs fail closed unless Landlock is opted out"),
            )
            .with_remedy(
                "enable it at boot: add landlock to the lsm= kernel parameter (for example lsm=landlock,lockdown,yama,apparmor,bpf); inside a VM use a kernel built with CONFIG_SECURITY_LANDLOCK=y",
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// seccomp

/// Filter actions kakoi's policies use (seccomp(2)).
const SECCOMP_ACTIONS_NEEDED: [&str; 3] = ["kill_process", "errno", "allow"];

fn detect_seccomp(roots: &HostRoots) -> SeccompInfo {
    let status = fs::read_to_string(roots.proc_file("self/status")).unwrap_or_default();
    let number = |key| status_field(&status, key).and_then(|v| v.parse::<u32>().ok());
    SeccompInfo {
        mode: number("Seccomp"),
        filters: number("Seccomp_filters"),
        actions: read_trimmed(&roots.proc_file("sys/kernel/seccomp/actions_avail"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    }
}

fn seccomp_checks(report: &HostReport, checks: &mut Vec<Check>) {
    let info = &report.seccomp;
    let missing: Vec<&str> = SECCOMP_ACTIONS_NEEDED
        .iter()
        .copied()
        .filter(|a| !info.actions.iter().any(|have| have == a))
        .collect();
    let check = match info.mode {
        None => Check::new(
            "seccomp",
            Status::Warn,
            "no Seccomp line in /proc/self/status: kernel without CONFIG_SECCOMP_FILTER; runs fail closed unless seccomp is opted out",
        ),
        Some(_) if !missing.is_empty() => Check::new(
            "seccomp",
            Status::Warn,
            format!(
                "filter actions missing: {} (have: {})",
                missing.join(", "),
                info.actions.join(" ")
            ),
        ),
        Some(_) => Check::new(
            "seccomp",
            Status::Ok,
            format!("filters supported; actions: {}", info.actions.join(" ")),
        ),
    };
    checks.push(check);
    let outer = match info.mode {
        Some(2) => Check::new(
            "outer seccomp",
            Status::Warn,
            format!(
                "this process already runs under {} seccomp filter(s) (a container runtime or systemd SystemCallFilter): it may refuse unshare/clone namespace flags, mount or pivot_root",
                info.filters.unwrap_or(1)
            ),
        )
        .with_remedy(DOCKER_REMEDY),
        Some(1) => Check::new("outer seccomp", Status::Fail, "this process runs in seccomp strict mode"),
        Some(_) => Check::new("outer seccomp", Status::Ok, "this process is not filtered"),
        None => return,
    };
    checks.push(outer);
}

// ---------------------------------------------------------------------------------------
// Containers and /proc

/// What Docker needs to let kakoi build its sandbox inside a container.
const DOCKER_REMEDY: &str = "inside Docker, run the container as docker-compose.yml does: --security-opt seccomp=docker/seccomp/kakoi-runner.json (Docker's default profile plus clone with namespace flags, unshare, mount, mount_setattr, umount2, pivot_root and sethostname), --security-opt systempaths=unconfined so /proc is not masked (with compose 1.x: runtime kakoi-systempaths, docker/start-engine.sh), --cap-drop ALL as a non-root user (a root runner needs SETUID and SETGID), apparmor=unconfined on AppArmor hosts, and a delegated cgroup subtree mounted writable over the container's cgroup controllers (docker/cgroup-delegate.sh; never --cgroupns=host with the host's whole hierarchy, which escapes the outer limits)";

fn detect_container(roots: &HostRoots, mounts: &[MountEntry]) -> ContainerInfo {
    let mut evidence = Vec::new();
    let mut strong = false;
    if roots.root.join(".dockerenv").exists() {
        evidence.push("/.dockerenv exists".to_string());
    }
    if roots.root.join("run/.containerenv").exists() {
        evidence.push("/run/.containerenv exists (podman)".to_string());
        strong = true;
    }
    if let Ok(text) = fs::read_to_string(roots.proc_file("1/cgroup")) {
        const RUNTIMES: [&str; 6] = ["docker", "kubepods", "containerd", "libpod", "lxc", "crio"];
        if let Some(hit) = text
            .lines()
            .find(|line| RUNTIMES.iter().any(|r| line.contains(r)))
        {
            evidence.push(format!("/proc/1/cgroup: {hit}"));
            strong = true;
        }
    }
    if let Some(root_mount) = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == Path::new("/"))
    {
        if root_mount.fs_type == "overlay" {
            evidence.push("/ is an overlay filesystem".to_string());
            strong = true;
        }
    }
    match fs::read(roots.proc_file("1/environ")) {
        Ok(environ) => {
            if let Some(var) = environ
                .split(|b| *b == 0)
                .find(|v| v.starts_with(b"container="))
            {
                evidence.push(format!("/proc/1/environ: {}", String::from_utf8_lossy(var)));
                strong = true;
            }
        }
        Err(err) => evidence.push(format!("/proc/1/environ unreadable ({})", err.kind())),
    }
    ContainerInfo {
        likely: strong,
        evidence,
    }
}

fn container_check(report: &HostReport) -> Check {
    let info = &report.container;
    let hints = |weak: bool| {
        info.evidence
            .iter()
            .filter(|e| weak || !e.contains("unreadable"))
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    };
    if info.likely {
        Check::new(
            "container",
            Status::Warn,
            format!("running inside a container ({})", hints(false)),
        )
        .with_remedy(DOCKER_REMEDY)
    } else if info.evidence.iter().any(|e| e.contains(".dockerenv")) {
        Check::new(
            "container",
            Status::Info,
            format!(
                "marker file only ({}), but pid 1's cgroup, the root filesystem and pid 1's environment show no container runtime: likely a VM or chroot built from a container image",
                hints(true)
            ),
        )
    } else {
        Check::new("container", Status::Ok, "not inside a container")
    }
}

/// procfs directories the kernel keeps permanently empty: mounts on them do not hide anything
/// (fs/namespace.c mnt_already_visible).
const PROC_EMPTY_DIRS: [&str; 1] = ["/proc/sys/fs/binfmt_misc"];

fn detect_proc_visibility(mounts: &[MountEntry]) -> ProcVisibility {
    let masked: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| m.mount_point.starts_with("/proc") && m.mount_point != Path::new("/proc"))
        .filter(|m| {
            !PROC_EMPTY_DIRS
                .iter()
                .any(|d| m.mount_point == Path::new(d))
        })
        .map(|m| m.mount_point.clone())
        .collect();
    ProcVisibility {
        fully_visible: masked.is_empty(),
        masked,
    }
}

fn proc_check(report: &HostReport) -> Check {
    let info = &report.proc_mount;
    if info.fully_visible {
        Check::new(
            "/proc visibility",
            Status::Ok,
            "no mount hides part of /proc: a new /proc can be mounted inside the sandbox",
        )
    } else {
        let list: Vec<String> = info
            .masked
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        Check::new(
            "/proc visibility",
            Status::Fail,
            format!(
                "mounts over {} hide part of /proc: mounting a new proc in a user namespace fails with EPERM (mount_too_revealing)",
                list.join(", ")
            ),
        )
        .with_remedy("Docker masks these paths; run the container with --security-opt systempaths=unconfined (or unmount the masking mounts as root)")
    }
}

// ---------------------------------------------------------------------------------------
// Assembly

fn build_checks(report: &HostReport, live: &LiveFacts) -> Vec<Check> {
    let mut checks = Vec::new();
    userns_checks(report, live, &mut checks);
    cgroup_checks(report, &mut checks);
    checks.push(landlock_check(report, live));
    seccomp_checks(report, &mut checks);
    checks.push(container_check(report));
    checks.push(proc_check(report));
    checks
}

/// Namespaces kakoi creates, with their `/proc/self/ns` names.
const NAMESPACES: [(&str, &str); 7] = [
    ("user", "user"),
    ("pid", "pid"),
    ("net", "net"),
    ("mount", "mnt"),
    ("ipc", "ipc"),
    ("uts", "uts"),
    ("cgroup", "cgroup"),
];

fn build_layers(report: &HostReport, roots: &HostRoots) -> Vec<Layer> {
    let mut layers = Vec::new();
    let userns = report.userns.usable;
    let ns_dir = roots.proc_file("self/ns");
    let ns_listing_readable = ns_dir.is_dir();
    for (name, file) in NAMESPACES {
        let kernel_has = !ns_listing_readable || ns_dir.join(file).exists();
        let available = userns && kernel_has;
        let detail = if !kernel_has {
            format!("kernel has no {name} namespaces (no /proc/self/ns/{file})")
        } else if !userns {
            "needs a usable user namespace".to_string()
        } else if name == "user" {
            "own uid/gid maps; no capabilities on the host".to_string()
        } else if name == "net" && report.root {
            "a pre-made namespace with only lo, held by one run at a time (a fresh one when all are busy), unless networking is allowed".to_string()
        } else if name == "net" {
            "fresh network namespace: loopback only unless networking is allowed".to_string()
        } else {
            format!("new {name} namespace")
        };
        layers.push(Layer {
            name: format!("{name} namespace"),
            available,
            detail,
        });
    }

    let writable = report.cgroup.writable_controllers();
    let missing: Vec<&str> = LIMIT_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !writable.iter().any(|w| w == c))
        .collect();
    let version = match report.cgroup.mode {
        CgroupMode::V2 => "v2",
        CgroupMode::V1 | CgroupMode::Hybrid => "v1",
        CgroupMode::None => "none",
    };
    layers.push(Layer {
        name: "cgroup".to_string(),
        available: !writable.is_empty(),
        detail: if writable.is_empty() {
            rlimit_fallback(&missing)
        } else if missing.is_empty() {
            format!("{version} controllers {}", writable.join(", "))
        } else {
            format!(
                "{version} controllers {}; {}",
                writable.join(", "),
                rlimit_fallback(&missing)
            )
        },
    });

    let seccomp_ok = report.seccomp.mode.is_some()
        && SECCOMP_ACTIONS_NEEDED
            .iter()
            .all(|a| report.seccomp.actions.iter().any(|have| have == a));
    layers.push(Layer {
        name: "seccomp".to_string(),
        available: seccomp_ok,
        detail: if seccomp_ok {
            "allowlist filter, installed last".to_string()
        } else {
            "kernel cannot filter syscalls as kakoi needs".to_string()
        },
    });

    layers.push(Layer {
        name: "landlock".to_string(),
        available: report.landlock.abi.is_some(),
        detail: match report.landlock.abi {
            Some(abi) => format!("ABI {abi}: {}", landlock_features(abi)),
            None => "unavailable".to_string(),
        },
    });

    let status = fs::read_to_string(roots.proc_file("self/status")).unwrap_or_default();
    let nnp = status_field(&status, "NoNewPrivs").is_some();
    layers.push(Layer {
        name: "no_new_privs".to_string(),
        available: nnp,
        detail: if nnp {
            "set before Landlock and seccomp; setuid binaries gain nothing".to_string()
        } else {
            "no NoNewPrivs line in /proc/self/status (kernel older than 4.10?)".to_string()
        },
    });

    layers.push(Layer {
        name: "non-root uid".to_string(),
        available: userns,
        detail: if userns {
            let host = if report.root {
                "an unprivileged host uid"
            } else {
                "the invoking user's uid"
            };
            format!("uid/gid 1000 inside, mapped to {host}, all capabilities dropped")
        } else {
            "needs a usable user namespace".to_string()
        },
    });

    layers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// This machine's cgroup mounts: v1 controllers plus cgroup2 at /sys/fs/cgroup/unified.
    const HYBRID_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V2_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
44 22 0:40 / /proc/sys/fs/binfmt_misc rw,relatime shared:30 - autofs systemd-1 rw,fd=30
";

    /// A fake host in a temp dir.
    struct FakeHost {
        dir: tempfile::TempDir,
    }

    impl FakeHost {
        fn new(uid: u32, mountinfo: &str) -> Self {
            let host = Self {
                dir: tempfile::tempdir().expect("tempdir"),
            };
            host.write(
                "proc/self/status",
                &format!(
                    "Name:\tkakoi\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\nGroups:\t\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n"
                ),
            );
            host.write("proc/self/mountinfo", mountinfo);
            host.write("proc/sys/user/max_user_namespaces", "63456\n");
            host.write("proc/sys/kernel/osrelease", "6.18.44-fc-v769\n");
            host.write(
                "proc/sys/kernel/seccomp/actions_avail",
                "kill_process kill_thread trap errno user_notif trace log allow\n",
            );
            host.write("proc/1/cgroup", "0::/\n");
            host.write("proc/1/environ", "HOME=/\0TERM=linux\0");
            host
        }

        fn write(&self, relative: &str, text: &str) {
            let path = self.dir.path().join(relative);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, text).expect("write");
        }

        fn mkdir(&self, relative: &str, mode: u32) {
            let path = self.dir.path().join(relative);
            fs::create_dir_all(&path).expect("mkdir");
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        }

        fn chmod(&self, relative: &str, mode: u32) {
            let path = self.dir.path().join(relative);
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        }

        fn roots(&self) -> HostRoots {
            HostRoots::under(self.dir.path())
        }

        /// A uid that owns none of the fake files, whoever runs the tests.
        fn stranger(&self) -> u32 {
            fs::metadata(self.dir.path()).expect("stat").uid() + 4242
        }

        fn detect(&self, live: &LiveFacts) -> HostReport {
            HostReport::detect(&self.roots(), live)
        }

        /// The v1 hybrid layout of this machine, as seen from uid 0.
        fn with_hybrid_cgroups(&self) {
            for c in ["cpu", "cpuacct", "memory", "pids", "systemd"] {
                self.mkdir(&format!("sys/fs/cgroup/{c}"), 0o755);
            }
            self.write("sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n");
            self.write(
                "proc/self/cgroup",
                "9:name=systemd:/\n8:pids:/\n4:memory:/\n2:cpuacct:/\n1:cpu:/\n0::/\n",
            );
        }
    }

    fn check<'a>(report: &'a HostReport, name: &str) -> &'a Check {
        report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name:?} in {:#?}", report.checks))
    }

    fn layer<'a>(report: &'a HostReport, name: &str) -> &'a Layer {
        report
            .layers
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no layer {name:?}"))
    }

    #[test]
    fn userns_disabled_by_sysctl_blocks_runs() {
        let host = FakeHost::new(0, HYBRID_MOUNTINFO);
        host.write("proc/sys/user/max_user_namespaces", "0\n");
        let report = host.detect(&LiveFacts::default());
        assert!(!report.userns.usable);
        assert!(!report.run_can_start);
        let c = check(&report, "user namespaces");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.remedy
                .as_deref()
                .unwrap()
                .contains("user.max_user_namespaces")
        );
        assert!(!layer(&report, "pid namespace").available);
        assert!(!layer(&report, "non-root uid").available);
    }

    #[test]
    fn debian_unprivileged_clone_off_blocks_non_root_only() {
        let host = FakeHost::new(0, HYBRID_MOUNTINFO);
        host.write("proc/sys/kernel/unprivileged_userns_clone", "0\n");
        let stranger = host.stranger();
        assert!(host.detect(&LiveFacts::default()).userns.usable);
        host.write(
            "proc/self/status",
            &format!("Uid:\t{stranger}\t{stranger}\t{stranger}\t{stranger}\nSeccomp:\t0\n"),
        );
        let report = host.detect(&LiveFacts::default());
        assert!(!report.root);
        assert!(!report.userns.usable);
        assert_eq!(check(&report, "unprivileged userns").status, Status::Fail);
    }

    #[test]
    fn ubuntu_apparmor_restriction_for_non_root() {
        let host = FakeHost::new(0, V2_MOUNTINFO);
        let uid = host.stranger();
        let host = FakeHost::new(uid, V2_MOUNTINFO);
        host.write(
            "proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1\n",
        );
        let live = LiveFacts {
            exe: Some(PathBuf::from("/opt/kakoi/bin/kakoi")),
            ..LiveFacts::default()
        };
        let report = host.detect(&live);
        assert_eq!(report.userns.apparmor_restrict_unprivileged_userns, Some(1));
        assert!(!report.userns.usable);
        let c = check(&report, "apparmor userns");
        assert_eq!(c.status, Status::Fail);
        let remedy = c.remedy.as_deref().unwrap();
        assert!(remedy.contains("profile kakoi /opt/kakoi/bin/kakoi flags=(unconfined)"));
        assert!(remedy.contains("  userns,"));
        assert!(remedy.contains("apparmor_parser -r /etc/apparmor.d/kakoi"));
        assert!(remedy.contains("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"));

        // Once the profile is installed, the restriction no longer applies to kakoi.
        host.write(
            "etc/apparmor.d/kakoi",
            &apparmor_profile_text(Path::new("/opt/kakoi/bin/kakoi")),
        );
        let report = host.detect(&live);
        assert_eq!(check(&report, "apparmor userns").status, Status::Ok);
        assert!(report.userns.usable);
    }

    #[test]
    fn ubuntu_apparmor_restriction_does_not_apply_to_root() {
        let host = FakeHost::new(0, V2_MOUNTINFO);
        host.write(
            "proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1\n",
        );
        let report = host.detect(&LiveFacts::default());
        assert!(report.userns.usable);
        assert_eq!(check(&report, "apparmor userns").status, Status::Info);
    }

    #[test]
    fn failed_probe_wins_over_sysctls_and_shows_stderr() {
        let host = FakeHost::new(0, V2_MOUNTINFO);
        let live = LiveFacts {
            userns: Some(UsernsProbe::Failed {
                exit_code: Some(1),
                stderr: "unshare: unshare failed: Operation not permitted".to_string(),
            }),
            ..LiveFacts::default()
        };
        let report = host.detect(&live);
        assert!(!report.run_can_start);
        let c = check(&report, "userns probe");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("Operation not permitted"));
    }

    #[test]
    fn missing_unshare_is_reported() {
        let host = FakeHost::new(0, V2_MOUNTINFO);
        let live = LiveFacts {
            userns: Some(UsernsProbe::UnshareMissing),
            ..LiveFacts::default()
        };
        let report = host.detect(&live);
        assert!(report.run_can_start);
        let c = check(&report, "userns probe");
        assert_eq!(c.status, Status::Info);
        assert!(c.detail.contains("not installed"));
    }

    #[test]
    fn cgroup_v2_pure_with_delegation() {
        let owner = FakeHost::new(0, V2_MOUNTINFO).stranger();
        let host = FakeHost::new(owner, V2_MOUNTINFO);
        let scope = "sys/fs/cgroup/user.slice/user-1000.slice/kakoi.scope";
        host.write(
            "sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        host.write(&format!("{scope}/cgroup.controllers"), "cpu memory pids\n");
        host.write(&format!("{scope}/cgroup.subtree_control"), "");
        host.write(
            "proc/self/cgroup",
            "0::/user.slice/user-1000.slice/kakoi.scope\n",
        );

        // Not delegated: the scope belongs to someone else.
        host.chmod(scope, 0o755);
        host.chmod(&format!("{scope}/cgroup.subtree_control"), 0o644);
        let report = host.detect(&LiveFacts::default());
        assert_eq!(report.cgroup.mode, CgroupMode::V2);
        assert_eq!(
            report.cgroup.mounts[0].controllers,
            [
                "cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"
            ]
        );
        assert!(report.cgroup.writable_controllers().is_empty());
        let c = check(&report, "cgroup limits");
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("RLIMIT_AS"));
        assert!(
            c.remedy
                .as_deref()
                .unwrap()
                .contains("systemd-run --user --scope -p Delegate=yes")
        );
        let cgroup = layer(&report, "cgroup");
        assert!(!cgroup.available);
        assert!(cgroup.detail.contains("fallback to rlimits"));
        assert!(cgroup.detail.contains("RLIMIT_NPROC"));
        // favordynmods only matters on v1.
        assert!(
            report
                .checks
                .iter()
                .all(|c| c.name != "cgroup v1 attach latency")
        );

        // Delegated (simulated with world-writable modes, as the files are not ours).
        host.chmod(scope, 0o777);
        host.chmod(&format!("{scope}/cgroup.subtree_control"), 0o666);
        let report = host.detect(&LiveFacts::default());
        assert_eq!(
            report.cgroup.writable_controllers(),
            ["memory", "pids", "cpu"]
        );
        assert_eq!(check(&report, "cgroup limits").status, Status::Ok);
        assert!(layer(&report, "cgroup").available);
    }

    #[test]
    fn cgroup_v1_hybrid_as_on_this_machine() {
        let host = FakeHost::new(0, HYBRID_MOUNTINFO);
        host.with_hybrid_cgroups();
        let report = host.detect(&LiveFacts::default());
        assert_eq!(report.cgroup.mode, CgroupMode::Hybrid);
        let unified = report
            .cgroup
            .mounts
            .iter()
            .find(|m| m.fs_type == "cgroup2")
            .unwrap();
        assert_eq!(unified.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(unified.controllers, ["hugetlb"]);
        let systemd = report
            .cgroup
            .mounts
            .iter()
            .find(|m| m.name.is_some())
            .unwrap();
        assert_eq!(systemd.name.as_deref(), Some("systemd"));
        assert!(systemd.controllers.is_empty());
        assert_eq!(
            report.cgroup.writable_controllers(),
            ["memory", "pids", "cpu"]
        );
        let memory = &report.cgroup.access[0];
        assert_eq!(
            memory.path.as_deref(),
            Some(host.dir.path().join("sys/fs/cgroup/memory").as_path())
        );
        assert_eq!(check(&report, "cgroup limits").status, Status::Ok);
        assert!(
            layer(&report, "cgroup")
                .detail
                .starts_with("v1 controllers")
        );
    }

    #[test]
    fn cgroup_v1_read_only_mount_is_not_writable() {
        let mountinfo = HYBRID_MOUNTINFO.replace(
            "/sys/fs/cgroup/memory rw,relatime",
            "/sys/fs/cgroup/memory ro,relatime",
        );
        let host = FakeHost::new(0, &mountinfo);
        host.with_hybrid_cgroups();
        let report = host.detect(&LiveFacts::default());
        assert_eq!(report.cgroup.writable_controllers(), ["pids", "cpu"]);
        let c = check(&report, "cgroup limits");
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("not writable: memory"));
        assert!(c.detail.contains("RLIMIT_AS"));
    }

    /// Inside a container (docker-compose.yml): Docker's read-only cgroup mounts of the
    /// container's own cgroup, with a delegated subtree mounted over memory and pids.
    #[test]
    fn cgroup_v1_delegated_subtree_over_a_read_only_mount_is_writable() {
        let id = "/kakoi-serve/0583247a19b6";
        let mut mountinfo = String::from(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             27 1 254:0 / / rw,relatime - overlay overlay rw\n\
             31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n",
        );
        for (n, c) in ["memory", "pids", "cpu"].iter().enumerate() {
            mountinfo.push_str(&format!(
                "{} 31 0:{} {id} /sys/fs/cgroup/{c} ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,{c}\n",
                40 + n,
                29 + n
            ));
        }
        for (n, c) in ["memory", "pids"].iter().enumerate() {
            mountinfo.push_str(&format!(
                "{} 31 0:{} /kakoi-serve/sandboxes /sys/fs/cgroup/{c} rw,relatime - cgroup cgroup rw,{c}\n",
                50 + n,
                29 + n
            ));
        }
        let host = FakeHost::new(10000, &mountinfo);
        for c in ["memory", "pids", "cpu"] {
            host.mkdir(&format!("sys/fs/cgroup/{c}"), 0o777);
        }
        host.write(
            "proc/self/cgroup",
            &format!("8:pids:{id}\n4:memory:{id}\n1:cpu:{id}\n0::/\n"),
        );
        let report = host.detect(&LiveFacts::default());
        assert_eq!(report.cgroup.writable_controllers(), ["memory", "pids"]);
        let memory = &report.cgroup.access[0];
        assert_eq!(
            memory.path.as_deref(),
            Some(host.dir.path().join("sys/fs/cgroup/memory").as_path())
        );
    }

    #[test]
    fn favordynmods_absent_is_a_fact_with_measurements() {
        let host = FakeHost::new(0, HYBRID_MOUNTINFO);
        host.with_hybrid_cgroups();
        let report = host.detect(&LiveFacts::default());
        assert!(!report.cgroup.favordynmods);
        let c = check(&report, "cgroup v1 attach latency");
        assert_eq!(c.status, Status::Info);
        assert!(c.detail.contains("moves itself"), "{}", c.detail);
        assert!(c.detail.contains("5.3 ms median, 20.8 ms p95"));
        let remedy = c.remedy.as_deref().unwrap();
        assert!(remedy.contains("kakoi doctor --enable-favordynmods"));
        assert!(remedy.contains("-o none,name=kakoi-favordynmods,favordynmods"));
        assert!(remedy.contains("mount -o remount,favordynmods /sys/fs/cgroup/unified"));
        assert!(remedy.contains("reboot"));
    }

    #[test]
    fn favordynmods_present_on_a_named_hierarchy() {
        let mountinfo = format!(
            "{HYBRID_MOUNTINFO}60 27 0:50 / /run/kakoi/favordynmods rw,relatime - cgroup kakoi rw,none,name=kakoi,favordynmods\n"
        );
        let host = FakeHost::new(0, &mountinfo);
        host.with_hybrid_cgroups();
        let report = host.detect(&LiveFacts::default());
        assert!(report.cgroup.favordynmods);
        let c = check(&report, "cgroup v1 attach latency");
        assert_eq!(c.status, Status::Ok);
        assert!(c.detail.contains("/run/kakoi/favordynmods"));
        assert!(c.remedy.is_none());
    }

    #[test]
    fn container_markers_are_found() {
        let mountinfo = "\
500 400 0:60 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
501 500 0:61 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
";
        let host = FakeHost::new(0, mountinfo);
        host.write(".dockerenv", "");
        host.write("run/.containerenv", "engine=\"podman\"\n");
        host.write("proc/1/cgroup", "0::/system.slice/docker-0123abcd.scope\n");
        host.write("proc/1/environ", "PATH=/bin\0container=podman\0");
        let report = host.detect(&LiveFacts::default());
        assert!(report.container.likely);
        let evidence = report.container.evidence.join("\n");
        for hint in [
            "/.dockerenv",
            "/run/.containerenv",
            "docker-0123abcd",
            "overlay",
            "container=podman",
        ] {
            assert!(evidence.contains(hint), "{hint} missing from {evidence}");
        }
        let c = check(&report, "container");
        assert_eq!(c.status, Status::Warn);
        let remedy = c.remedy.as_deref().unwrap();
        assert!(remedy.contains("systempaths=unconfined"));
        assert!(remedy.contains("seccomp="));
        assert!(remedy.contains("cgroupns"));
    }

    #[test]
    fn dockerenv_alone_is_a_weak_hint() {
        let host = FakeHost::new(0, HYBRID_MOUNTINFO);
        host.write(".dockerenv", "");
        let report = host.detect(&LiveFacts::default());
        assert!(!report.container.likely);
        assert_eq!(check(&report, "container").status, Status::Info);
    }

    #[test]
    fn no_container_markers() {
        let host = FakeHost::new(0, V2_MOUNTINFO);
        let report = host.detect(&LiveFacts::default());
        assert!(!report.container.likely);
        assert_eq!(check(&report, "container").status, Status::Ok);
    }

    #[test]
    fn masked_proc_is_detected() {
        let mountinfo = format!(
            "{V2_MOUNTINFO}\
601 22 0:70 /null /proc/kcore rw,nosuid - devtmpfs udev rw
602 22 0:71 / /proc/acpi ro,relatime - tmpfs tmpfs ro
603 22 0:21 /sys /proc/sys ro,nosuid,nodev,noexec,relatime - proc proc rw
"
        );
        let host = FakeHost::new(0, &mountinfo);
        let report = host.detect(&LiveFacts::default());
        assert!(!report.proc_mount.fully_visible);
        assert_eq!(
            report.proc_mount.masked,
            [
                PathBuf::from("/proc/kcore"),
                PathBuf::from("/proc/acpi"),
                PathBuf::from("/proc/sys")
            ]
        );
        let c = check(&report, "/proc visibility");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("mount_too_revealing"));
        assert!(
            c.remedy
                .as_deref()
                .unwrap()
                .contains("systempaths=unconfined")
        );
    }

    #[test]
    fn binfmt_misc_does_not_mask_proc() {
        let host = FakeHost::new(0, V2_MOUNTINFO);
        let report = host.detect(&LiveFacts::default());
        assert!(report.proc_mount.fully_visible);
        assert_eq!(check(&report, "/proc visibility").status, Status::Ok);
    }

    #[test]
    fn outer_seccomp_filter_is_reported() {
        let host = FakeHost::new(0, V2_MOUNTINFO);
        host.write(
            "proc/self/status",
            "Uid:\t0\t0\t0\t0\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n",
        );
        let report = host.detect(&LiveFacts::default());
        assert_eq!(report.seccomp.mode, Some(2));
        assert_eq!(check(&report, "outer seccomp").status, Status::Warn);
        assert_eq!(check(&report, "seccomp").status, Status::Ok);
    }

    #[test]
    fn landlock_abi_table() {
        assert_eq!(landlock_abi_for_kernel("5.10.0-28-amd64"), None);
        assert_eq!(landlock_abi_for_kernel("5.13.0"), Some(1));
        assert_eq!(landlock_abi_for_kernel("5.15.0-91-generic"), Some(1));
        assert_eq!(landlock_abi_for_kernel("6.1.0-18-amd64"), Some(2));
        assert_eq!(landlock_abi_for_kernel("6.2.0"), Some(3));
        assert_eq!(landlock_abi_for_kernel("6.8.0-31-generic"), Some(4));
        assert_eq!(landlock_abi_for_kernel("6.11.2"), Some(5));
        assert_eq!(landlock_abi_for_kernel("6.12.9"), Some(6));
        assert_eq!(landlock_abi_for_kernel("6.18.44-fc-v769"), Some(7));
        assert_eq!(kernel_version("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn landlock_source_is_reported() {
        let host = FakeHost::new(0, V2_MOUNTINFO);
        // No live answer, lsm unreadable: kernel table, with a warning.
        let report = host.detect(&LiveFacts::default());
        assert_eq!(report.landlock.abi, Some(7));
        assert_eq!(report.landlock.source, LandlockSource::KernelVersion);
        assert_eq!(report.landlock.lsm_listed, None);
        assert_eq!(check(&report, "landlock").status, Status::Warn);

        // Not in the LSM list: unavailable.
        host.write(
            "sys/kernel/security/lsm",
            "lockdown,capability,yama,apparmor\n",
        );
        let report = host.detect(&LiveFacts::default());
        assert_eq!(report.landlock.abi, None);
        assert!(!layer(&report, "landlock").available);

        // The kernel's own answer wins.
        let live = LiveFacts {
            landlock: Some(LandlockProbe::Available { abi: 6 }),
            ..LiveFacts::default()
        };
        let report = host.detect(&live);
        assert_eq!(report.landlock.abi, Some(6));
        assert_eq!(report.landlock.source, LandlockSource::Syscall);
        let c = check(&report, "landlock");
        assert_eq!(c.status, Status::Ok);
        assert!(c.detail.contains("IPC scoping"));

        let live = LiveFacts {
            landlock: Some(LandlockProbe::NotEnabled),
            ..LiveFacts::default()
        };
        let c = check(&host.detect(&live), "landlock").clone();
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("not enabled at boot"));
        assert!(c.remedy.unwrap().contains("lsm="));
    }

    #[test]
    fn mountinfo_parsing() {
        let entries = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
             bad line\n",
        );
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(e.root, "/mnt1");
        assert_eq!(e.mount_point, Path::new("/mnt/with space"));
        assert_eq!(e.fs_type, "ext3");
        assert_eq!(e.super_options, ["rw", "errors=continue"]);
        assert!(!e.read_only());
    }

    #[test]
    fn roots_resolve_host_paths() {
        let roots = HostRoots::under(Path::new("/fake"));
        assert_eq!(
            roots.resolve(Path::new("/sys/fs/cgroup/memory")),
            Path::new("/fake/sys/fs/cgroup/memory")
        );
        assert_eq!(
            roots.resolve(Path::new("/proc/1/cgroup")),
            Path::new("/fake/proc/1/cgroup")
        );
        assert_eq!(roots.resolve(Path::new("/run/x")), Path::new("/fake/run/x"));
        assert_eq!(
            HostRoots::default().resolve(Path::new("/sys/a")),
            Path::new("/sys/a")
        );
    }

    #[test]
    fn report_serializes_to_json() {
        let host = FakeHost::new(0, HYBRID_MOUNTINFO);
        host.with_hybrid_cgroups();
        let report = host.detect(&LiveFacts {
            userns: Some(UsernsProbe::Succeeded),
            ..LiveFacts::default()
        });
        let json: serde_json::Value = serde_json::to_value(&report).expect("serialize");
        assert_eq!(json["cgroup"]["mode"], "hybrid");
        assert_eq!(json["userns"]["probe"]["result"], "succeeded");
        assert_eq!(json["checks"][0]["status"], "info");
        assert_eq!(json["run_can_start"], true);
        assert_eq!(json["layers"].as_array().unwrap().len(), 12);
    }

    /// Whether the environment says a capability must be present (`KAKOI_TEST_REQUIRE`).
    fn required(capability: &str) -> bool {
        std::env::var("KAKOI_TEST_REQUIRE")
            .map(|list| list.split(',').any(|c| c.trim() == capability))
            .unwrap_or(false)
    }

    /// The real detection on this machine (Debian 12, kernel 6.18, root, cgroup v1 hybrid).
    /// Spawns `unshare` once; needs root.
    #[test]
    fn real_host_facts() {
        let roots = HostRoots::default();
        if ProcessIds::read(&roots).uid != Some(0) {
            println!("SKIP: real_host_facts needs root");
            assert!(
                !required("root"),
                "KAKOI_TEST_REQUIRE contains root but the tests do not run as root"
            );
            return;
        }
        let report = HostReport::detect_host();
        assert!(report.root);
        assert!(report.userns.usable, "{:#?}", report.userns);
        assert_eq!(report.userns.probe, Some(UsernsProbe::Succeeded));
        assert!(report.run_can_start);
        assert_eq!(report.cgroup.mode, CgroupMode::Hybrid);
        let writable = report.cgroup.writable_controllers();
        assert!(writable.iter().any(|c| c == "memory"), "{writable:?}");
        assert!(writable.iter().any(|c| c == "pids"), "{writable:?}");
        assert!(
            report.landlock.abi.is_some_and(|abi| abi >= 1),
            "{:?}",
            report.landlock
        );
        assert_eq!(report.landlock.source, LandlockSource::Syscall);
        assert!(
            report.layers.iter().all(|l| l.available),
            "{:#?}",
            report.layers
        );
    }
}
