//! Landlock: filesystem, TCP and IPC-scope restrictions, prepared in the launcher and applied
//! in the sandbox child.
//!
//! The ruleset is created before clone with the `landlock` crate (ABI negotiation, read+execute
//! rules on the host paths that are bind-mounted read-only into the sandbox: a bind mount shares
//! the inodes, and Landlock rules attach to inodes, so these rules hold inside the new root).
//! Paths that only exist inside the sandbox (`/tmp`, the workdir, `/dev/null`, the new `/proc`)
//! are opened in the child after pivot_root, with raw syscalls on prepared `CString`s, then the
//! child calls `landlock_restrict_self` (landlock(7)).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
};
use nix::errno::Errno;
use serde::Serialize;

/// The newest ABI whose features kakoi asks for (6: signal and abstract unix socket scoping).
const TARGET_ABI: i32 = 6;
/// `LANDLOCK_RULE_PATH_BENEATH`.
const RULE_PATH_BENEATH: libc::c_int = 1;
/// `LANDLOCK_CREATE_RULESET_VERSION`.
const CREATE_RULESET_VERSION: libc::c_uint = 1;
/// Rights that apply to non-directories (landlock(7): the others need a directory).
const FILE_RIGHTS: u64 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15);
/// `READ_FILE | READ_DIR`: the rights of a read-only in-sandbox path such as `/proc`.
const READ_ONLY_RIGHTS: u64 = (1 << 2) | (1 << 3);

/// [`LandlockPlan::apply_in_child`] failure stage: `landlock_restrict_self` failed.
pub const STAGE_RESTRICT_SELF: u32 = 0xffff_0001;
/// [`LandlockPlan::apply_in_child`] failure stage: the plan is strict but holds no ruleset.
pub const STAGE_NO_RULESET: u32 = 0xffff_0002;

/// How to treat layers the kernel cannot enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LandlockMode {
    /// Every layer this kernel supports is required; failing to enforce one is an error.
    Strict,
    /// Enforce what works; the summary says what was achieved.
    BestEffort,
}

/// Errors of [`LandlockPlan::prepare`].
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// Strict mode, but the kernel has no usable Landlock.
    #[error("landlock is not available on this kernel (strict mode): {0}")]
    Unsupported(Errno),
    /// Creating the ruleset or adding a rule failed.
    #[error("cannot build the landlock ruleset")]
    Ruleset(#[from] landlock::RulesetError),
    /// A host path could not be opened for a rule.
    #[error("cannot open {path} for a landlock rule")]
    HostPath {
        /// The host path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An in-sandbox path is not absolute or contains a NUL byte.
    #[error("invalid in-sandbox landlock path {0:?}: must be absolute, without NUL")]
    SandboxPath(String),
}

/// Everything [`LandlockPlan::prepare_with`] needs.
#[derive(Debug, Clone, Copy)]
pub struct LandlockSpec<'a> {
    /// Host paths bind-mounted read-only into the sandbox: read + execute.
    pub ro_exec_host_paths: &'a [PathBuf],
    /// Host paths bind-mounted writable into the sandbox: every handled right.
    pub rw_host_paths: &'a [PathBuf],
    /// In-sandbox paths that are only read (e.g. the new `/proc`): read file + read dir.
    pub ro_sandbox_paths: &'a [&'a str],
    /// In-sandbox paths that are written (`/tmp`, the workdir, `/dev/shm`, `/dev/null`...):
    /// every handled right (file rights only for non-directories).
    pub rw_sandbox_paths: &'a [&'a str],
    /// Deny TCP bind and connect (ABI 4+).
    pub network_off: bool,
    /// Strict or best effort.
    pub mode: LandlockMode,
}

#[derive(Debug)]
struct SandboxPath {
    path: CString,
    rights: u64,
}

/// A prepared ruleset plus the in-sandbox paths the child adds before restricting itself.
#[derive(Debug)]
pub struct LandlockPlan {
    ruleset: Option<OwnedFd>,
    sandbox_paths: Vec<SandboxPath>,
    kernel_abi: i32,
    abi: i32,
    mode: LandlockMode,
    handled_fs: u64,
    network: bool,
    scoped: bool,
}

/// What [`LandlockPlan::summary`] reports, for the result's `isolation` and `kakoi doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockSummary {
    /// ABI the kernel reports (0 when Landlock is unavailable).
    pub kernel_abi: i32,
    /// ABI whose features are requested (`min(kernel_abi, 6)`).
    pub abi: i32,
    /// `fully_enforced`, `partially_enforced` (an older ABI: some layers missing) or
    /// `not_enforced`. It is the plan: a failure in the child is reported as a setup error.
    pub status: &'static str,
    /// Strict or best effort.
    pub mode: LandlockMode,
    /// Handled filesystem rights (landlock(7) names, lowercase).
    pub handled_fs: Vec<&'static str>,
    /// Whether TCP bind/connect are handled (denied).
    pub network: bool,
    /// Whether abstract unix sockets and signals are scoped to the sandbox.
    pub scoped: bool,
}

const FS_RIGHT_NAMES: [&str; 16] = [
    "execute",
    "write_file",
    "read_file",
    "read_dir",
    "remove_dir",
    "remove_file",
    "make_char",
    "make_dir",
    "make_reg",
    "make_sock",
    "make_fifo",
    "make_block",
    "make_sym",
    "refer",
    "truncate",
    "ioctl_dev",
];

impl LandlockPlan {
    /// Parent, before clone: the plan for read+execute host paths and read-write in-sandbox
    /// paths. See [`LandlockPlan::prepare_with`] for read-only in-sandbox paths such as `/proc`.
    pub fn prepare(
        ro_exec_host_paths: &[PathBuf],
        rw_sandbox_paths: &[&str],
        network_off: bool,
        mode: LandlockMode,
    ) -> Result<Self, LandlockError> {
        Self::prepare_with(&LandlockSpec {
            ro_exec_host_paths,
            rw_host_paths: &[],
            ro_sandbox_paths: &[],
            rw_sandbox_paths,
            network_off,
            mode,
        })
    }

    /// Parent, before clone: negotiate the ABI, create the ruleset, add the host-path rules and
    /// prepare the in-sandbox paths.
    pub fn prepare_with(spec: &LandlockSpec<'_>) -> Result<Self, LandlockError> {
        let kernel_abi = match kernel_abi() {
            Ok(abi) => abi,
            Err(errno) if spec.mode == LandlockMode::Strict => {
                return Err(LandlockError::Unsupported(errno));
            }
            Err(_) => 0,
        };
        let abi_number = kernel_abi.min(TARGET_ABI);
        let mut plan = LandlockPlan {
            ruleset: None,
            sandbox_paths: Vec::new(),
            kernel_abi,
            abi: abi_number,
            mode: spec.mode,
            handled_fs: 0,
            network: false,
            scoped: false,
        };
        if abi_number < 1 {
            return Ok(plan);
        }
        let abi = abi_from_number(abi_number);
        let level = match spec.mode {
            LandlockMode::Strict => CompatLevel::HardRequirement,
            LandlockMode::BestEffort => CompatLevel::BestEffort,
        };
        let handled_fs = AccessFs::from_all(abi);
        let mut ruleset = Ruleset::default()
            .set_compatibility(level)
            .handle_access(handled_fs)?;
        if spec.network_off && abi_number >= 4 {
            ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
            plan.network = true;
        }
        if abi_number >= 6 {
            ruleset = ruleset.scope(Scope::AbstractUnixSocket | Scope::Signal)?;
            plan.scoped = true;
        }
        let mut created = ruleset.create()?;
        let read_exec = AccessFs::from_read(abi);
        let host_rules = spec
            .ro_exec_host_paths
            .iter()
            .map(|p| (p, read_exec))
            .chain(spec.rw_host_paths.iter().map(|p| (p, handled_fs)));
        for (path, rights) in host_rules {
            let host_error = |source| LandlockError::HostPath {
                path: path.clone(),
                source,
            };
            let is_dir = std::fs::metadata(path).map_err(host_error)?.is_dir();
            let access: BitFlags<AccessFs> = if is_dir {
                rights
            } else {
                rights & AccessFs::from_file(abi)
            };
            let fd = PathFd::new(path).map_err(|e| LandlockError::HostPath {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            created = created.add_rule(PathBeneath::new(fd, access))?;
        }
        plan.handled_fs = handled_fs.bits();
        for (list, rights) in [
            (spec.ro_sandbox_paths, READ_ONLY_RIGHTS),
            (spec.rw_sandbox_paths, plan.handled_fs),
        ] {
            for path in list {
                if !path.starts_with('/') {
                    return Err(LandlockError::SandboxPath(path.to_string()));
                }
                let path = CString::new(*path)
                    .map_err(|_| LandlockError::SandboxPath(path.to_string()))?;
                plan.sandbox_paths.push(SandboxPath {
                    path,
                    rights: rights & plan.handled_fs,
                });
            }
        }
        plan.ruleset = Option::<OwnedFd>::from(created);
        Ok(plan)
    }

    /// The ruleset fd the child needs: keep it open across clone and the child's fd cleanup.
    pub fn ruleset_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.ruleset.as_ref().map(|fd| fd.as_fd())
    }

    /// The in-sandbox path of a failure index returned by [`LandlockPlan::apply_in_child`].
    pub fn describe_failure(&self, stage: u32) -> String {
        match stage {
            STAGE_RESTRICT_SELF => "landlock_restrict_self".to_string(),
            STAGE_NO_RULESET => "no ruleset in strict mode".to_string(),
            index => self.sandbox_paths.get(index as usize).map_or_else(
                || format!("stage {index}"),
                |p| format!("rule for {}", p.path.to_string_lossy()),
            ),
        }
    }

    /// Child, after pivot_root and `PR_SET_NO_NEW_PRIVS` (landlock_restrict_self requires it
    /// without CAP_SYS_ADMIN): add a rule for each in-sandbox path (opened `O_PATH|O_CLOEXEC`),
    /// then restrict the calling thread. Raw syscalls only, no allocation.
    ///
    /// On failure returns the index of the path (read-only paths first, then read-write; see
    /// [`LandlockPlan::describe_failure`]) or a `STAGE_*` code, with the errno. In best-effort
    /// mode a path missing in the sandbox is skipped.
    pub fn apply_in_child(&self) -> Result<(), (u32, Errno)> {
        let Some(ruleset) = &self.ruleset else {
            return match self.mode {
                LandlockMode::Strict if self.kernel_abi >= 1 => {
                    Err((STAGE_NO_RULESET, Errno::EINVAL))
                }
                _ => Ok(()),
            };
        };
        for (index, entry) in self.sandbox_paths.iter().enumerate() {
            let failed = |errno| Err((index as u32, errno));
            // SAFETY: `entry.path` is a NUL-terminated string prepared before clone.
            let fd = unsafe { libc::open(entry.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                let errno = Errno::last();
                if self.mode == LandlockMode::BestEffort && errno == Errno::ENOENT {
                    continue;
                }
                return failed(errno);
            }
            // SAFETY: an all-zero `stat` is a valid buffer for fstat to fill.
            let mut stat: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `fd` is open; `stat` lives across the call.
            let is_dir = unsafe { libc::fstat(fd, &mut stat) } == 0
                && stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
            let rights = if is_dir {
                entry.rights
            } else {
                entry.rights & FILE_RIGHTS
            };
            let attr = PathBeneathAttr {
                allowed_access: rights,
                parent_fd: fd,
            };
            // SAFETY: landlock_add_rule reads the packed attribute struct, which lives across
            // the call; the ruleset fd is owned by the plan.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    ruleset.as_raw_fd(),
                    RULE_PATH_BENEATH,
                    &attr as *const PathBeneathAttr,
                    0,
                )
            };
            let errno = Errno::last();
            // SAFETY: `fd` was opened above and is not used afterwards.
            unsafe { libc::close(fd) };
            if rc < 0 {
                return failed(errno);
            }
        }
        // SAFETY: plain syscall on the owned ruleset fd.
        let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0) };
        if rc < 0 {
            return Err((STAGE_RESTRICT_SELF, Errno::last()));
        }
        Ok(())
    }

    /// A serializable description for `isolation` and `kakoi doctor`.
    pub fn summary(&self) -> LandlockSummary {
        let status = if self.ruleset.is_none() {
            "not_enforced"
        } else if self.abi >= TARGET_ABI {
            "fully_enforced"
        } else {
            "partially_enforced"
        };
        LandlockSummary {
            kernel_abi: self.kernel_abi,
            abi: self.abi,
            status,
            mode: self.mode,
            handled_fs: FS_RIGHT_NAMES
                .iter()
                .enumerate()
                .filter(|(bit, _)| self.handled_fs & (1 << bit) != 0)
                .map(|(_, name)| *name)
                .collect(),
            network: self.network,
            scoped: self.scoped,
        }
    }
}

/// `struct landlock_path_beneath_attr` (packed in the uapi header).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version of the running kernel (landlock_create_ruleset(2) with
/// `LANDLOCK_CREATE_RULESET_VERSION`).
pub fn kernel_abi() -> Result<i32, Errno> {
    // SAFETY: with the VERSION flag the kernel reads no attribute and returns the ABI.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc as i32)
    }
}

fn abi_from_number(number: i32) -> ABI {
    match number {
        ..=0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        _ => ABI::V6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_sandbox_paths_are_rejected() {
        if kernel_abi().is_err() {
            println!("SKIP: landlock unavailable");
            return;
        }
        let error = LandlockPlan::prepare(&[], &["tmp"], true, LandlockMode::BestEffort)
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"tmp\""), "{error}");
    }

    #[test]
    fn summary_names_rights() {
        let plan = LandlockPlan::prepare(&[], &["/tmp"], true, LandlockMode::BestEffort).unwrap();
        let summary = plan.summary();
        if summary.kernel_abi >= 1 {
            assert!(summary.handled_fs.contains(&"write_file"));
            assert_eq!(plan.describe_failure(0), "rule for /tmp");
        } else {
            assert_eq!(summary.status, "not_enforced");
        }
    }
}
