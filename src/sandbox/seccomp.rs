//! seccomp: the syscall allowlist applied last in the sandbox child, and the supervisor side
//! that names violations.
//!
//! A policy is four BPF filters (see `seccomp/README.md`). The kernel runs every installed
//! filter and takes the strongest action (`KILL_PROCESS > KILL_THREAD > TRAP > ERRNO >
//! USER_NOTIF > TRACE > LOG > ALLOW`, seccomp(2) "Filter return values"), so each filter decides
//! one thing:
//!
//! 1. guard: non-native architecture or an x32 syscall number → `KILL_PROCESS`;
//! 2. `allow`: the allowlist (plus the routed syscalls of 3 and 4) → `ALLOW`, else `ERRNO(EPERM)`;
//! 3. `enosys`: `clone3` → `ERRNO(ENOSYS)`, else `ALLOW`;
//! 4. `report`: syscalls only an attack makes → `USER_NOTIF` (the supervisor names and kills),
//!    or `KILL_PROCESS` when the kernel lacks user notification.
//!
//! Everything is compiled and allocated before clone; [`SeccompPolicy::install`] only makes
//! syscalls on prepared memory.
#![allow(unsafe_code)]

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use serde::Serialize;

#[path = "../../seccomp/compile.rs"]
mod compile;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/seccomp_generated.rs"));
}

const EMBEDDED_ALLOW: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default.allow.bpf"));
const EMBEDDED_ENOSYS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default.enosys.bpf"));
const EMBEDDED_REPORT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default.report.bpf"));

/// `__X32_SYSCALL_BIT`: x32 syscalls arrive with `AUDIT_ARCH_X86_64` and this bit set in the
/// number; seccompiler's arch check does not look at it.
pub const X32_SYSCALL_BIT: i64 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
const NATIVE_AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const NATIVE_AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NATIVE_AUDIT_ARCH: u32 = 0;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR_OFFSET: u32 = 0;
const SECCOMP_DATA_ARCH_OFFSET: u32 = 4;

/// Errors of loading a policy or receiving a notification.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The policy file could not be read.
    #[error("cannot read seccomp policy {path}")]
    Read {
        /// The policy file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The policy file is not a valid kakoi seccomp policy.
    #[error("invalid seccomp policy {path}: {reason}")]
    Invalid {
        /// The policy file.
        path: PathBuf,
        /// What is wrong, naming the filter, rule or syscall.
        reason: String,
    },
    /// kakoi has no compiled policy for this architecture.
    #[error("no seccomp policy for architecture {0}")]
    UnsupportedArch(&'static str),
    /// The policy compiled in at build time is damaged (a build problem, not a user error).
    #[error("embedded seccomp policy is corrupt: {0}")]
    Embedded(&'static str),
    /// `SECCOMP_IOCTL_NOTIF_RECV` failed (`ENOENT`: the caller died before it was read).
    #[error("cannot receive a seccomp notification")]
    Receive(#[source] Errno),
}

/// Compiled filters, ready to install in the sandbox child.
#[derive(Clone)]
pub struct SeccompPolicy {
    name: String,
    guard: Vec<libc::sock_filter>,
    allow: Vec<libc::sock_filter>,
    enosys: Vec<libc::sock_filter>,
    report: Vec<libc::sock_filter>,
    report_template: Vec<libc::sock_filter>,
    notify: bool,
    allowed: Vec<String>,
    reported: Vec<String>,
}

impl fmt::Debug for SeccompPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeccompPolicy")
            .field("summary", &self.summary())
            .finish()
    }
}

/// What [`SeccompPolicy::summary`] reports, for the result's `isolation` and `kakoi doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeccompSummary {
    /// `default` or the policy file's path.
    pub policy: String,
    /// Architecture the filters check for.
    pub arch: &'static str,
    /// Number of allowed syscalls (some with restricted arguments).
    pub allowed: usize,
    /// Number of syscalls reported as violations.
    pub reported: usize,
    /// Whether the kernel supports `SECCOMP_RET_USER_NOTIF`.
    pub notify_supported: bool,
    /// What a reported syscall does: `user_notif` (named by the supervisor) or `kill_process`.
    pub report_action: &'static str,
    /// Total BPF instructions over all filters (each syscall pays for the filters it passes).
    pub instructions: usize,
}

/// One reported syscall, read from the listener by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The syscall number as the caller made it.
    pub syscall_nr: i64,
    /// The syscall name, or `syscall_<nr>` when unknown.
    pub syscall: String,
    /// The caller's pid, as seen from the supervisor's pid namespace.
    pub pid: u32,
    /// The caller's `AUDIT_ARCH_*` value.
    pub arch: u32,
    /// The notification id (for `SECCOMP_IOCTL_NOTIF_SEND`, if a supervisor wants to answer).
    pub id: u64,
}

struct Programs {
    allow: Vec<libc::sock_filter>,
    plain: Vec<String>,
    enosys: Vec<libc::sock_filter>,
    report: Vec<libc::sock_filter>,
    allowed: Vec<String>,
    reported: Vec<String>,
}

impl SeccompPolicy {
    /// The default policy, compiled from `seccomp/<arch>/default.json` at build time.
    pub fn default_policy() -> Result<Self, SeccompError> {
        if EMBEDDED_ALLOW.is_empty() {
            return Err(SeccompError::UnsupportedArch(generated::POLICY_ARCH));
        }
        Ok(Self::assemble(
            "default".to_string(),
            Programs {
                allow: decode(EMBEDDED_ALLOW)?,
                plain: generated::DEFAULT_PLAIN
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                enosys: decode(EMBEDDED_ENOSYS)?,
                report: decode(EMBEDDED_REPORT)?,
                allowed: generated::DEFAULT_ALLOWED
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                reported: generated::DEFAULT_REPORTED
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            },
        ))
    }

    /// Reads and compiles a policy file (same format and rules as the default policy) for the
    /// native architecture. Errors name the file and the problem.
    pub fn from_file(path: &Path) -> Result<Self, SeccompError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Compiles a policy from JSON text; `name` goes into errors and the summary.
    pub fn from_json(text: &str, name: &str) -> Result<Self, SeccompError> {
        let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|_| SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
        let compiled =
            compile::compile_policy(text, arch).map_err(|reason| SeccompError::Invalid {
                path: PathBuf::from(name),
                reason,
            })?;
        let convert = |program: &seccompiler::BpfProgram| -> Vec<libc::sock_filter> {
            program
                .iter()
                .map(|i| libc::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect()
        };
        Ok(Self::assemble(
            name.to_string(),
            Programs {
                allow: convert(&compiled.allow),
                plain: compiled.plain,
                enosys: convert(&compiled.enosys),
                report: convert(&compiled.report),
                allowed: compiled.allowed,
                reported: compiled.reported,
            },
        ))
    }

    fn assemble(name: String, programs: Programs) -> Self {
        let mut policy = SeccompPolicy {
            name,
            guard: guard_program(),
            allow: dispatch_program(&programs.plain, libc::SECCOMP_RET_ALLOW, &programs.allow),
            enosys: programs.enosys,
            report: programs.report.clone(),
            report_template: programs.report,
            notify: false,
            allowed: programs.allowed,
            reported: programs.reported,
        };
        policy.set_notify(true);
        policy
    }

    /// Chooses how reported syscalls stop the process: `true` for `SECCOMP_RET_USER_NOTIF` (a
    /// supervisor must poll the listener), `false` for `SECCOMP_RET_KILL_PROCESS` (the name is
    /// lost). Asking for notification on a kernel without it keeps `KILL_PROCESS`.
    /// [`SeccompPolicy::default_policy`] and [`SeccompPolicy::from_file`] ask for it.
    pub fn set_notify(&mut self, notify: bool) {
        self.notify = notify && user_notif_available();
        let action = if self.notify {
            libc::SECCOMP_RET_USER_NOTIF
        } else {
            libc::SECCOMP_RET_KILL_PROCESS
        };
        // The report filter lists whole syscalls only (the compiler refuses `args` there), so
        // it is rebuilt as a binary search with the chosen action, default ALLOW.
        self.report = if self.report_template.is_empty() {
            Vec::new()
        } else {
            dispatch_program(
                &self.reported,
                action,
                &[bpf_stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW)],
            )
        };
    }

    /// Whether reported syscalls go to a listener (`USER_NOTIF`) rather than killing directly.
    pub fn notifies(&self) -> bool {
        self.notify
    }
    /// Installs the filters on the calling thread. Call it in the sandbox child after
    /// `PR_SET_NO_NEW_PRIVS` and Landlock, just before exec: it makes only `seccomp(2)` calls on
    /// memory prepared before clone, and allocates nothing.
    ///
    /// Returns the user-notification listener (`O_CLOEXEC`, owned by the caller) when the report
    /// filter uses `USER_NOTIF`. Hand it to the supervisor, then close it: a payload holding its
    /// own listener could let its reported syscalls continue.
    pub fn install(&self) -> Result<Option<RawFd>, Errno> {
        let mut listener = None;
        if !self.report.is_empty() {
            let flags = if self.notify {
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
            } else {
                0
            };
            let fd = set_mode_filter(&self.report, flags)?;
            if self.notify {
                listener = Some(fd);
            }
        }
        let rest = || -> Result<(), Errno> {
            if !self.enosys.is_empty() {
                set_mode_filter(&self.enosys, 0)?;
            }
            set_mode_filter(&self.guard, 0)?;
            // Last: the allowlist refuses seccomp(2) itself.
            set_mode_filter(&self.allow, 0)?;
            Ok(())
        };
        if let Err(errno) = rest() {
            if let Some(fd) = listener {
                // SAFETY: `fd` was just returned by seccomp(2) and is owned by nobody else.
                unsafe { libc::close(fd) };
            }
            return Err(errno);
        }
        Ok(listener)
    }

    /// Syscalls this policy allows (some only with restricted arguments), sorted.
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    /// Syscalls this policy reports as violations, sorted.
    pub fn reported(&self) -> &[String] {
        &self.reported
    }

    /// A serializable description for `isolation` and `kakoi doctor`.
    pub fn summary(&self) -> SeccompSummary {
        SeccompSummary {
            policy: self.name.clone(),
            arch: generated::POLICY_ARCH,
            allowed: self.allowed.len(),
            reported: self.reported.len(),
            notify_supported: user_notif_available(),
            report_action: if self.notify {
                "user_notif"
            } else {
                "kill_process"
            },
            instructions: self.guard.len()
                + self.allow.len()
                + self.enosys.len()
                + self.report.len(),
        }
    }
}

/// Reads one pending notification from the listener. Use it after `poll` reports the listener
/// readable (it blocks otherwise). The caller is still stopped in the syscall, which has not run;
/// the supervisor should now kill the whole sandbox (cgroup or pid-1 kill) and report
/// `seccomp_violation` with [`Violation::syscall`].
pub fn receive_violation(listener: BorrowedFd<'_>) -> Result<Violation, SeccompError> {
    let mut notification = libc::seccomp_notif {
        id: 0,
        pid: 0,
        flags: 0,
        data: libc::seccomp_data {
            nr: 0,
            arch: 0,
            instruction_pointer: 0,
            args: [0; 6],
        },
    };
    // SAFETY: SECCOMP_IOCTL_NOTIF_RECV writes one `struct seccomp_notif` into the zeroed buffer
    // (the kernel requires it zeroed), which lives for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut notification as *mut libc::seccomp_notif,
        )
    };
    if rc < 0 {
        return Err(SeccompError::Receive(Errno::last()));
    }
    let nr = i64::from(notification.data.nr);
    let name = if notification.data.arch == NATIVE_AUDIT_ARCH {
        syscall_name(nr)
    } else {
        None
    };
    Ok(Violation {
        syscall_nr: nr,
        syscall: name.map_or_else(|| format!("syscall_{nr}"), str::to_string),
        pid: notification.pid,
        arch: notification.data.arch,
        id: notification.id,
    })
}

/// The name of a native-architecture syscall number (kernel 6.12 table).
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    generated::SYSCALL_TABLE
        .binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .map(|index| generated::SYSCALL_TABLE[index].1)
}

/// The number of a native-architecture syscall name.
pub fn syscall_number(name: &str) -> Option<i64> {
    generated::SYSCALL_TABLE
        .iter()
        .find(|&&(_, n)| n == name)
        .map(|&(nr, _)| nr)
}

/// Syscalls the default policy allows (some only with restricted arguments), sorted. The list is
/// checked in as `seccomp/<arch>/default.allowed.txt` so a policy change is a reviewable diff.
pub fn allowed_syscalls() -> Vec<&'static str> {
    generated::DEFAULT_ALLOWED.to_vec()
}

/// Syscalls the default policy reports as violations, sorted.
pub fn reported_syscalls() -> Vec<&'static str> {
    generated::DEFAULT_REPORTED.to_vec()
}

/// Whether the kernel supports `SECCOMP_RET_USER_NOTIF` (seccomp(2) `SECCOMP_GET_ACTION_AVAIL`).
pub fn user_notif_available() -> bool {
    let action: u32 = libc::SECCOMP_RET_USER_NOTIF;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL only reads the u32 behind the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    rc == 0
}

/// Sends `fd` over the unix socket `socket` with `SCM_RIGHTS` (one data byte `b'L'`). Meant for
/// the child handing the listener to the supervisor: no allocation, async-signal-safe.
pub fn send_listener(socket: RawFd, fd: RawFd) -> Result<(), Errno> {
    #[repr(C, align(8))]
    struct ControlBuffer([u8; 64]);
    let mut control = ControlBuffer([0; 64]);
    let mut byte = *b"L";
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths); fields are set below.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.0.as_mut_ptr().cast();
    header.msg_controllen = space as _;
    // SAFETY: `header` points at `control`, which is aligned and larger than `space`, so
    // CMSG_FIRSTHDR returns a pointer inside it with room for one header plus one fd.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&header);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: `header` and everything it points to live across the call.
    let rc = unsafe { libc::sendmsg(socket, &header, libc::MSG_NOSIGNAL) };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Receives a descriptor sent with [`send_listener`] (`O_CLOEXEC`). `Ok(None)` on end of file
/// or a message without one (the child did not send a listener).
pub fn receive_listener(socket: BorrowedFd<'_>) -> Result<Option<OwnedFd>, Errno> {
    #[repr(C, align(8))]
    struct ControlBuffer([u8; 64]);
    let mut control = ControlBuffer([0; 64]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths); fields are set below.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.0.as_mut_ptr().cast();
    header.msg_controllen = control.0.len() as _;
    // SAFETY: `header` and the buffers it points to live across the call.
    let rc = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
    if rc < 0 {
        return Err(Errno::last());
    }
    if rc == 0 {
        return Ok(None);
    }
    // SAFETY: the kernel filled `control` and set msg_controllen; CMSG_FIRSTHDR/CMSG_NXTHDR walk
    // only within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                return Ok(Some(OwnedFd::from_raw_fd(fd)));
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    Ok(None)
}

/// seccomp(SECCOMP_SET_MODE_FILTER, flags, prog); returns the syscall's result (a listener fd
/// with `SECCOMP_FILTER_FLAG_NEW_LISTENER`).
fn set_mode_filter(program: &[libc::sock_filter], flags: libc::c_ulong) -> Result<RawFd, Errno> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies the program (copy_from_user) and does not keep the pointer;
    // `prog` and `program` outlive the call. No allocation happens here.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc as RawFd)
    }
}

const fn bpf_stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn bpf_jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Filter 1, built by hand: kill any syscall from a non-native ABI (i386 on x86_64, arm32 on
/// aarch64) or with the x32 bit set (x86_64 only: x32 calls carry `AUDIT_ARCH_X86_64`).
fn guard_program() -> Vec<libc::sock_filter> {
    let mut program = vec![
        bpf_stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH_OFFSET),
        bpf_jump(BPF_JMP_JEQ_K, NATIVE_AUDIT_ARCH, 1, 0),
        bpf_stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    if cfg!(target_arch = "x86_64") {
        program.extend([
            bpf_stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR_OFFSET),
            bpf_jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT as u32, 0, 1),
            bpf_stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        ]);
    }
    program.push(bpf_stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    program
}

const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JGE_K: u16 = 0x35;
/// Ranges this small are checked linearly at the leaves of the search.
const DISPATCH_LEAF: usize = 4;

/// A binary search over whole syscalls (`RET hit` on a match; the allow filter uses it with
/// ALLOW over the syscalls allowed whatever their arguments, the report filter with its action), falling through to `conditional` (the compiled rules with
/// argument checks, ending in the policy's default ERRNO). Far jumps use `JA` (32-bit
/// offsets) because conditional jumps only reach 255 instructions.
fn dispatch_program(
    plain: &[String],
    hit: u32,
    conditional: &[libc::sock_filter],
) -> Vec<libc::sock_filter> {
    let mut numbers: Vec<u32> = plain
        .iter()
        .filter_map(|name| syscall_number(name))
        .map(|nr| nr as u32)
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut program = vec![
        bpf_stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH_OFFSET),
        bpf_jump(BPF_JMP_JEQ_K, NATIVE_AUDIT_ARCH, 1, 0),
        bpf_stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        bpf_stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR_OFFSET),
    ];
    let mut to_fallback = Vec::new();
    dispatch_range(&numbers, hit, &mut program, &mut to_fallback);
    let fallback_start = program.len();
    for index in to_fallback {
        program[index].k = (fallback_start - index - 1) as u32;
    }
    if conditional.is_empty() {
        program.push(bpf_stmt(
            BPF_RET_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ));
    } else {
        program.extend_from_slice(conditional);
    }
    program
}

fn dispatch_range(
    numbers: &[u32],
    hit: u32,
    program: &mut Vec<libc::sock_filter>,
    to_fallback: &mut Vec<usize>,
) {
    if numbers.len() <= DISPATCH_LEAF {
        for &nr in numbers {
            program.push(bpf_jump(BPF_JMP_JEQ_K, nr, 0, 1));
            program.push(bpf_stmt(BPF_RET_K, hit));
        }
        to_fallback.push(program.len());
        program.push(bpf_stmt(BPF_JMP_JA, 0));
        return;
    }
    let mid = numbers.len() / 2;
    // nr >= numbers[mid]: take the JA to the right half; else skip it into the left half.
    program.push(bpf_jump(BPF_JMP_JGE_K, numbers[mid], 0, 1));
    let to_right = program.len();
    program.push(bpf_stmt(BPF_JMP_JA, 0));
    dispatch_range(&numbers[..mid], hit, program, to_fallback);
    program[to_right].k = (program.len() - to_right - 1) as u32;
    dispatch_range(&numbers[mid..], hit, program, to_fallback);
}

/// Decodes a program serialised by `build.rs` (8 bytes per instruction, little-endian).
fn decode(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, SeccompError> {
    if bytes.len() % 8 != 0 {
        return Err(SeccompError::Embedded("length is not a multiple of 8"));
    }
    if bytes.len() / 8 > usize::from(u16::MAX) {
        return Err(SeccompError::Embedded("program too long"));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_list_matches_checked_in_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seccomp")
            .join(generated::POLICY_ARCH)
            .join("default.allowed.txt");
        let expected = std::fs::read_to_string(&path).expect("checked-in allowed list");
        let expected: Vec<&str> = expected
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        let actual = allowed_syscalls();
        assert_eq!(
            actual,
            expected,
            "the default policy changed; update {} (one syscall per line)",
            path.display()
        );
    }

    #[test]
    fn default_policy_loads_and_routes() {
        let policy = SeccompPolicy::default_policy().unwrap();
        let summary = policy.summary();
        assert_eq!(summary.policy, "default");
        assert!(summary.allowed > 100);
        for name in [
            "keyctl",
            "bpf",
            "ptrace",
            "io_uring_setup",
            "unshare",
            "mount",
        ] {
            assert!(policy.reported().iter().any(|r| r == name), "{name}");
            assert!(!allowed_syscalls().contains(&name), "{name}");
        }
        assert!(!allowed_syscalls().contains(&"clone3"));
        assert!(allowed_syscalls().contains(&"execve"));
    }

    #[test]
    fn embedded_policy_equals_runtime_compilation() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("seccomp")
                .join(generated::POLICY_ARCH)
                .join("default.json"),
        )
        .unwrap();
        let embedded = SeccompPolicy::default_policy().unwrap();
        let runtime = SeccompPolicy::from_json(&text, "default").unwrap();
        let key = |p: &[libc::sock_filter]| -> Vec<(u16, u8, u8, u32)> {
            p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
        };
        assert_eq!(key(&embedded.allow), key(&runtime.allow));
        assert_eq!(key(&embedded.report), key(&runtime.report));
    }

    #[test]
    fn every_checked_in_policy_compiles_for_its_arch() {
        for (arch, target) in [
            ("x86_64", seccompiler::TargetArch::x86_64),
            ("aarch64", seccompiler::TargetArch::aarch64),
        ] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("seccomp")
                .join(arch);
            let text = std::fs::read_to_string(dir.join("default.json")).unwrap();
            let compiled = compile::compile_policy(&text, target).unwrap();
            let listed = std::fs::read_to_string(dir.join("default.allowed.txt")).unwrap();
            let listed: Vec<&str> = listed.lines().filter(|l| !l.starts_with('#')).collect();
            assert_eq!(
                compiled.allowed, listed,
                "{arch}: update default.allowed.txt"
            );
        }
    }

    #[test]
    fn syscall_names_round_trip() {
        for name in ["read", "keyctl", "bpf", "perf_event_open", "io_uring_setup"] {
            let nr = syscall_number(name).unwrap();
            assert_eq!(syscall_name(nr), Some(name));
        }
        assert_eq!(syscall_name(100_000), None);
    }

    #[test]
    fn invalid_policies_are_clear_errors() {
        let cases = [
            ("{", "not valid JSON"),
            (r#"{"report": {}}"#, "missing the `allow` filter"),
            (
                r#"{"allow": {"match_action": "allow", "mismatch_action": {"errno": 1}, "filter": [{"syscall": "read"}]}}"#,
                "needs a `comment`",
            ),
            (
                r#"{"allow": {"match_action": "allow", "mismatch_action": {"errno": 1}, "filter": [{"syscall": "no_such_call", "comment": "x"}]}}"#,
                "no_such_call",
            ),
            (
                r#"{"allow": {"match_action": "allow", "mismatch_action": {"errno": 1}, "filter": []}, "extra": {}}"#,
                "unknown filter `extra`",
            ),
        ];
        for (text, needle) in cases {
            let error = SeccompPolicy::from_json(text, "/etc/p.json")
                .unwrap_err()
                .to_string();
            assert!(error.contains("/etc/p.json"), "{error}");
            assert!(error.contains(needle), "{error} lacks {needle}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let error = SeccompPolicy::from_file(Path::new("/nonexistent/policy.json")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/policy.json"));
    }
}
