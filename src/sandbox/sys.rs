//! One small wrapper per raw syscall the launcher and the sandbox child make.
//!
//! This is where `unsafe` lives. Every wrapper takes prepared data (`&CStr`, integers, fds)
//! and allocates nothing, so the child may call any of them after `clone` (see
//! `child.rs`). Errors come back as [`Errno`].
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// Result of a raw syscall wrapper.
pub type SysResult<T> = Result<T, Errno>;

fn check(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

fn check_int(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

/// `struct clone_args` of clone3(2), version 2 (with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which side of a clone we are on.
pub enum Cloned {
    /// In the new process.
    Child,
    /// In the caller: the child's pid (in our pid namespace) and a pidfd for it.
    Parent {
        /// pid of the child.
        pid: libc::pid_t,
        /// pidfd referring to the child.
        pidfd: OwnedFd,
    },
}

/// Fork-like clone into new namespaces, optionally straight into a cgroup v2 directory.
///
/// Uses clone3 (with `CLONE_PIDFD` and `CLONE_INTO_CGROUP`), and falls back to clone(2) plus
/// `pidfd_open` where clone3 is missing. Like fork(2): the child continues on a copy of the
/// caller's stack, so the caller must be single-threaded and the child must only make
/// syscalls on prepared data before it execs or exits.
pub fn clone_sandbox(ns_flags: u64, cgroup_fd: Option<RawFd>) -> SysResult<Cloned> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: ns_flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup_fd {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size we pass; no stack is given, so the
    // kernel duplicates the caller like fork(2). The child only returns `Cloned::Child` and
    // the caller guarantees single-threadedness (checked in `launch`).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let ret = match check(ret) {
        Ok(r) => r,
        Err(Errno::ENOSYS) if cgroup_fd.is_none() => return clone_fallback(ns_flags),
        Err(e) => return Err(e),
    };
    if ret == 0 {
        return Ok(Cloned::Child);
    }
    // SAFETY: CLONE_PIDFD made the kernel store a fresh pidfd that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Cloned::Parent {
        pid: ret as libc::pid_t,
        pidfd,
    })
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn clone_fallback(ns_flags: u64) -> SysResult<Cloned> {
    // SAFETY: clone(2) without a new stack behaves like fork(2); see `clone_sandbox`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (ns_flags | libc::SIGCHLD as u64) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    let pid = check(ret)? as libc::pid_t;
    if pid == 0 {
        return Ok(Cloned::Child);
    }
    let pidfd = pidfd_open(pid)?;
    Ok(Cloned::Parent { pid, pidfd })
}

/// The `RESOLVE_*` flags collection uses: stay beneath the directory fd, follow no symlink
/// (nor a /proc magic link), never cross into another mount.
pub const RESOLVE_STRICT: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

/// openat2(2) relative to `dirfd` with `RESOLVE_*` flags; `O_CLOEXEC` is added.
pub fn openat2(dirfd: RawFd, path: &CStr, flags: libc::c_int, resolve: u64) -> SysResult<OwnedFd> {
    // SAFETY: open_how is plain old data; zeroed is valid (the kernel requires unused fields 0).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: `how` is a valid open_how of the size passed and `path` is NUL-terminated; both
    // outlive the call.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// fcntl(F_DUPFD_CLOEXEC): a new fd, owned by the caller, for the same open file as `fd`.
pub fn dup_cloexec(fd: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: plain fcntl on an integer; an invalid fd is EBADF.
    let new = check_int(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// ioctl(NS_GET_NSTYPE) on a namespace fd: its `CLONE_NEW*` type (ioctl_ns(2)).
pub fn namespace_type(fd: RawFd) -> SysResult<libc::c_int> {
    // _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type.
    check_int(unsafe { libc::ioctl(fd, NS_GET_NSTYPE) })
}

/// pidfd_open(2).
pub fn pidfd_open(pid: libc::pid_t) -> SysResult<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_send_signal(2).
pub fn pidfd_send_signal(pidfd: RawFd, sig: libc::c_int) -> SysResult<()> {
    // SAFETY: plain syscall; a null siginfo means "as if by kill(2)".
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// Exit status and resource usage of a reaped child.
pub struct Reaped {
    /// Raw wait status.
    pub status: libc::c_int,
    /// Resource usage of the child and of every descendant it waited for.
    pub rusage: libc::rusage,
}

/// wait4(2) for one pid, retrying on EINTR.
pub fn wait4(pid: libc::pid_t) -> SysResult<Reaped> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pointers are to live locals.
        let ret = unsafe { libc::wait4(pid, &mut status, libc::__WALL, &mut rusage) };
        match check_int(ret) {
            Ok(_) => return Ok(Reaped { status, rusage }),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// mount(2).
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> SysResult<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    check_int(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })?;
    Ok(())
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// MOUNT_ATTR_RDONLY.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// MOUNT_ATTR_NOSUID.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// MOUNT_ATTR_NODEV.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
/// MOUNT_ATTR_NOEXEC.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// mount_setattr(2) on `path`, recursively or not. Only sets flags, so locked flags of a
/// mount inherited from a more privileged namespace are left as they are.
pub fn mount_setattr(path: &CStr, recursive: bool, set: u64) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 } | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: `attr` is a valid mount_attr of the size passed; `path` is NUL-terminated.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// pivot_root(2).
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> SysResult<()> {
    // SAFETY: both pointers are NUL-terminated strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })?;
    Ok(())
}

/// umount2(2).
pub fn umount2(target: &CStr, flags: libc::c_int) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    check_int(unsafe { libc::umount2(target.as_ptr(), flags) })?;
    Ok(())
}

/// mkdir(2).
pub fn mkdir(path: &CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    check_int(unsafe { libc::mkdir(path.as_ptr(), mode) })?;
    Ok(())
}

/// chmod(2).
pub fn chmod(path: &CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    check_int(unsafe { libc::chmod(path.as_ptr(), mode) })?;
    Ok(())
}

/// symlink(2).
pub fn symlink(target: &CStr, link: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated paths.
    check_int(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })?;
    Ok(())
}

/// open(2) with O_CLOEXEC added.
pub fn open(path: &CStr, flags: libc::c_int, mode: libc::mode_t) -> SysResult<RawFd> {
    // SAFETY: NUL-terminated path.
    check_int(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode) })
}

/// close(2), ignoring errors (the fd is gone either way).
pub fn close(fd: RawFd) {
    // SAFETY: closing an fd we own; double close is avoided by callers.
    unsafe { libc::close(fd) };
}

/// write(2) of the whole buffer, retrying on EINTR and short writes.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        match check(n as libc::c_long) {
            Ok(n) => buf = &buf[n as usize..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// read(2), retrying on EINTR.
pub fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    loop {
        // SAFETY: `buf` is a valid mutable slice.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match check(n as libc::c_long) {
            Ok(n) => return Ok(n as usize),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Write `data` to an existing file (a /proc control file).
pub fn write_file(path: &CStr, data: &[u8]) -> SysResult<()> {
    let fd = open(path, libc::O_WRONLY, 0)?;
    let result = write_all(fd, data);
    close(fd);
    result
}

/// Copy `len` bytes from `src` (read from offset 0) to `dst` with sendfile(2).
pub fn copy_fd(src: RawFd, dst: RawFd, len: u64) -> SysResult<()> {
    let mut offset: libc::off_t = 0;
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        // SAFETY: `offset` is a live local; fds are open.
        let n = unsafe { libc::sendfile(dst, src, &mut offset, chunk) };
        match check(n as libc::c_long) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => left -= n as u64,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fchown(2).
pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::fchown(fd, uid, gid) })?;
    Ok(())
}

/// chdir(2).
pub fn chdir(path: &CStr) -> SysResult<()> {
    // SAFETY: NUL-terminated path.
    check_int(unsafe { libc::chdir(path.as_ptr()) })?;
    Ok(())
}

/// sethostname(2).
pub fn sethostname(name: &[u8]) -> SysResult<()> {
    // SAFETY: pointer and length describe a valid slice.
    check_int(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// setrlimit(2).
pub fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> SysResult<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit.
    check_int(unsafe { libc::setrlimit(resource, &lim) })?;
    Ok(())
}

/// close_range(2) of `[first, last]`.
pub fn close_range(first: u32, last: u32) -> SysResult<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: plain syscall; closes fds this process owns.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) })?;
    Ok(())
}

/// setgroups(2) with an empty list.
pub fn clear_groups() -> SysResult<()> {
    // SAFETY: a zero-length list with a null pointer is valid.
    check_int(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    Ok(())
}

/// setresgid(2) with one id for all three.
pub fn setresgid(gid: u32) -> SysResult<()> {
    // SAFETY: plain syscall (raw, so glibc does not broadcast to other threads).
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    Ok(())
}

/// setresuid(2) with one id for all three.
pub fn setresuid(uid: u32) -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })?;
    Ok(())
}

/// Drop every capability: the bounding set, the ambient set, then the effective, permitted
/// and inheritable sets (capset with empty sets).
pub fn drop_all_capabilities() -> SysResult<()> {
    for cap in 0..=63 {
        // SAFETY: plain prctl; EINVAL marks the end of the caps this kernel knows.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r < 0 {
            match Errno::last() {
                Errno::EINVAL => break,
                e => return Err(e),
            }
        }
    }
    // SAFETY: plain prctl.
    check_int(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data structs as capset(2) v3 requires.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })?;
    Ok(())
}

/// prctl(PR_SET_NO_NEW_PRIVS, 1).
pub fn set_no_new_privs() -> SysResult<()> {
    // SAFETY: plain prctl.
    check_int(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

/// prctl(PR_SET_PDEATHSIG, sig).
pub fn set_parent_death_signal(sig: libc::c_int) -> SysResult<()> {
    // SAFETY: plain prctl.
    check_int(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) })?;
    Ok(())
}

/// setsid(2).
pub fn setsid() -> SysResult<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::setsid() })?;
    Ok(())
}

/// dup2(2) (which clears O_CLOEXEC on the new fd).
pub fn dup2(old: RawFd, new: RawFd) -> SysResult<()> {
    if old == new {
        // dup2 would keep O_CLOEXEC; clear it explicitly.
        // SAFETY: plain fcntl.
        check_int(unsafe { libc::fcntl(old, libc::F_SETFD, 0) })?;
        return Ok(());
    }
    // SAFETY: plain syscall.
    check_int(unsafe { libc::dup2(old, new) })?;
    Ok(())
}

/// unshare(2).
pub fn unshare(flags: libc::c_int) -> SysResult<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::unshare(flags) })?;
    Ok(())
}

/// Bring the loopback interface up (SIOCGIFFLAGS / SIOCSIFFLAGS on a datagram socket).
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: plain syscall.
    let sock = check_int(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming "lo".
    let result =
        check_int(unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) }).and_then(|_| {
            // SAFETY: reading and writing the flags member of the union we just filled.
            unsafe {
                req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            }
            // SAFETY: as above.
            check_int(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) })
        });
    close(sock);
    result.map(drop)
}

/// fork(2) through glibc. The caller must be single-threaded (the launcher, checked).
pub fn fork() -> SysResult<libc::pid_t> {
    // SAFETY: called only from the single-threaded launcher (its thread count is checked
    // first); the child runs kakoi's own code and exits with `exit`.
    check_int(unsafe { libc::fork() })
}

/// posix_spawn(3): start `program` with an empty signal mask and the dispositions of
/// `defaults` reset to `SIG_DFL` (an ignored signal would stay ignored across exec). glibc
/// uses `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own: nothing of the caller's memory
/// is copied, and the call returns once the program was exec'd, or with the exec's errno (the
/// failed child is reaped by glibc).
pub fn spawn(
    program: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    defaults: &SigSet,
) -> SysResult<libc::pid_t> {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    let empty = SigSet::of(&[]);
    let mut pid: libc::pid_t = 0;
    // SAFETY: posix_spawnattr_t is plain data that posix_spawnattr_init initialises (glibc
    // allocates nothing for it); every pointer passed lives across the calls; argv and envp are
    // null-terminated arrays of NUL-terminated strings kept alive by the prepared plan.
    let rc = unsafe {
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawnattr_init(&mut attr);
        libc::posix_spawnattr_setsigmask(&mut attr, &empty.0);
        libc::posix_spawnattr_setsigdefault(&mut attr, &defaults.0);
        libc::posix_spawnattr_setflags(
            &mut attr,
            (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
        );
        let rc = libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            std::ptr::null(),
            &attr,
            argv.as_ptr().cast(),
            envp.as_ptr().cast(),
        );
        libc::posix_spawnattr_destroy(&mut attr);
        rc
    };
    if rc != 0 {
        return Err(Errno::from_raw(rc));
    }
    Ok(pid)
}

/// Signals to reset to `SIG_DFL` for a spawned program: those whose disposition is `SIG_IGN`
/// in this process (they would stay ignored across exec), and glibc's internal real-time
/// signals below `SIGRTMIN`, which `posix_spawn` would otherwise leave ignored.
pub fn ignored_signals() -> Vec<libc::c_int> {
    // The kernel's first real-time signal is 32; glibc keeps those below its SIGRTMIN.
    let internal = 32..libc::SIGRTMIN();
    (1..libc::SIGRTMAX())
        .filter(|&sig| {
            if internal.contains(&sig) {
                return true;
            }
            // SAFETY: sigaction with a null new action only reads the current one into `old`.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: as above; `old` lives across the call.
            let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
            rc == 0 && old.sa_sigaction == libc::SIG_IGN
        })
        .collect()
}

/// _exit(2): leave without running destructors or atexit handlers.
pub fn exit(code: libc::c_int) -> ! {
    // SAFETY: always safe.
    unsafe { libc::_exit(code) }
}

/// A signal set as sigprocmask and sigwaitinfo take it.
pub struct SigSet(libc::sigset_t);

// `SigSet::of` writes the kernel's bit layout into the first 64-bit word.
const _: () = assert!(cfg!(target_endian = "little") && cfg!(target_pointer_width = "64"));

impl std::fmt::Debug for SigSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigSet")
    }
}

impl SigSet {
    /// A set holding `signals` (1..=64). Bits are set directly, as the kernel reads them (bit
    /// `sig - 1`), because glibc's sigaddset refuses its internal signals, which a set for
    /// posix_spawn's `SETSIGDEF` must be able to hold.
    pub fn of(signals: &[libc::c_int]) -> SigSet {
        let mut word: u64 = 0;
        for &sig in signals {
            if (1..=64).contains(&sig) {
                word |= 1 << (sig - 1);
            }
        }
        // SAFETY: sigset_t is plain data at least 8 bytes long, aligned for u64 (it is an
        // array of unsigned long); an all-zero set is empty, and its first word holds signals
        // 1..=64 on every Linux ABI kakoi builds for (64-bit, little-endian).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            std::ptr::write((&mut set as *mut libc::sigset_t).cast::<u64>(), word);
            SigSet(set)
        }
    }

    /// Block the set (SIG_BLOCK) or set the mask to it (SIG_SETMASK).
    pub fn apply(&self, how: libc::c_int) -> SysResult<()> {
        // SAFETY: valid set pointer.
        check_int(unsafe { libc::sigprocmask(how, &self.0, std::ptr::null_mut()) })?;
        Ok(())
    }

    /// sigwaitinfo(2) for this set; returns the signal.
    pub fn wait(&self) -> SysResult<libc::c_int> {
        loop {
            // SAFETY: valid set pointer; no siginfo wanted.
            let r = unsafe { libc::sigwaitinfo(&self.0, std::ptr::null_mut()) };
            match check_int(r) {
                Ok(sig) => return Ok(sig),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// waitpid(-1, WNOHANG): one reaped child, if any.
pub fn reap_any() -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: pointer to a live local.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
    (pid > 0).then_some((pid, status))
}

/// kill(2).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> SysResult<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// Send a datagram on a SOCK_SEQPACKET socket, optionally with one fd (SCM_RIGHTS).
pub fn send_packet(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> SysResult<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for one cmsghdr carrying one int, 8-byte aligned.
    let mut cmsg_buf = [0u64; 4];
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer is large enough for one cmsghdr with one int, and
        // CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    loop {
        // SAFETY: msg points to live buffers.
        let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        match check(r as libc::c_long) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Receive one datagram and at most one fd. Returns the byte count (0 = EOF) and the fd.
pub fn recv_packet(sock: RawFd, buf: &mut [u8]) -> SysResult<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg_buf = [0u64; 4];
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf);
    let n = loop {
        // SAFETY: msg points to live buffers.
        let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match check(r as libc::c_long) {
            Ok(n) => break n as usize,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    };
    let mut fd = None;
    // SAFETY: walking the control messages the kernel wrote into our buffer.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, fd))
}

/// prctl(PR_SET_DUMPABLE, 0): /proc/<pid> files become root-owned and ptrace is refused.
pub fn set_not_dumpable() -> SysResult<()> {
    // SAFETY: plain prctl.
    check_int(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })?;
    Ok(())
}

/// Overwrite a memory area of this process with `text` followed by zeros.
///
/// Used by the sandbox's init to erase the launcher's argv and environment, which it
/// inherited by fork and which `/proc/1/cmdline` would otherwise show to the payload.
pub fn overwrite_area(area: (usize, usize), text: &[u8]) {
    let (start, end) = area;
    if start == 0 || end <= start {
        return;
    }
    let len = end - start;
    // SAFETY: `area` is this process's own argv or environment area as the kernel reported
    // it in /proc/self/stat (fields 48-51) before clone; the child is a copy of that address
    // space, the area is mapped writable (it lies in the initial stack), and nothing reads
    // the launcher's argv or environment after this point.
    unsafe {
        std::ptr::write_bytes(start as *mut u8, 0, len);
        std::ptr::copy_nonoverlapping(text.as_ptr(), start as *mut u8, text.len().min(len - 1));
    }
}
