//! The launcher side of one run: clone, write the id maps, release the child, join the
//! cgroup, then enforce the wall clock and drain the output until the init is gone.

use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::pipe2;

use super::cgroup::{CgroupEntry, RunCgroup};
use super::child::{self, ChildFds, Layers};
use super::netns::{NetnsError, NetnsPool};
use super::prepare::Prepared;
use super::protocol::{Kind, MESSAGE_LEN, Message, Stage};
use super::sys;
use crate::spec::SANDBOX_ID;

/// What the parent observed.
#[derive(Debug)]
pub struct Observed {
    /// Setup failure reported by the child: stage, detail index, errno.
    pub setup_failure: Option<(Stage, u32, Errno)>,
    /// The payload's wait status, as reported by the init.
    pub payload_status: Option<i32>,
    /// The init's own wait status.
    pub init_status: i32,
    /// Resource usage of the init and everything it reaped.
    pub rusage: libc::rusage,
    /// The wall clock expired and the sandbox was killed.
    pub timed_out: bool,
    /// A seccomp violation, by syscall name.
    pub violation: Option<String>,
    /// Captured stdout (up to the cap).
    pub stdout: Vec<u8>,
    /// Captured stderr (up to the cap).
    pub stderr: Vec<u8>,
    /// stdout went over the cap.
    pub stdout_truncated: bool,
    /// stderr went over the cap.
    pub stderr_truncated: bool,
    /// When the payload was exec'd.
    pub exec_at: Option<Instant>,
    /// When the init was seen to exit (its namespaces torn down, the pipes drained).
    pub exit_at: Instant,
    /// When the init reported the payload's exit (before it tore anything down).
    pub payload_exit_at: Option<Instant>,
    /// The workdir's root, when the child sent it (for returned files).
    pub workdir: Option<OwnedFd>,
    /// The caller cancelled the run and the sandbox was killed.
    pub cancelled: bool,
    /// How the sandbox entered its cgroup ([`CgroupEntry::name`]), when the launcher put it
    /// in one (not for a pre-warmed stub's child, which is born there).
    pub cgroup_entry: Option<&'static str>,
}

/// Errors of the launcher itself (not of the payload).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A syscall of the launcher failed.
    #[error("{what} failed")]
    Syscall {
        /// What was attempted.
        what: &'static str,
        /// errno.
        #[source]
        source: Errno,
    },
    /// Writing /proc/<pid>/{uid_map,gid_map,setgroups} failed.
    #[error("cannot write {path}")]
    IdMap {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The launcher could not leave its pooled network namespace after clone.
    #[error("network namespace")]
    Netns(#[from] NetnsError),
    /// Joining the cgroup failed.
    #[error("cannot move the sandbox into its cgroup")]
    Cgroup(#[source] super::cgroup::CgroupError),
    /// The launcher has more than one thread: cloning would be unsafe.
    #[error(
        "the launcher has {threads} threads; a sandbox can only be cloned from a single-threaded process"
    )]
    MultiThreaded {
        /// Thread count.
        threads: usize,
    },
}

/// Parent-side handler of seccomp notifications: returns the syscall name.
pub type ViolationHandler<'a> = dyn Fn(BorrowedFd<'_>) -> Option<String> + 'a;

/// Per-run parameters of the parent loop.
pub struct LaunchParams<'a> {
    /// Prepared plan.
    pub prepared: &'a Prepared,
    /// The run's cgroup, if any.
    pub cgroup: Option<&'a dyn RunCgroup>,
    /// This process is already in `cgroup` (a pre-warmed stub): the child is born in it.
    pub cgroup_entered: bool,
    /// Kernel layers for the child.
    pub layers: &'a Layers<'a>,
    /// An fd the child must keep open (the Landlock ruleset).
    pub keep_fd: Option<std::os::fd::RawFd>,
    /// Host uid and gid the sandbox id maps to.
    pub host_id: (u32, u32),
    /// Wall-clock limit from exec.
    pub timeout: Duration,
    /// Cap per stream.
    pub output_limit: u64,
    /// Copy output to our own stdout/stderr as it arrives.
    pub passthrough: bool,
    /// Parent-side handler of seccomp notifications: returns the syscall name.
    pub on_violation: Option<&'a ViolationHandler<'a>>,
    /// Readable or hung up = cancel the run.
    pub cancel: Option<BorrowedFd<'a>>,
    /// A pre-made network namespace to clone the sandbox into (and the pool that returns the
    /// launcher to its own namespace right after).
    pub join_netns: Option<(&'a NetnsPool, BorrowedFd<'a>)>,
}

fn syscall<T>(what: &'static str, r: Result<T, Errno>) -> Result<T, LaunchError> {
    r.map_err(|source| LaunchError::Syscall { what, source })
}

/// Kills the child on every early return until disarmed.
struct KillOnDrop<'a> {
    pidfd: BorrowedFd<'a>,
    pid: libc::pid_t,
    armed: bool,
}

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = sys::pidfd_send_signal(self.pidfd.as_raw_fd(), libc::SIGKILL);
            let _ = sys::wait4(self.pid);
        }
    }
}

/// Launch and supervise one sandbox.
pub fn launch(params: &LaunchParams<'_>) -> Result<Observed, LaunchError> {
    let threads = thread_count();
    if threads != 1 {
        return Err(LaunchError::MultiThreaded { threads });
    }
    let p = params.prepared;
    let (parent_sock, child_sock) = syscall(
        "socketpair",
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        ),
    )?;
    let (out_r, out_w) = syscall("pipe2", pipe2(nix::fcntl::OFlag::O_CLOEXEC))?;
    let (err_r, err_w) = syscall("pipe2", pipe2(nix::fcntl::OFlag::O_CLOEXEC))?;

    let mut ns = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if p.network_namespace {
        ns |= libc::CLONE_NEWNET;
    }
    let entry = params
        .cgroup
        .filter(|_| !params.cgroup_entered)
        .map(super::cgroup::entry);
    let cgroup_fd = match entry {
        Some(CgroupEntry::CloneInto(fd)) => Some(fd.as_raw_fd()),
        _ => None,
    };
    // v1: the child moves itself in through these (no global lock; see `open_self_move`).
    let self_move = match (params.cgroup, entry) {
        (Some(cgroup), Some(CgroupEntry::Migrate)) => cgroup.open_self_move(),
        _ => None,
    };
    let tasks: Vec<RawFd> = self_move.iter().flatten().map(AsRawFd::as_raw_fd).collect();
    let entry = match entry {
        Some(CgroupEntry::Migrate) if self_move.is_some() => Some(CgroupEntry::MoveSelf),
        other => other,
    };
    // A pooled network namespace is joined by the launcher itself just for the clone (the
    // sandbox's user namespace could not join one owned by the host's), then left again.
    if let Some((pool, namespace)) = params.join_netns {
        syscall(
            "setns into the pooled network namespace",
            pool.enter(namespace),
        )?;
    }
    let cloned = sys::clone_sandbox(ns as u64, cgroup_fd);
    let restored = match (params.join_netns, &cloned) {
        (Some((pool, _)), Ok(sys::Cloned::Parent { .. }) | Err(_)) => pool.restore(),
        _ => Ok(()),
    };
    let cloned = syscall("clone3", cloned)?;
    let (pid, pidfd) = match cloned {
        sys::Cloned::Child => {
            let fds = ChildFds {
                report: child_sock.as_raw_fd(),
                stdout: out_w.as_raw_fd(),
                stderr: err_w.as_raw_fd(),
                keep: params.keep_fd,
                cgroup_tasks: &tasks,
            };
            child::run(p, fds, params.layers)
        }
        sys::Cloned::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop((child_sock, out_w, err_w, self_move));
    let mut guard = KillOnDrop {
        pidfd: pidfd.as_fd(),
        pid,
        armed: true,
    };
    // After the guard: on error the child is killed and reaped.
    restored?;

    write_id_maps(pid, params.host_id, p.clear_groups)?;
    // Release 1: the maps exist, the child may build its root.
    let _ = sys::write_all(parent_sock.as_raw_fd(), &[1]);
    // Join the cgroup while the child builds its root (v1 attach waits for an RCU grace
    // period; overlapping hides it). v2 children were born in it via CLONE_INTO_CGROUP.
    if let (Some(cgroup), Some(CgroupEntry::Migrate)) = (params.cgroup, entry) {
        cgroup.attach(pid).map_err(LaunchError::Cgroup)?;
    }
    // Release 2: in the cgroup; the child may go on to its limits and exec.
    let _ = sys::write_all(parent_sock.as_raw_fd(), &[2]);

    let mut observed = supervise(params, pid, &pidfd, parent_sock, out_r, err_r)?;
    observed.cgroup_entry = entry.map(|e| e.name());
    guard.armed = false;
    Ok(observed)
}

fn write_id_maps(
    pid: libc::pid_t,
    host: (u32, u32),
    allow_setgroups: bool,
) -> Result<(), LaunchError> {
    let write = |file: &str, content: &str| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(content.as_bytes()))
            .map_err(|source| LaunchError::IdMap { path, source })
    };
    if !allow_setgroups {
        // Required before an unprivileged process may write gid_map.
        write("setgroups", "deny")?;
    }
    write("uid_map", &format!("{SANDBOX_ID} {} 1\n", host.0))?;
    write("gid_map", &format!("{SANDBOX_ID} {} 1\n", host.1))?;
    Ok(())
}

/// One output stream being drained.
struct Stream {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    truncated: bool,
    echo: Option<libc::c_int>,
}

impl Stream {
    /// Read what is available; returns false at EOF.
    fn drain(&mut self, limit: u64) -> bool {
        let Some(fd) = &self.fd else { return false };
        let mut chunk = [0u8; 65536];
        match sys::read(fd.as_raw_fd(), &mut chunk) {
            Ok(0) | Err(_) => {
                self.fd = None;
                false
            }
            Ok(n) => {
                let room = (limit as usize).saturating_sub(self.buf.len());
                let keep = n.min(room);
                self.buf.extend_from_slice(&chunk[..keep]);
                if keep < n {
                    self.truncated = true;
                }
                if let Some(out) = self.echo
                    && keep > 0
                {
                    let _ = sys::write_all(out, &chunk[..keep]);
                }
                true
            }
        }
    }
}

fn supervise(
    params: &LaunchParams<'_>,
    pid: libc::pid_t,
    pidfd: &OwnedFd,
    sock: OwnedFd,
    out_r: OwnedFd,
    err_r: OwnedFd,
) -> Result<Observed, LaunchError> {
    let started = Instant::now();
    // Setup gets its own generous bound, so a hung mount cannot block forever.
    let mut deadline = started + params.timeout + Duration::from_secs(10);
    let mut sock = Some(sock);
    let mut listener: Option<OwnedFd> = None;
    let mut workdir: Option<OwnedFd> = None;
    let mut stdout = Stream {
        fd: Some(out_r),
        buf: Vec::new(),
        truncated: false,
        echo: params.passthrough.then_some(1),
    };
    let mut stderr = Stream {
        fd: Some(err_r),
        buf: Vec::new(),
        truncated: false,
        echo: params.passthrough.then_some(2),
    };
    let mut setup_failure = None;
    let mut payload_status = None;
    let mut payload_exit_at = None;
    let mut exec_at = None;
    let mut timed_out = false;
    let mut violation = None;
    let mut exited = false;
    let mut cancel = params.cancel;
    let mut cancelled = false;
    let kill = || {
        let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
        if let Some(cgroup) = params.cgroup {
            let _ = cgroup.kill_all();
        }
    };

    while !exited || stdout.fd.is_some() || stderr.fd.is_some() {
        let now = Instant::now();
        if !exited && now >= deadline && !timed_out {
            timed_out = exec_at.is_some() || setup_failure.is_none();
            kill();
        }
        let wait_ms = if exited {
            // The init is gone and so is every process of the namespace: the pipes are at
            // EOF or about to be.
            1000
        } else {
            deadline
                .saturating_duration_since(now)
                .as_millis()
                .min(60_000) as i32
                + 1
        };
        let mut fds = Vec::with_capacity(5);
        let mut kinds = Vec::with_capacity(5);
        if !exited {
            fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
            kinds.push(0);
        }
        if let Some(fd) = &stdout.fd {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            kinds.push(1);
        }
        if let Some(fd) = &stderr.fd {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            kinds.push(2);
        }
        if let Some(fd) = &sock {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            kinds.push(3);
        }
        if let Some(fd) = &listener {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            kinds.push(4);
        }
        if let (Some(fd), false) = (cancel, exited) {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
            kinds.push(5);
        }
        let timeout = PollTimeout::try_from(wait_ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(LaunchError::Syscall {
                    what: "poll",
                    source: e,
                });
            }
        }
        let ready: Vec<usize> = fds
            .iter()
            .zip(&kinds)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, k)| *k)
            .collect();
        drop(fds);
        if exited && ready.is_empty() {
            // Nothing can still hold the pipes; never wait forever on a leaked write end.
            break;
        }
        for kind in ready {
            match kind {
                0 => exited = true,
                5 => {
                    // Polled once: a hung-up fd stays ready, and once is enough.
                    cancel = None;
                    cancelled = true;
                    kill();
                }
                1 => {
                    stdout.drain(params.output_limit);
                }
                2 => {
                    stderr.drain(params.output_limit);
                }
                3 => {
                    let fd = sock.as_ref().expect("polled").as_raw_fd();
                    let mut buf = [0u8; MESSAGE_LEN];
                    match sys::recv_packet(fd, &mut buf) {
                        Ok((0, _)) | Err(_) => sock = None,
                        Ok((n, passed)) => match Message::decode(&buf[..n]) {
                            Some(m) if m.kind == Kind::Error => {
                                let stage = Stage::from_u32(m.stage).unwrap_or(Stage::Exec);
                                setup_failure = Some((stage, m.detail, Errno::from_raw(m.value)));
                            }
                            Some(m) if m.kind == Kind::ExecOk => {
                                let now = Instant::now();
                                exec_at = Some(now);
                                deadline = now + params.timeout;
                            }
                            Some(m) if m.kind == Kind::Exit => {
                                payload_status = Some(m.value);
                                payload_exit_at = Some(Instant::now());
                            }
                            Some(m) if m.kind == Kind::Listener => listener = passed,
                            Some(m) if m.kind == Kind::Workdir => workdir = passed,
                            _ => {}
                        },
                    }
                }
                4 => {
                    if let (Some(fd), Some(handler)) = (&listener, params.on_violation) {
                        match handler(fd.as_fd()) {
                            Some(name) => {
                                violation.get_or_insert(name);
                                kill();
                            }
                            // No pending notification: the filter's users are gone (POLLHUP).
                            None => listener = None,
                        }
                    }
                }
                _ => unreachable!("unknown poll slot"),
            }
        }
    }
    let exit_at = Instant::now();
    let reaped = syscall("wait4", sys::wait4(pid))?;
    // The init sends Exit just before exiting; read it if it is still queued.
    if let Some(fd) = &sock {
        let mut buf = [0u8; MESSAGE_LEN];
        while let Ok((n, _)) = recv_nonblocking(fd, &mut buf) {
            if n == 0 {
                break;
            }
            match Message::decode(&buf[..n]) {
                Some(m) if m.kind == Kind::Exit => {
                    payload_status = Some(m.value);
                    payload_exit_at = payload_exit_at.or(Some(exit_at));
                }
                Some(m) if m.kind == Kind::Error => {
                    let stage = Stage::from_u32(m.stage).unwrap_or(Stage::Exec);
                    setup_failure = Some((stage, m.detail, Errno::from_raw(m.value)));
                }
                Some(m) if m.kind == Kind::ExecOk => exec_at = exec_at.or(Some(exit_at)),
                _ => {}
            }
        }
    }
    Ok(Observed {
        setup_failure,
        payload_status,
        init_status: reaped.status,
        rusage: reaped.rusage,
        timed_out,
        violation,
        stdout: stdout.buf,
        stderr: stderr.buf,
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        exec_at,
        exit_at,
        payload_exit_at,
        workdir,
        cancelled,
        cgroup_entry: None,
    })
}

fn recv_nonblocking(fd: &OwnedFd, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>), Errno> {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => sys::recv_packet(fd.as_raw_fd(), buf),
        _ => Ok((0, None)),
    }
}

/// Number of threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}
