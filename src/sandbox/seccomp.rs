//! seccomp: the syscall allowlist applied last in the sandbox child, and the supervisor side
//! that names violations.
//!
//! A policy file names four decisions (see `seccomp/README.md`): the allowlist (some syscalls
//! only with restricted arguments), syscalls answered `ENOSYS`, syscalls only an attack makes
//! (reported), and everything else refused with `EPERM`. The loader turns them into **one** BPF
//! program, so the kernel checks, converts and JITs one filter per run and every syscall walks
//! one filter:
//!
//! 1. a syscall from another ABI (i386 on x86_64, arm32 on aarch64), or with the x32 bit →
//!    `KILL_PROCESS`;
//! 2. a binary search over ranges of consecutive syscall numbers that get the same answer
//!    (`ALLOW`, `ERRNO(ENOSYS)`, `USER_NOTIF` for reported ones — `KILL_PROCESS` where the
//!    kernel has no user notification —, or the policy's `ERRNO`), about seven comparisons deep;
//! 3. syscalls with argument rules (`clone`, `socket`, `ioctl`, `personality`) jump to the
//!    seccompiler-compiled rules, which end in the policy's `ERRNO`.
//!
//! Everything is compiled and allocated before clone; [`SeccompPolicy::install`] only makes
//! one `seccomp(2)` call on prepared memory.
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

const EMBEDDED_CONDITIONAL: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/default.conditional.bpf"));

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
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JA: u16 = 0x05;
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

/// A compiled policy: one BPF program, ready to install in the sandbox child.
#[derive(Clone)]
pub struct SeccompPolicy {
    name: String,
    program: Vec<libc::sock_filter>,
    conditional: Vec<libc::sock_filter>,
    plain: Vec<String>,
    enosys: Vec<String>,
    deny_errno: u32,
    enosys_errno: u32,
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
    /// Architecture the filter checks for.
    pub arch: &'static str,
    /// Number of allowed syscalls (some with restricted arguments).
    pub allowed: usize,
    /// Number of syscalls reported as violations.
    pub reported: usize,
    /// Whether the kernel supports `SECCOMP_RET_USER_NOTIF`.
    pub notify_supported: bool,
    /// What a reported syscall does: `user_notif` (named by the supervisor) or `kill_process`.
    pub report_action: &'static str,
    /// Number of BPF filters installed (one).
    pub filters: usize,
    /// BPF instructions of the filter.
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

/// The parts of a policy the loader assembles into one program.
struct Parts {
    conditional: Vec<libc::sock_filter>,
    plain: Vec<String>,
    enosys: Vec<String>,
    deny_errno: u32,
    enosys_errno: u32,
    allowed: Vec<String>,
    reported: Vec<String>,
}

impl SeccompPolicy {
    /// The default policy, compiled from `seccomp/<arch>/default.json` at build time.
    pub fn default_policy() -> Result<Self, SeccompError> {
        if generated::DEFAULT_ALLOWED.is_empty() {
            return Err(SeccompError::UnsupportedArch(generated::POLICY_ARCH));
        }
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Ok(Self::assemble(
            "default".to_string(),
            Parts {
                conditional: decode(EMBEDDED_CONDITIONAL)?,
                plain: names(generated::DEFAULT_PLAIN),
                enosys: names(generated::DEFAULT_ENOSYS),
                deny_errno: generated::DEFAULT_DENY_ERRNO,
                enosys_errno: generated::DEFAULT_ENOSYS_ERRNO,
                allowed: names(generated::DEFAULT_ALLOWED),
                reported: names(generated::DEFAULT_REPORTED),
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
        let conditional = compiled
            .allow
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        Ok(Self::assemble(
            name.to_string(),
            Parts {
                conditional,
                plain: compiled.plain,
                enosys: compiled.enosys_names,
                deny_errno: compiled.deny_errno,
                enosys_errno: compiled.enosys_errno,
                allowed: compiled.allowed,
                reported: compiled.reported,
            },
        ))
    }

    fn assemble(name: String, parts: Parts) -> Self {
        let mut policy = SeccompPolicy {
            name,
            program: Vec::new(),
            conditional: parts.conditional,
            plain: parts.plain,
            enosys: parts.enosys,
            deny_errno: parts.deny_errno,
            enosys_errno: parts.enosys_errno,
            notify: false,
            allowed: parts.allowed,
            reported: parts.reported,
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
        let report = if self.notify {
            libc::SECCOMP_RET_USER_NOTIF
        } else {
            libc::SECCOMP_RET_KILL_PROCESS
        };
        let mut classes = Vec::new();
        let number = |name: &String| syscall_number(name).map(|nr| nr as u32);
        // Later entries win: a syscall routed to ENOSYS or reported is also in `plain` (the
        // compiler lists it there so seccompiler checks its name).
        classes.extend(
            self.plain
                .iter()
                .filter_map(number)
                .map(|nr| (nr, Class::Allow)),
        );
        classes.extend(
            self.allowed
                .iter()
                .filter(|name| !self.plain.contains(name))
                .filter_map(number)
                .map(|nr| (nr, Class::Conditional)),
        );
        classes.extend(
            self.enosys
                .iter()
                .filter_map(number)
                .map(|nr| (nr, Class::Enosys)),
        );
        classes.extend(
            self.reported
                .iter()
                .filter_map(number)
                .map(|nr| (nr, Class::Report)),
        );
        self.program = build_program(
            &classes,
            &Actions {
                deny: libc::SECCOMP_RET_ERRNO | (self.deny_errno & libc::SECCOMP_RET_DATA),
                enosys: libc::SECCOMP_RET_ERRNO | (self.enosys_errno & libc::SECCOMP_RET_DATA),
                report,
            },
            &self.conditional,
        );
    }

    /// Whether reported syscalls go to a listener (`USER_NOTIF`) rather than killing directly.
    pub fn notifies(&self) -> bool {
        self.notify
    }

    /// Installs the filter on the calling thread. Call it in the sandbox child after
    /// `PR_SET_NO_NEW_PRIVS` and Landlock, just before exec: it makes one `seccomp(2)` call on
    /// memory prepared before clone, and allocates nothing. The filter refuses `seccomp(2)`
    /// itself from then on.
    ///
    /// Returns the user-notification listener (`O_CLOEXEC`, owned by the caller) when reported
    /// syscalls use `USER_NOTIF`. Hand it to the supervisor, then close it: a payload holding its
    /// own listener could let its reported syscalls continue.
    pub fn install(&self) -> Result<Option<RawFd>, Errno> {
        let listen = self.notify && !self.reported.is_empty();
        let flags = if listen {
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
        } else {
            0
        };
        let fd = set_mode_filter(&self.program, flags)?;
        Ok(listen.then_some(fd))
    }

    /// Syscalls this policy allows (some only with restricted arguments), sorted.
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    /// Syscalls this policy reports as violations, sorted.
    pub fn reported(&self) -> &[String] {
        &self.reported
    }

    /// The BPF program [`SeccompPolicy::install`] loads.
    pub fn program(&self) -> &[libc::sock_filter] {
        &self.program
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
            filters: 1,
            instructions: self.program.len(),
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
    generated::SYSCALLS_BY_NAME
        .binary_search_by_key(&name, |&(n, _)| n)
        .ok()
        .map(|index| generated::SYSCALLS_BY_NAME[index].1)
}

/// Syscalls the default policy allows (some only with restricted arguments), sorted. The list is
/// checked in as `seccomp/<arch>/default.allowed.txt` so a policy change is a reviewable diff.
pub fn allowed_syscalls() -> Vec<&'static str> {
    generated::DEFAULT_ALLOWED.to_vec()
}

/// Syscalls the default policy answers with its `enosys` filter's errno (`ENOSYS`), sorted.
pub fn enosys_syscalls() -> Vec<&'static str> {
    generated::DEFAULT_ENOSYS.to_vec()
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

/// What the filter answers for a syscall number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `ALLOW` whatever the arguments.
    Allow,
    /// Checked by the compiled argument rules.
    Conditional,
    /// `ERRNO(ENOSYS)`.
    Enosys,
    /// `USER_NOTIF` (or `KILL_PROCESS`).
    Report,
    /// The policy's `ERRNO` (not listed anywhere).
    Deny,
}

/// The return values of the classes that end in a `RET`.
struct Actions {
    deny: u32,
    enosys: u32,
    report: u32,
}

/// One filter: the ABI guard, a binary search over ranges of syscall numbers with the same
/// class, and the compiled argument rules as the tail that `Conditional` leaves jump to.
///
/// `classes` lists `(number, class)`; a later entry for the same number wins. Numbers not
/// listed get `Deny`, so unknown and future syscalls are refused. Conditional jumps reach 255
/// instructions; where a left subtree is longer, a `JA` (32-bit offset) bridges it.
fn build_program(
    classes: &[(u32, Class)],
    actions: &Actions,
    conditional: &[libc::sock_filter],
) -> Vec<libc::sock_filter> {
    let mut by_number = std::collections::BTreeMap::new();
    for &(nr, class) in classes {
        by_number.insert(nr, class);
    }
    // Ranges: (first number, class), sorted, each running up to the next one's start; the
    // last runs to u32::MAX. Gaps between listed numbers are Deny ranges.
    let mut ranges: Vec<(u32, Class)> = Vec::new();
    let mut push = |start: u32, class: Class| {
        if ranges.last().map(|r| r.1) != Some(class) {
            ranges.push((start, class));
        }
    };
    let mut next = 0;
    for (&nr, &class) in &by_number {
        if nr > next {
            push(next, Class::Deny);
        }
        push(nr, class);
        next = nr + 1;
    }
    push(next, Class::Deny);
    let mut program = vec![
        bpf_stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH_OFFSET),
        bpf_jump(BPF_JMP_JEQ_K, NATIVE_AUDIT_ARCH, 1, 0),
        bpf_stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        bpf_stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR_OFFSET),
    ];
    if cfg!(target_arch = "x86_64") {
        program.extend([
            bpf_jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT as u32, 0, 1),
            bpf_stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        ]);
    }
    let mut to_conditional = Vec::new();
    emit_ranges(&ranges, actions, &mut program, &mut to_conditional);
    if !to_conditional.is_empty() {
        let tail = program.len();
        for index in to_conditional {
            program[index].k = (tail - index - 1) as u32;
        }
        program.extend_from_slice(conditional);
    }
    program
}

/// Instructions [`emit_ranges`] emits for `ranges`.
fn ranges_len(ranges: &[(u32, Class)]) -> usize {
    if ranges.len() == 1 {
        return 1;
    }
    let (left, right) = ranges.split_at(ranges.len() / 2);
    let left_len = ranges_len(left);
    1 + usize::from(left_len > 255) + left_len + ranges_len(right)
}

/// A search tree over `ranges` (non-empty): `nr >= first of the right half` jumps right, else
/// falls through to the left half; a single range is one leaf.
fn emit_ranges(
    ranges: &[(u32, Class)],
    actions: &Actions,
    program: &mut Vec<libc::sock_filter>,
    to_conditional: &mut Vec<usize>,
) {
    if let [(_, class)] = ranges {
        let leaf = match class {
            Class::Allow => bpf_stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
            Class::Deny => bpf_stmt(BPF_RET_K, actions.deny),
            Class::Enosys => bpf_stmt(BPF_RET_K, actions.enosys),
            Class::Report => bpf_stmt(BPF_RET_K, actions.report),
            Class::Conditional => {
                to_conditional.push(program.len());
                bpf_stmt(BPF_JMP_JA, 0)
            }
        };
        program.push(leaf);
        return;
    }
    let (left, right) = ranges.split_at(ranges.len() / 2);
    let left_len = ranges_len(left);
    let pivot = right[0].0;
    if left_len > 255 {
        // nr >= pivot: take the JA over the left half; else skip it.
        program.push(bpf_jump(BPF_JMP_JGE_K, pivot, 0, 1));
        program.push(bpf_stmt(BPF_JMP_JA, left_len as u32));
    } else {
        program.push(bpf_jump(BPF_JMP_JGE_K, pivot, left_len as u8, 0));
    }
    emit_ranges(left, actions, program, to_conditional);
    emit_ranges(right, actions, program, to_conditional);
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
        assert_eq!(key(&embedded.program), key(&runtime.program));
    }

    /// A classic-BPF interpreter for the instructions the filter uses, so tests can ask the
    /// program what it answers without installing it.
    fn evaluate(program: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        let word = |offset: u32| {
            let o = offset as usize;
            u32::from_ne_bytes(data[o..o + 4].try_into().unwrap())
        };
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0);
        loop {
            steps += 1;
            assert!(steps < 10_000, "runaway program");
            let i = program[pc];
            pc += 1;
            match i.code {
                0x20 => a = word(i.k),      // ld [k]
                0x54 => a &= i.k,           // and #k
                0x05 => pc += i.k as usize, // ja
                0x06 => return i.k,         // ret #k
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match i.code {
                        0x15 => a == i.k,
                        0x25 => a > i.k,
                        0x35 => a >= i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                code => panic!("unexpected BPF opcode {code:#x} at {}", pc - 1),
            }
        }
    }

    #[test]
    fn one_filter_answers_every_syscall_as_the_policy_says() {
        let mut policy = SeccompPolicy::default_policy().unwrap();
        let allow = libc::SECCOMP_RET_ALLOW;
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        for notify in [true, false] {
            policy.set_notify(notify);
            let report = if policy.notifies() {
                libc::SECCOMP_RET_USER_NOTIF
            } else {
                kill
            };
            let program = policy.program();
            assert!(program.len() < 700, "{} instructions", program.len());
            let conditional = ["clone", "socket", "ioctl", "personality"];
            for nr in 0..1024u32 {
                let answer = evaluate(program, nr, NATIVE_AUDIT_ARCH, [0; 6]);
                let name = syscall_name(i64::from(nr));
                let expected = match name {
                    Some(n) if policy.reported().iter().any(|r| r == n) => report,
                    Some("clone3") => enosys,
                    Some(n) if conditional.contains(&n) => answer,
                    Some(n) if policy.allowed().iter().any(|a| a == n) => allow,
                    _ => eperm,
                };
                assert_eq!(answer, expected, "syscall {nr} ({name:?}), notify {notify}");
                // Another ABI, or the x32 bit, is killed whatever the number.
                assert_eq!(evaluate(program, nr, 0x4000_0003, [0; 6]), kill);
                if cfg!(target_arch = "x86_64") {
                    let x32 = nr | X32_SYSCALL_BIT as u32;
                    assert_eq!(evaluate(program, x32, NATIVE_AUDIT_ARCH, [0; 6]), kill);
                }
            }
            // Far above the table: refused, not allowed.
            assert_eq!(evaluate(program, 100_000, NATIVE_AUDIT_ARCH, [0; 6]), eperm);
            // The argument rules still decide their syscalls.
            let nr = |name| syscall_number(name).unwrap() as u32;
            let sigchld = libc::SIGCHLD as u64;
            let clone_newuser = [libc::CLONE_NEWUSER as u64 | sigchld, 0, 0, 0, 0, 0];
            assert_eq!(
                evaluate(
                    program,
                    nr("clone"),
                    NATIVE_AUDIT_ARCH,
                    [sigchld, 0, 0, 0, 0, 0]
                ),
                allow
            );
            assert_eq!(
                evaluate(program, nr("clone"), NATIVE_AUDIT_ARCH, clone_newuser),
                eperm
            );
            let socket = |domain: i32, kind: i32| {
                evaluate(
                    program,
                    nr("socket"),
                    NATIVE_AUDIT_ARCH,
                    [domain as u64, kind as u64, 0, 0, 0, 0],
                )
            };
            assert_eq!(socket(libc::AF_INET, libc::SOCK_STREAM), allow);
            assert_eq!(socket(libc::AF_UNIX, libc::SOCK_DGRAM), allow);
            assert_eq!(socket(libc::AF_PACKET, libc::SOCK_RAW), eperm);
            assert_eq!(socket(libc::AF_VSOCK, libc::SOCK_STREAM), eperm);
            assert_eq!(socket(libc::AF_INET, libc::SOCK_RAW), eperm);
            let ioctl = |request: u64| {
                evaluate(
                    program,
                    nr("ioctl"),
                    NATIVE_AUDIT_ARCH,
                    [0, request, 0, 0, 0, 0],
                )
            };
            assert_eq!(ioctl(libc::TIOCSTI), eperm);
            assert_eq!(ioctl(libc::FIONREAD), allow);
            let personality = |p: u64| {
                evaluate(
                    program,
                    nr("personality"),
                    NATIVE_AUDIT_ARCH,
                    [p, 0, 0, 0, 0, 0],
                )
            };
            assert_eq!(personality(0), allow);
            assert_eq!(personality(0xffff_ffff), allow);
            assert_eq!(personality(0x0040_0000), eperm); // READ_IMPLIES_EXEC
        }
        assert_eq!(policy.summary().filters, 1);
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
