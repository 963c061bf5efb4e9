//! Finding the host's cgroup hierarchies: `/proc/self/mountinfo`, the process's own cgroup,
//! and the choice between the v2 and v1 drivers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::unistd::AccessFlags;

use super::control::CgroupFs;
use super::v1::V1Driver;
use super::v2::V2Driver;
use super::{CgroupDriver, CgroupError, CgroupVersion};

/// cgroup v1 controller names, to tell controllers from other mount options in mountinfo.
const V1_CONTROLLERS: [&str; 14] = [
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Where and how [`detect`] looks for cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectOptions {
    /// procfs root (normally `/proc`): `self/mountinfo`, `self/cgroup`, and `<pid>/stat` of
    /// launchers when sweeping stale runs.
    pub proc_root: PathBuf,
    /// Directory name under each hierarchy (or under the delegated cgroup) that holds runs.
    pub base_name: String,
    /// Version to try first; the other one is still used if the preferred one is unusable.
    pub prefer: Option<CgroupVersion>,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            proc_root: PathBuf::from("/proc"),
            base_name: "kakoi".to_owned(),
            prefer: None,
        }
    }
}

/// One cgroup filesystem mount of the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CgroupMount {
    /// `cgroup` (v1) or `cgroup2` (v2).
    pub version: CgroupVersion,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The cgroup shown at the mount point (field 4 of mountinfo, `/` unless bind-mounted or
    /// seen from a cgroup namespace).
    pub root: String,
    /// v1: the controllers bound to this hierarchy; v2: the root's `cgroup.controllers`.
    pub controllers: Vec<String>,
    /// Whether this process may create cgroups at the mount point.
    pub writable: bool,
    /// Mounted with `favordynmods` (cheap migrations host-wide; see [`enable_favordynmods`]).
    pub favordynmods: bool,
}

/// The host's cgroup setup as `kakoi doctor` reports it; computed without creating anything.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostCgroupInfo {
    /// The version [`detect`] would use, `None` if no hierarchy is usable.
    pub version: Option<CgroupVersion>,
    /// Every cgroup mount found in mountinfo.
    pub mounts: Vec<CgroupMount>,
    /// Directories runs would be created in (one per hierarchy on v1).
    pub bases: Vec<PathBuf>,
    /// Controllers runs would get.
    pub controllers: Vec<String>,
    /// Whether the chosen hierarchy is writable (false when `version` is `None`).
    pub writable: bool,
    /// Why no cgroup is usable, in words a user can act on (`None` when one is).
    pub reason: Option<String>,
    /// Why the versions that were not chosen are unusable.
    pub notes: Vec<String>,
}

/// Facts about the calling process that the choice depends on (a seam for tests).
#[derive(Debug, Clone)]
pub(crate) struct HostProbe {
    /// Effective uid.
    pub(crate) euid: u32,
    /// Whether this process may create entries in a directory.
    pub(crate) writable: fn(&Path) -> bool,
}

impl HostProbe {
    fn current() -> Self {
        HostProbe {
            euid: nix::unistd::geteuid().as_raw(),
            writable: |path| nix::unistd::access(path, AccessFlags::W_OK).is_ok(),
        }
    }
}

/// A usable hierarchy, before any directory is created.
#[derive(Debug, Clone)]
enum Plan {
    V2 { top: PathBuf, base: PathBuf },
    V1 { mounts: BTreeMap<String, PathBuf> },
}

impl Plan {
    fn version(&self) -> CgroupVersion {
        match self {
            Plan::V2 { .. } => CgroupVersion::V2,
            Plan::V1 { .. } => CgroupVersion::V1,
        }
    }
}

/// Pick and build the driver for this host: v2 if cgroup2 is mounted with the memory and pids
/// controllers and writable (as root: the mount; otherwise: the process's own cgroup from
/// `self/cgroup`), else v1 if the memory and pids hierarchies are mounted and writable, else
/// [`CgroupError::Unavailable`] with the reasons. Creates the base directories and enables
/// controllers; does not sweep stale runs (call [`CgroupDriver::cleanup_stale`]).
pub fn detect(options: &DetectOptions) -> Result<Box<dyn CgroupDriver>, CgroupError> {
    detect_with(options, &HostProbe::current(), CgroupFs::REAL)
}

pub(crate) fn detect_with(
    options: &DetectOptions,
    probe: &HostProbe,
    fs: CgroupFs,
) -> Result<Box<dyn CgroupDriver>, CgroupError> {
    let mounts = read_mounts(&options.proc_root, probe)?;
    let mut reasons = Vec::new();
    for version in order(options.prefer) {
        let plan = match plan(version, &mounts, options, probe) {
            Ok(plan) => plan,
            Err(reason) => {
                reasons.push(reason);
                continue;
            }
        };
        let built: Result<Box<dyn CgroupDriver>, CgroupError> = match &plan {
            Plan::V2 { top, base } => V2Driver::with_fs(top, base, &options.proc_root, fs)
                .map(|driver| Box::new(driver) as Box<dyn CgroupDriver>),
            Plan::V1 { mounts } => {
                V1Driver::with_fs(mounts, &options.base_name, &options.proc_root, fs)
                    .map(|driver| Box::new(driver) as Box<dyn CgroupDriver>)
            }
        };
        match built {
            Ok(driver) => return Ok(driver),
            Err(error) => reasons.push(format!(
                "{}: {}",
                version_label(plan.version()),
                error_chain(&error)
            )),
        }
    }
    Err(CgroupError::Unavailable {
        reason: reasons.join("; "),
    })
}

/// Describe the host's cgroups for `kakoi doctor`, creating nothing. Errors (an unreadable
/// mountinfo) end up in `reason`.
pub fn describe_host(options: &DetectOptions) -> HostCgroupInfo {
    describe_host_with(options, &HostProbe::current())
}

pub(crate) fn describe_host_with(options: &DetectOptions, probe: &HostProbe) -> HostCgroupInfo {
    let mut info = HostCgroupInfo {
        version: None,
        mounts: Vec::new(),
        bases: Vec::new(),
        controllers: Vec::new(),
        writable: false,
        reason: None,
        notes: Vec::new(),
    };
    match read_mounts(&options.proc_root, probe) {
        Ok(mounts) => info.mounts = mounts,
        Err(error) => {
            info.reason = Some(error_chain(&error));
            return info;
        }
    }
    for version in order(options.prefer) {
        match plan(version, &info.mounts, options, probe) {
            Ok(plan) if info.version.is_none() => {
                info.version = Some(plan.version());
                info.writable = true;
                match plan {
                    Plan::V2 { top, base } => {
                        info.bases = vec![base];
                        info.controllers = v2_controllers(&top);
                    }
                    Plan::V1 { mounts } => {
                        let mut bases: Vec<PathBuf> = mounts
                            .values()
                            .map(|mount| mount.join(&options.base_name))
                            .collect();
                        // Co-mounted controllers share a base.
                        bases.sort();
                        bases.dedup();
                        info.bases = bases;
                        info.controllers = mounts.keys().cloned().collect();
                    }
                }
            }
            Ok(_) => {}
            Err(reason) => info.notes.push(reason),
        }
    }
    if info.version.is_none() {
        info.reason = Some(info.notes.join("; "));
    }
    info
}

fn order(prefer: Option<CgroupVersion>) -> [CgroupVersion; 2] {
    match prefer {
        Some(CgroupVersion::V1) => [CgroupVersion::V1, CgroupVersion::V2],
        _ => [CgroupVersion::V2, CgroupVersion::V1],
    }
}

fn version_label(version: CgroupVersion) -> &'static str {
    match version {
        CgroupVersion::V1 => "cgroup v1",
        CgroupVersion::V2 => "cgroup v2",
    }
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn plan(
    version: CgroupVersion,
    mounts: &[CgroupMount],
    options: &DetectOptions,
    probe: &HostProbe,
) -> Result<Plan, String> {
    match version {
        CgroupVersion::V2 => plan_v2(mounts, options, probe),
        CgroupVersion::V1 => plan_v1(mounts, probe),
    }
}

fn plan_v2(
    mounts: &[CgroupMount],
    options: &DetectOptions,
    probe: &HostProbe,
) -> Result<Plan, String> {
    let Some(mount) = mounts.iter().find(|m| m.version == CgroupVersion::V2) else {
        return Err("cgroup v2: no cgroup2 filesystem is mounted".to_owned());
    };
    let where_ = mount.mount_point.display();
    for required in ["memory", "pids"] {
        if !mount.controllers.iter().any(|c| c == required) {
            let elsewhere = mounts.iter().any(|m| {
                m.version == CgroupVersion::V1 && m.controllers.iter().any(|c| c == required)
            });
            return Err(format!(
                "cgroup v2 at {where_} has no {required} controller (cgroup.controllers: {:?}){}",
                mount.controllers.join(" "),
                if elsewhere {
                    "; it is bound to a cgroup v1 hierarchy (hybrid host)"
                } else {
                    ""
                }
            ));
        }
    }
    let top = if probe.euid == 0 {
        mount.mount_point.clone()
    } else {
        let own = own_v2_cgroup(&options.proc_root).map_err(|e| format!("cgroup v2: {e}"))?;
        let relative = own
            .strip_prefix(mount.root.as_str())
            .map(|rest| rest.trim_start_matches('/'))
            .ok_or_else(|| {
                format!(
                    "cgroup v2: own cgroup {own} is outside the mount at {where_} (root {})",
                    mount.root
                )
            })?;
        mount.mount_point.join(relative)
    };
    if !(probe.writable)(&top) {
        return Err(if probe.euid == 0 {
            format!("cgroup v2 at {where_} is read-only")
        } else {
            format!(
                "cgroup v2 at {where_} is not delegated to uid {}: {} is not writable; run as \
                 root, or start kakoi in a delegated cgroup (systemd-run --user -p Delegate=yes)",
                probe.euid,
                top.display()
            )
        });
    }
    Ok(Plan::V2 {
        base: top.join(&options.base_name),
        top,
    })
}

fn plan_v1(mounts: &[CgroupMount], probe: &HostProbe) -> Result<Plan, String> {
    let mut by_controller: BTreeMap<String, PathBuf> = BTreeMap::new();
    for mount in mounts.iter().filter(|m| m.version == CgroupVersion::V1) {
        for controller in &mount.controllers {
            by_controller
                .entry(controller.clone())
                .or_insert_with(|| mount.mount_point.clone());
        }
    }
    let mut chosen = BTreeMap::new();
    for required in ["memory", "pids"] {
        let Some(mount) = by_controller.get(required) else {
            return Err(format!(
                "cgroup v1: no {required} hierarchy is mounted (mount -t cgroup -o {required} \
                 cgroup /sys/fs/cgroup/{required})"
            ));
        };
        if !(probe.writable)(mount) {
            return Err(format!(
                "cgroup v1 {required} hierarchy at {} is not writable by uid {}; run as root",
                mount.display(),
                probe.euid
            ));
        }
        chosen.insert(required.to_owned(), mount.clone());
    }
    // Optional: cpu (bandwidth limit) and cpuacct (CPU times), co-mounted or separate.
    for optional in ["cpu", "cpuacct"] {
        if let Some(mount) = by_controller.get(optional).filter(|m| (probe.writable)(m)) {
            chosen.insert(optional.to_owned(), mount.clone());
        }
    }
    Ok(Plan::V1 { mounts: chosen })
}

/// Controllers a v2 run would get, from `top`'s `cgroup.controllers`.
fn v2_controllers(top: &Path) -> Vec<String> {
    let available = std::fs::read_to_string(top.join("cgroup.controllers")).unwrap_or_default();
    let mut controllers: Vec<String> = available
        .split_whitespace()
        .filter(|c| ["memory", "pids", "cpu"].contains(c))
        .map(str::to_owned)
        .collect();
    controllers.sort();
    controllers
}

/// The process's cgroup v2 path (`0::/path` in `<proc_root>/self/cgroup`).
fn own_v2_cgroup(proc_root: &Path) -> Result<String, String> {
    let path = proc_root.join("self/cgroup");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| format!("no cgroup v2 entry (0::) in {}", path.display()))
}

fn read_mounts(proc_root: &Path, probe: &HostProbe) -> Result<Vec<CgroupMount>, CgroupError> {
    let path = proc_root.join("self/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Read {
        path: path.clone(),
        source,
    })?;
    let mut mounts = parse_mountinfo(&text);
    for mount in &mut mounts {
        if mount.version == CgroupVersion::V2 {
            mount.controllers = v2_root_controllers(&mount.mount_point);
        }
        mount.writable = (probe.writable)(&mount.mount_point);
    }
    Ok(mounts)
}

fn v2_root_controllers(mount_point: &Path) -> Vec<String> {
    std::fs::read_to_string(mount_point.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Name of kakoi's own cgroup v1 hierarchy that carries `favordynmods`, and its directory
/// under the runtime directory.
pub const FAVORDYNMODS_NAME: &str = "kakoi-favordynmods";

/// What [`enable_favordynmods`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FavorDynmods {
    /// A cgroup mount already has `favordynmods` (the setting is host-wide).
    AlreadyOn(PathBuf),
    /// kakoi mounted its own named v1 hierarchy with `favordynmods` here.
    Enabled(PathBuf),
}

/// The operator's opt-in for fast cgroup v1 attaches (`kakoi doctor --enable-favordynmods`).
///
/// Moving a process into a cgroup takes the global `cgroup_threadgroup_rwsem` for writing;
/// unless a hierarchy is mounted with `favordynmods`, that waits for an RCU grace period
/// (`rcu_sync_enter`: milliseconds, tens under load) on every run. `favordynmods` keeps the
/// lock in its writer-friendly state (on 6.18, a per-threadgroup lock), making migrations
/// cheap and fork/exit slightly dearer, for the whole host; on 6.18 it cannot be turned off
/// again without a reboot. cgroup v1 refuses to change mount flags on remount, so kakoi
/// mounts a hierarchy of its own (`none,name=kakoi-favordynmods`, no controllers) under
/// `<runtime_dir>/kakoi-favordynmods`; the host's own mounts are left alone. Never called
/// implicitly: a host-wide switch is the operator's decision.
pub fn enable_favordynmods(runtime_dir: &Path) -> Result<FavorDynmods, CgroupError> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(mountinfo).map_err(|source| CgroupError::Read {
        path: mountinfo.to_owned(),
        source,
    })?;
    enable_favordynmods_with(&text, &runtime_dir.join(FAVORDYNMODS_NAME), |dir| {
        std::fs::create_dir_all(dir)?;
        nix::mount::mount(
            Some(FAVORDYNMODS_NAME),
            dir,
            Some("cgroup"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(format!("none,name={FAVORDYNMODS_NAME},favordynmods").as_str()),
        )
        .map_err(std::io::Error::from)
    })
}

pub(crate) fn enable_favordynmods_with(
    mountinfo: &str,
    dir: &Path,
    mount: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<FavorDynmods, CgroupError> {
    if let Some(on) = parse_mountinfo(mountinfo)
        .into_iter()
        .find(|m| m.favordynmods)
    {
        return Ok(FavorDynmods::AlreadyOn(on.mount_point));
    }
    mount(dir).map_err(|source| CgroupError::Write {
        path: dir.to_owned(),
        value: format!("mount -t cgroup -o none,name={FAVORDYNMODS_NAME},favordynmods"),
        source,
    })?;
    Ok(FavorDynmods::Enabled(dir.to_owned()))
}

/// The cgroup mounts in a mountinfo text (proc(5)): `id parent major:minor root mount-point
/// options [optional fields] - fstype source super-options`. v2 controllers are left empty
/// (they live in the filesystem, not in mountinfo); `writable` is false.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if separator < 6 || fields.len() < separator + 3 {
            continue;
        }
        let version = match fields[separator + 1] {
            "cgroup" => CgroupVersion::V1,
            "cgroup2" => CgroupVersion::V2,
            _ => continue,
        };
        let controllers = match version {
            CgroupVersion::V1 => fields[separator + 3]
                .split(',')
                .filter(|option| V1_CONTROLLERS.contains(option))
                .map(str::to_owned)
                .collect(),
            CgroupVersion::V2 => Vec::new(),
        };
        mounts.push(CgroupMount {
            version,
            mount_point: PathBuf::from(unescape(fields[4])),
            root: unescape(fields[3]),
            controllers,
            writable: false,
            favordynmods: fields[separator + 3]
                .split(',')
                .any(|option| option == "favordynmods"),
        });
    }
    mounts
}

/// Undo mountinfo's octal escapes (`\040` for a space and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(digits, 8) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake host: `mounts` are (fstype, dir under the temp root, super options); v2 mounts
    /// get `cgroup.controllers` = `v2_controllers`.
    struct FakeHost {
        dir: tempfile::TempDir,
        options: DetectOptions,
    }

    fn fake_host(mounts: &[(&str, &str, &str)], v2_controllers: &str) -> FakeHost {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let proc_self = root.join("proc/self");
        std::fs::create_dir_all(&proc_self).unwrap();
        let mut mountinfo = String::from(
            "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
             31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n",
        );
        for (index, (fstype, name, options)) in mounts.iter().enumerate() {
            let mount = root.join("cgroup").join(name);
            std::fs::create_dir_all(&mount).unwrap();
            std::fs::write(mount.join("cgroup.procs"), "").unwrap();
            if *fstype == "cgroup2" {
                std::fs::write(mount.join("cgroup.controllers"), v2_controllers).unwrap();
                std::fs::write(mount.join("cgroup.subtree_control"), "").unwrap();
            }
            mountinfo.push_str(&format!(
                "{} 31 0:{} / {} rw,nosuid,nodev,noexec,relatime shared:{} - {fstype} {fstype} {options}\n",
                32 + index,
                29 + index,
                mount.display(),
                9 + index
            ));
        }
        std::fs::write(proc_self.join("mountinfo"), mountinfo).unwrap();
        std::fs::write(proc_self.join("cgroup"), "0::/user.slice/session-1.scope\n").unwrap();
        let options = DetectOptions {
            proc_root: root.join("proc"),
            ..DetectOptions::default()
        };
        FakeHost { dir, options }
    }

    fn root_probe() -> HostProbe {
        HostProbe {
            euid: 0,
            writable: |_| true,
        }
    }

    /// This machine: v1 controllers on separate mounts, cgroup2 at `unified` with hugetlb only.
    fn hybrid() -> FakeHost {
        fake_host(
            &[
                ("cgroup", "cpu", "rw,cpu"),
                ("cgroup", "cpuacct", "rw,cpuacct"),
                ("cgroup", "cpuset", "rw,cpuset"),
                ("cgroup", "memory", "rw,memory"),
                ("cgroup", "pids", "rw,pids"),
                ("cgroup", "systemd", "rw,xattr,name=systemd"),
                ("cgroup2", "unified", "rw"),
            ],
            "hugetlb\n",
        )
    }

    #[test]
    fn favordynmods_is_enabled_once_and_only_when_asked() {
        let dir = Path::new("/run/kakoi/kakoi-favordynmods");
        let plain = "30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n";
        let mut mounted = Vec::new();
        let done = enable_favordynmods_with(plain, dir, |d| {
            mounted.push(d.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(done, FavorDynmods::Enabled(dir.to_owned()));
        assert_eq!(mounted, [dir.to_owned()]);
        let on = format!(
            "{plain}60 27 0:50 / {} rw,relatime - cgroup kakoi-favordynmods rw,none,name=kakoi-favordynmods,favordynmods\n",
            dir.display()
        );
        let again = enable_favordynmods_with(&on, dir, |_| panic!("mounted twice")).unwrap();
        assert_eq!(again, FavorDynmods::AlreadyOn(dir.to_owned()));
        let refused = enable_favordynmods_with(plain, dir, |_| {
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        })
        .unwrap_err();
        assert!(refused.to_string().contains("favordynmods"), "{refused}");
    }

    #[test]
    fn parse_mountinfo_finds_cgroup_mounts() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:5 - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 /sub /mnt/with\\040space rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(
            mounts[0].mount_point,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(mounts[0].controllers, ["cpu", "cpuacct"]);
        assert!(mounts[1].controllers.is_empty());
        assert_eq!(mounts[2].version, CgroupVersion::V2);
        assert_eq!(mounts[2].mount_point, Path::new("/mnt/with space"));
        assert_eq!(mounts[2].root, "/sub");
    }

    #[test]
    fn detect_pure_v2() {
        let host = fake_host(
            &[("cgroup2", "", "rw,nsdelegate")],
            "cpuset cpu io memory pids\n",
        );
        let driver = detect_with(&host.options, &root_probe(), CgroupFs::FAKE).unwrap();
        assert_eq!(driver.version(), CgroupVersion::V2);
        assert_eq!(driver.controllers(), ["cpu", "memory", "pids"]);
        assert!(host.dir.path().join("cgroup/kakoi").is_dir());
        let info = describe_host_with(&host.options, &root_probe());
        assert_eq!(info.version, Some(CgroupVersion::V2));
        assert_eq!(info.bases, [host.dir.path().join("cgroup/kakoi")]);
        assert_eq!(info.controllers, ["cpu", "memory", "pids"]);
    }

    #[test]
    fn detect_v2_non_root_uses_own_cgroup() {
        let host = fake_host(&[("cgroup2", "", "rw")], "cpu memory pids\n");
        let own = host.dir.path().join("cgroup/user.slice/session-1.scope");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(own.join("cgroup.subtree_control"), "cpu memory pids\n").unwrap();
        std::fs::write(own.join("cgroup.procs"), "").unwrap();
        let probe = HostProbe {
            euid: 1000,
            writable: |_| true,
        };
        let info = describe_host_with(&host.options, &probe);
        assert_eq!(info.bases, [own.join("kakoi")]);
        detect_with(&host.options, &probe, CgroupFs::FAKE).unwrap();
        assert!(own.join("kakoi").is_dir());
    }

    #[test]
    fn detect_v2_not_delegated_says_so() {
        let host = fake_host(&[("cgroup2", "", "rw")], "cpu memory pids\n");
        let probe = HostProbe {
            euid: 1000,
            writable: |_| false,
        };
        let error = detect_with(&host.options, &probe, CgroupFs::FAKE).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("not delegated to uid 1000"), "{message}");
        assert!(message.contains("user.slice/session-1.scope"), "{message}");
    }

    #[test]
    fn detect_hybrid_picks_v1() {
        let host = hybrid();
        let driver = detect_with(&host.options, &root_probe(), CgroupFs::FAKE).unwrap();
        assert_eq!(driver.version(), CgroupVersion::V1);
        assert_eq!(driver.controllers(), ["cpu", "cpuacct", "memory", "pids"]);
        for hierarchy in ["memory", "pids", "cpu", "cpuacct"] {
            assert!(
                host.dir
                    .path()
                    .join("cgroup")
                    .join(hierarchy)
                    .join("kakoi")
                    .is_dir()
            );
        }
        let info = describe_host_with(&host.options, &root_probe());
        assert_eq!(info.version, Some(CgroupVersion::V1));
        assert_eq!(info.mounts.len(), 7);
        assert_eq!(info.bases.len(), 4);
        assert!(info.notes[0].contains("hugetlb"), "{:?}", info.notes);
        assert!(info.notes[0].contains("hybrid"), "{:?}", info.notes);
        // Serializable for `kakoi doctor --json`.
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains("\"version\":\"v1\""), "{json}");
    }

    #[test]
    fn detect_v1_with_cpu_cpuacct_comounted() {
        let host = fake_host(
            &[
                ("cgroup", "cpu,cpuacct", "rw,cpu,cpuacct"),
                ("cgroup", "memory", "rw,memory"),
                ("cgroup", "pids", "rw,pids"),
            ],
            "",
        );
        let driver = detect_with(&host.options, &root_probe(), CgroupFs::FAKE).unwrap();
        assert_eq!(driver.version(), CgroupVersion::V1);
        assert_eq!(driver.controllers(), ["cpu", "cpuacct", "memory", "pids"]);
        assert!(host.dir.path().join("cgroup/cpu,cpuacct/kakoi").is_dir());
    }

    #[test]
    fn detect_prefer_is_honoured_first() {
        // Both usable (v2 with memory next to a v1 pids+memory pair is artificial, but shows
        // the order).
        let host = fake_host(
            &[
                ("cgroup", "memory", "rw,memory"),
                ("cgroup", "pids", "rw,pids"),
                ("cgroup2", "unified", "rw"),
            ],
            "memory pids\n",
        );
        let mut options = host.options.clone();
        options.prefer = Some(CgroupVersion::V1);
        let driver = detect_with(&options, &root_probe(), CgroupFs::FAKE).unwrap();
        assert_eq!(driver.version(), CgroupVersion::V1);
        let driver = detect_with(&host.options, &root_probe(), CgroupFs::FAKE).unwrap();
        assert_eq!(driver.version(), CgroupVersion::V2);
    }

    #[test]
    fn detect_nothing_usable_explains() {
        let host = fake_host(&[("cgroup2", "unified", "rw")], "hugetlb\n");
        let error = detect_with(&host.options, &root_probe(), CgroupFs::FAKE).unwrap_err();
        let CgroupError::Unavailable { reason } = &error else {
            panic!("{error:?}");
        };
        assert!(reason.contains("no memory controller"), "{reason}");
        assert!(reason.contains("no memory hierarchy"), "{reason}");
        let info = describe_host_with(&host.options, &root_probe());
        assert_eq!(info.version, None);
        assert!(!info.writable);
        assert_eq!(info.reason.as_deref(), Some(reason.as_str()));
    }

    #[test]
    fn detect_v1_not_writable_explains() {
        let host = hybrid();
        let probe = HostProbe {
            euid: 1000,
            writable: |_| false,
        };
        let error = detect_with(&host.options, &probe, CgroupFs::FAKE).unwrap_err();
        assert!(error.to_string().contains("memory hierarchy at"), "{error}");
        assert!(
            error.to_string().contains("not writable by uid 1000"),
            "{error}"
        );
    }

    #[test]
    fn detect_without_mountinfo_names_the_file() {
        let options = DetectOptions {
            proc_root: PathBuf::from("/nonexistent-proc"),
            ..DetectOptions::default()
        };
        let error = detect_with(&options, &root_probe(), CgroupFs::FAKE).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("/nonexistent-proc/self/mountinfo"),
            "{error}"
        );
    }
}
