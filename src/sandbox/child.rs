//! The sandbox child: a fixed checklist, one step per line, then a tiny init as pid 1.
//!
//! Runs right after `clone` in a copy of the single-threaded launcher. It only makes
//! syscalls on data prepared before clone (`Prepared`), allocates nothing, never returns and
//! never unwinds: every failure is reported as `{stage, detail, errno}` over the CLOEXEC
//! report socket, then `_exit(125)`.

use std::os::fd::RawFd;

use nix::errno::Errno;

use super::prepare::{Op, Prepared};
use super::protocol::{Kind, Message, Stage};
use super::sys;
use crate::spec::SANDBOX_ID;

/// Exit code of a child whose setup failed (never confused with the payload's code, which
/// the init reports over the socket instead).
pub const SETUP_FAILED: i32 = 125;

/// The fds the child works with (raw: the child must not run `OwnedFd` destructors).
#[derive(Debug, Clone, Copy)]
pub struct ChildFds<'a> {
    /// The child's end of the report socket.
    pub report: RawFd,
    /// Write end of the stdout pipe.
    pub stdout: RawFd,
    /// Write end of the stderr pipe.
    pub stderr: RawFd,
    /// One more fd to keep open across the fd cleanup (the Landlock ruleset).
    pub keep: Option<RawFd>,
    /// Write-only v1 `tasks` files of the run's cgroup: the child moves itself in.
    pub cgroup_tasks: &'a [RawFd],
}

/// The kernel layers applied at the end of the checklist, prepared by the parent.
pub struct Layers<'a> {
    /// Landlock restrict_self; error = (detail, errno).
    pub landlock: Option<&'a dyn Fn() -> Result<(), (u32, Errno)>>,
    /// seccomp install; may return a user-notification listener fd for the parent.
    pub seccomp: Option<&'a dyn Fn() -> Result<Option<RawFd>, Errno>>,
}

fn fail(report: RawFd, stage: Stage, detail: u32, errno: Errno) -> ! {
    let _ = sys::send_packet(
        report,
        &Message::error(stage, detail, errno as i32).encode(),
        None,
    );
    sys::exit(SETUP_FAILED)
}

/// Wait for one release byte from the parent; EOF means the parent is gone.
fn wait_for_parent(report: RawFd, stage: Stage) {
    let mut byte = [0u8; 1];
    match sys::read(report, &mut byte) {
        Ok(1) => {}
        Ok(_) => sys::exit(SETUP_FAILED),
        Err(e) => fail(report, stage, 0, e),
    }
}

/// The checklist. Order is fixed here, never taken from configuration.
pub fn run(p: &Prepared, fds: ChildFds<'_>, layers: &Layers<'_>) -> ! {
    let r = fds.report;
    let step = |stage: Stage, result: sys::SysResult<()>| {
        if let Err(e) = result {
            fail(r, stage, 0, e);
        }
    };

    // 1. Die with the launcher. In a new pid namespace getppid() is 0, so the parent check
    //    is the release read: EOF there means the parent died before releasing us.
    step(
        Stage::ParentDeathSignal,
        sys::set_parent_death_signal(libc::SIGKILL),
    );
    // Join the run's cgroup (v1) while the parent writes the id maps: `0` moves the calling
    // thread, which is this whole process (cloned from a single-threaded launcher), and is
    // the one migration the kernel does without its global lock and RCU grace period. The
    // fds were opened by the launcher, whose credentials the kernel checks.
    for (index, &tasks) in fds.cgroup_tasks.iter().enumerate() {
        if let Err(e) = sys::write_all(tasks, b"0") {
            fail(r, Stage::CgroupJoin, index as u32, e);
        }
        sys::close(tasks);
    }
    // Wait until the parent has written uid_map/gid_map (nothing is mapped before).
    wait_for_parent(r, Stage::WaitRelease);

    // 2. A new session: no controlling terminal, so TIOCSTI has nothing to inject into.
    step(Stage::Setsid, sys::setsid());
    step(Stage::Stdio, sys::dup2(p.stdin_raw(), 0));
    step(Stage::Stdio, sys::dup2(fds.stdout, 1));
    step(Stage::Stdio, sys::dup2(fds.stderr, 2));
    // The sandbox's processes are the first the OOM killer takes, in its cgroup (never a
    // pre-warmed stub supervising it, whose memory may be the larger when the payload's is in
    // tmpfs files) and on the host. Raising one's own score needs no privilege, but must come
    // before the id change below, which makes our /proc files root's (not dumpable).
    step(
        Stage::OomScore,
        sys::write_file(c"/proc/self/oom_score_adj", b"1000"),
    );

    // 3. Become the sandbox user now: the kernel refuses to create inodes (EOVERFLOW) for
    //    an owner that is not mapped in the namespace, and only uid/gid 1000 are mapped.
    //    Supplementary groups go first (possible only when a root launcher left setgroups
    //    allowed), gid before uid.
    if p.clear_groups {
        step(Stage::Setgroups, sys::clear_groups());
    }
    step(Stage::Setgid, sys::setresgid(SANDBOX_ID));
    step(Stage::Setuid, sys::setresuid(SANDBOX_ID));
    // The kernel clears the parent-death signal when the euid/egid change (commit_creds,
    // see PR_SET_PDEATHSIG in prctl(2)): set it again. A launcher that died in between is
    // caught by the next release read (EOF).
    step(
        Stage::ParentDeathSignal,
        sys::set_parent_death_signal(libc::SIGKILL),
    );

    // 4. Private propagation first, so nothing we mount leaks back to the host.
    step(
        Stage::MountPrivate,
        sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None),
    );
    for (index, op) in p.ops.iter().enumerate() {
        if let Err(e) = run_op(op) {
            fail(r, Stage::Rootfs, index as u32, e);
        }
    }
    if p.network_namespace {
        // Needs CAP_NET_ADMIN in our user namespace, so before the capabilities go.
        step(Stage::Loopback, sys::loopback_up());
    }
    if let Some(workdir) = &p.collect_workdir {
        // Hand the launcher the workdir tmpfs before anything untrusted runs: after the run it
        // reads the returned files through this fd (which also keeps the tmpfs alive).
        let fd = match sys::open(
            workdir,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) => fail(r, Stage::Workdir, 0, e),
        };
        let msg = Message::simple(Kind::Workdir, 0).encode();
        step(Stage::Workdir, sys::send_packet(r, &msg, Some(fd)));
        sys::close(fd);
    }
    step(Stage::Hostname, sys::sethostname(b"sandbox"));

    // 5. Switch to the new root. pivot_root(".", ".") stacks the old root on top of the new
    //    one; detaching "." then removes it without needing a put_old directory.
    step(Stage::PivotRoot, sys::chdir(&p.root));
    step(Stage::PivotRoot, sys::pivot_root(c".", c"."));
    step(Stage::DetachOldRoot, sys::umount2(c".", libc::MNT_DETACH));
    step(Stage::Chdir, sys::chdir(c"/"));
    // The skeleton is complete: the root tmpfs becomes read-only (only /tmp, the workdir
    // and /dev/shm stay writable).
    step(
        Stage::RemountRoot,
        sys::mount_setattr(c"/", false, sys::MOUNT_ATTR_RDONLY),
    );
    step(Stage::Chdir, sys::chdir(&p.workdir));

    // 6. Wait until we are in the run's cgroup (the parent's attach, when it had to move us
    //    by pid), then make that cgroup our cgroup namespace root (/proc/self/cgroup: "/").
    wait_for_parent(r, Stage::WaitCgroup);
    step(Stage::CgroupNamespace, sys::unshare(libc::CLONE_NEWCGROUP));

    // 7. rlimits (core 0, nofile, fsize, and the fallbacks).
    for (index, &(resource, soft, hard)) in p.rlimits.iter().enumerate() {
        if let Err(e) = sys::setrlimit(resource, soft, hard) {
            fail(r, Stage::Rlimit, index as u32, e);
        }
    }

    // 8. Close every inherited fd except stdio, the report socket and the Landlock ruleset.
    let (low, high) = match fds.keep {
        Some(k) if k != r => (r.min(k), r.max(k)),
        _ => (r, r),
    };
    step(Stage::CloseFds, sys::close_range(3, (low - 1) as u32));
    if high != low {
        step(
            Stage::CloseFds,
            sys::close_range((low + 1) as u32, (high - 1) as u32),
        );
    }
    step(
        Stage::CloseFds,
        sys::close_range((high + 1) as u32, u32::MAX),
    );

    // 9. Capabilities: our original uid was not root of this user namespace (it is not
    //    mapped), so the setresuid of step 3 kept the capabilities that creating the
    //    namespace gave us. Drop them all explicitly: bounding, ambient, then the rest.
    step(Stage::DropCapabilities, sys::drop_all_capabilities());

    // 10. no_new_privs: required before Landlock and seccomp, and stops setuid binaries.
    step(Stage::NoNewPrivs, sys::set_no_new_privs());

    // 11. Landlock: rules resolve against the new root.
    if let Some(landlock) = layers.landlock
        && let Err((detail, e)) = landlock()
    {
        fail(r, Stage::Landlock, detail, e);
    }

    // 12. seccomp last: everything after this point (init, exec) must be allowed by it.
    if let Some(seccomp) = layers.seccomp {
        match seccomp() {
            Ok(Some(listener)) => {
                let msg = Message::simple(Kind::Listener, 0).encode();
                step(Stage::Seccomp, sys::send_packet(r, &msg, Some(listener)));
                sys::close(listener);
            }
            Ok(None) => {}
            Err(e) => fail(r, Stage::Seccomp, 0, e),
        }
    }

    init(p, r)
}

fn run_op(op: &Op) -> sys::SysResult<()> {
    match op {
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => sys::mount(
            source.as_deref(),
            target,
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        Op::BindReadOnly { source, target } => {
            sys::mount(
                Some(source),
                target,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )?;
            // mount_setattr only adds flags, so flags locked by the host mount are kept.
            sys::mount_setattr(
                target,
                true,
                sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            )
        }
        Op::BindReadWrite { source, target } => {
            sys::mount(
                Some(source),
                target,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )?;
            sys::mount_setattr(target, true, sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV)
        }
        Op::BindDevice { source, target } => {
            sys::mount(Some(source), target, None, libc::MS_BIND, None)
        }
        Op::BindScratch { source, target } => {
            sys::mount(Some(source), target, None, libc::MS_BIND, None)
        }
        Op::Chmod { path, mode } => sys::chmod(path, *mode),
        Op::SetAttr { target, set } => sys::mount_setattr(target, false, *set),
        Op::Mkdir { path, mode } => sys::mkdir(path, *mode),
        Op::MkdirOwned { path } => {
            sys::mkdir(path, 0o755)?;
            let fd = sys::open(
                path,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            let result = sys::fchown(fd, SANDBOX_ID, SANDBOX_ID);
            sys::close(fd);
            result
        }
        Op::Touch { path } => {
            let fd = sys::open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o444)?;
            sys::close(fd);
            Ok(())
        }
        Op::Symlink { target, link } => sys::symlink(target, link),
        Op::WriteFile { path, data } => {
            let fd = sys::open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644)?;
            let result = sys::write_all(fd, data);
            sys::close(fd);
            result
        }
        Op::CopyFile { fd, len, path } => {
            use std::os::fd::AsRawFd as _;
            let out = sys::open(
                path,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o644,
            )?;
            let result = sys::copy_fd(fd.as_raw_fd(), out, *len)
                .and_then(|()| sys::fchown(out, SANDBOX_ID, SANDBOX_ID));
            sys::close(out);
            result
        }
    }
}

/// Signals the init passes on to the payload.
const FORWARDED: [libc::c_int; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCONT,
];

/// pid 1 of the sandbox: fork the payload, report its exec, forward signals, reap every
/// zombie, and report the payload's wait status before exiting. When pid 1 exits the
/// kernel kills everything left in the pid namespace.
fn init(p: &Prepared, r: RawFd) -> ! {
    // The init is a fork of the launcher: erase the launcher's argv (host paths, --env
    // values) and environment so /proc/1/cmdline shows only our name, and make the init
    // non-dumpable so the payload cannot read the rest of /proc/1 or attach to it.
    sys::overwrite_area(p.launcher_areas[0], b"kakoi-init");
    sys::overwrite_area(p.launcher_areas[1], b"");
    if let Err(e) = sys::set_not_dumpable() {
        fail(r, Stage::InitSignals, 1, e);
    }
    let mut all = [0; 8];
    all[..7].copy_from_slice(&FORWARDED);
    all[7] = libc::SIGCHLD;
    let waited = sys::SigSet::of(&all);
    if let Err(e) = waited.apply(libc::SIG_BLOCK) {
        fail(r, Stage::InitSignals, 0, e);
    }
    // The payload: posix_spawn (vfork-style, so nothing of this process is copied) with an
    // empty signal mask and default dispositions. Our report socket is CLOEXEC. It returns
    // once the program was exec'd, or with the exec's errno.
    let payload = match sys::spawn(&p.program, &p.argv_ptrs, &p.envp_ptrs, &p.reset_signals) {
        Ok(pid) => pid,
        Err(errno) => {
            let _ = sys::send_packet(
                r,
                &Message::error(Stage::Exec, 0, errno as i32).encode(),
                None,
            );
            sys::exit(SETUP_FAILED);
        }
    };
    let _ = sys::send_packet(r, &Message::simple(Kind::ExecOk, 0).encode(), None);
    loop {
        let sig = match waited.wait() {
            Ok(sig) => sig,
            Err(_) => sys::exit(SETUP_FAILED),
        };
        if sig != libc::SIGCHLD {
            let _ = sys::kill(payload, sig);
            continue;
        }
        while let Some((pid, status)) = sys::reap_any() {
            if pid == payload {
                let _ = sys::send_packet(r, &Message::simple(Kind::Exit, status).encode(), None);
                sys::exit(0);
            }
        }
    }
}
