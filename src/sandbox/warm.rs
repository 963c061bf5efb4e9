//! Pre-warmed cgroups for long-lived launchers on cgroup v1 (`SandboxConfig::prewarm`).
//!
//! cgroup v1 has no `CLONE_INTO_CGROUP`: a sandbox must be moved into its run cgroup, and a
//! move takes the global `cgroup_threadgroup_rwsem` for writing, which (without
//! `favordynmods`) first waits for an RCU grace period: milliseconds per run, tens under
//! load. A child is born in its parent's cgroups, so the wait disappears from a run if the
//! process that clones the sandbox is already in the run's cgroup.
//!
//! A launcher that runs many requests (a server's single-threaded launcher process) keeps
//! one **stub** ready: after each run (and when the `Sandbox` is created) it forks a stub, a
//! copy of itself, which creates the next run's cgroup and moves *itself* into it — the
//! cgroup creation and the grace period are paid by the stub, while the launcher returns to
//! its caller (its own share is the fork). A
//! request then goes to the stub (the `RunSpec` as JSON, the cancel fd with `SCM_RIGHTS`);
//! the stub writes the run's limits into its cgroup, runs the request exactly as the
//! launcher would (prepare, clone — the sandbox is born in the cgroup, so every limit holds
//! from its first instruction —, supervise, collect, read the cgroup's accounting) and sends
//! the `RunResult` back, then exits; the launcher reaps it and removes the cgroup.
//!
//! What the stub changes, and why it is acceptable:
//! - the stub is one more task in the run's pids cgroup, so `pids.max` is the run's limit
//!   plus one;
//! - the stub's own memory (its copy-on-write pages, the captured output, at most the output
//!   caps) is charged to the run's memory cgroup: the payload's memory limit includes it, and
//!   so does `peak_memory_bytes`;
//! - the sandbox's processes raise their `oom_score_adj` to 1000 (every run does), so the
//!   cgroup's OOM killer takes a payload process, never the stub, even when the payload's
//!   memory is tmpfs files that count in no process's RSS;
//! - requests with more than [`MAX_INLINE_BYTES`] of in-memory input files, and any request
//!   while no stub is ready, take the ordinary path (create, clone, migrate).
//!
//! Nothing is left behind: the stub dies with its launcher (`PR_SET_PDEATHSIG`), its
//! sandbox dies with it, and the cgroup, named after the launcher like every run cgroup, is
//! swept by the next `Sandbox::new`. Dropping the `Sandbox` kills and reaps the stub and
//! removes its cgroup.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::cgroup::{CgroupLimits, CgroupVersion, RunCgroup};
use super::{RunOptions, Sandbox, sys};
use crate::result::RunResult;
use crate::spec::{DEFAULT_MEMORY, DEFAULT_PIDS, RunSpec, Source};

/// Requests whose in-memory input files are larger than this go the ordinary way (the stub
/// receives the request as JSON).
pub const MAX_INLINE_BYTES: usize = 64 << 10;

/// How long a request waits for a stub that is still moving into its cgroup before taking
/// the ordinary path.
const READY_WAIT: Duration = Duration::from_millis(50);

/// A stub ready (or getting ready) in the next run's cgroup.
#[derive(Debug)]
pub(crate) struct Stub {
    cgroup: Box<dyn RunCgroup>,
    pid: libc::pid_t,
    pidfd: OwnedFd,
    sock: UnixStream,
    ready: bool,
}

/// The request the launcher sends.
#[derive(serde::Serialize, serde::Deserialize)]
struct Request {
    spec: RunSpec,
    passthrough: bool,
}

/// The stub's answer.
#[derive(serde::Serialize, serde::Deserialize)]
enum Reply {
    Result(Box<RunResult>),
    Error(String),
}

/// What happened to a request handed to the stub.
pub(crate) enum Outcome {
    /// The stub ran it.
    Ran(Box<Result<RunResult, super::Error>>),
    /// The stub could not take it; nothing ran: take the ordinary path.
    NotTaken,
}

fn write_frame(sock: &mut UnixStream, bytes: &[u8]) -> std::io::Result<()> {
    sock.write_all(&(bytes.len() as u32).to_le_bytes())?;
    sock.write_all(bytes)
}

fn read_frame(sock: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len)?;
    let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
    sock.read_exact(&mut bytes)?;
    Ok(bytes)
}

impl Sandbox {
    /// Start a stub for the next run when this launcher pre-warms and has none (v1 only: v2
    /// clones straight into the cgroup).
    pub(crate) fn prewarm(&self) {
        let Some(driver) = self.cgroup.as_deref() else {
            return;
        };
        if !self.prewarm || driver.version() != CgroupVersion::V1 {
            return;
        }
        let mut slot = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        match self.start_stub(driver) {
            Ok(stub) => *slot = Some(stub),
            Err(e) => tracing::warn!("cannot pre-warm the next run's cgroup: {e}"),
        }
    }

    fn start_stub(&self, driver: &dyn super::CgroupDriver) -> Result<Stub, String> {
        // Only named here; the stub creates it (mkdir of a v1 memory cgroup is not cheap), so
        // the launcher's share of pre-warming is one fork.
        let cgroup = match driver.plan() {
            Some(planned) => planned.map_err(|e| e.to_string())?,
            None => return Err("this cgroup driver cannot pre-create run cgroups".into()),
        };
        let (launcher_end, stub_end) = UnixStream::pair().map_err(|e| e.to_string())?;
        let launcher = std::process::id() as libc::pid_t;
        // SAFETY of the fork is the launcher's single-threadedness (checked as for every
        // clone); the stub only runs kakoi's own single-threaded code.
        let threads = super::thread_count();
        if threads != 1 {
            return Err(format!("the launcher has {threads} threads"));
        }
        match sys::fork().map_err(|e| format!("fork: {e}"))? {
            0 => {
                drop(launcher_end);
                self.stub_main(cgroup.as_ref(), stub_end, launcher)
            }
            pid => {
                drop(stub_end);
                let pidfd = sys::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
                Ok(Stub {
                    cgroup,
                    pid,
                    pidfd,
                    sock: launcher_end,
                    ready: false,
                })
            }
        }
    }

    /// The stub: move into the cgroup, say ready, run one request, answer, exit.
    fn stub_main(&self, cgroup: &dyn RunCgroup, mut sock: UnixStream, launcher: i32) -> ! {
        // Die with the launcher; if it is already gone, leave.
        if sys::set_parent_death_signal(libc::SIGKILL).is_err()
            || nix::unistd::getppid().as_raw() != launcher
        {
            sys::exit(0);
        }
        // Creating the cgroup and moving in are paid here, not by the launcher.
        let placeholder = CgroupLimits {
            memory_bytes: DEFAULT_MEMORY,
            pids: DEFAULT_PIDS + 1,
            cpu_millicores: 1000,
        };
        if cgroup.create_planned(&placeholder).is_err()
            || cgroup.enter_self().is_err()
            || sock.write_all(b"R").is_err()
        {
            sys::exit(1);
        }
        // One marker byte, with the cancel fd when there is one.
        let mut marker = [0u8; 1];
        let cancel: Option<OwnedFd> = match sys::recv_packet(sock.as_raw_fd(), &mut marker) {
            Ok((1, fd)) => fd,
            // EOF: the launcher let the stub go without a request.
            _ => sys::exit(0),
        };
        let reply = match read_frame(&mut sock)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Request>(&bytes).ok())
        {
            Some(request) => {
                let started = Instant::now();
                let options = RunOptions {
                    passthrough: request.passthrough,
                    cancel: cancel.as_ref().map(|fd| fd.as_raw_fd()),
                };
                let result = request
                    .spec
                    .validate()
                    .map_err(super::Error::from)
                    .and_then(|spec| self.run_valid(&spec, options, started, Some(cgroup)));
                match result {
                    Ok(result) => Reply::Result(Box::new(result)),
                    Err(e) => Reply::Error(error_chain(&e)),
                }
            }
            None => Reply::Error("the stub could not read its request".into()),
        };
        let ok = serde_json::to_vec(&reply)
            .ok()
            .is_some_and(|bytes| write_frame(&mut sock, &bytes).is_ok());
        // No destructors: the cgroup belongs to the launcher, which removes it.
        sys::exit(if ok { 0 } else { 1 })
    }

    /// Hand a request to the stub, if one is ready (waiting briefly for one that is moving
    /// into its cgroup).
    pub(crate) fn run_in_stub(&self, spec: &RunSpec, options: RunOptions) -> Outcome {
        let inline: usize = spec
            .files
            .iter()
            .map(|f| match &f.source {
                Source::Bytes(bytes) => bytes.len(),
                Source::Path(_) => 0,
            })
            .sum::<usize>()
            + match &spec.stdin {
                Some(Source::Bytes(bytes)) => bytes.len(),
                _ => 0,
            };
        if inline > MAX_INLINE_BYTES {
            return Outcome::NotTaken;
        }
        let Some(mut stub) = self.warm.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Outcome::NotTaken;
        };
        if !stub.ready {
            let deadline = Instant::now() + READY_WAIT;
            let _ = stub.sock.set_read_timeout(Some(READY_WAIT));
            let mut byte = [0u8; 1];
            stub.ready = Instant::now() < deadline
                && stub.sock.read_exact(&mut byte).is_ok()
                && byte == *b"R";
            let _ = stub.sock.set_read_timeout(None);
            if !stub.ready {
                // Still waiting for its grace period (or dead): keep it for the next request
                // if it lives, and run this one the ordinary way.
                if sys::pidfd_send_signal(stub.pidfd.as_raw_fd(), 0).is_ok() {
                    *self.warm.lock().unwrap_or_else(|e| e.into_inner()) = Some(stub);
                } else {
                    stub.discard();
                }
                return Outcome::NotTaken;
            }
        }
        let request = Request {
            spec: spec.clone(),
            passthrough: options.passthrough,
        };
        let Ok(bytes) = serde_json::to_vec(&request) else {
            stub.discard();
            return Outcome::NotTaken;
        };
        if sys::send_packet(stub.sock.as_raw_fd(), b"Q", options.cancel).is_err()
            || write_frame(&mut stub.sock, &bytes).is_err()
        {
            // The stub never got the request: nothing ran.
            stub.discard();
            return Outcome::NotTaken;
        }
        let reply = read_frame(&mut stub.sock)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Reply>(&bytes).ok());
        // This stub and its cgroup go first, then the next stub starts (in `run_with`): a v1
        // migration holds the cgroup mutex through its grace period, so removing a cgroup
        // while the next stub moves in would wait for that grace period.
        stub.discard();
        Outcome::Ran(Box::new(match reply {
            Some(Reply::Result(result)) => Ok(*result),
            Some(Reply::Error(message)) => Err(super::Error::Stub { message }),
            None => Err(super::Error::Stub {
                message: "the pre-warmed launcher stub died before answering".into(),
            }),
        }))
    }
}

impl Stub {
    /// Kill (if needed) and reap the stub, then remove its cgroup.
    pub(crate) fn discard(self) {
        let _ = sys::pidfd_send_signal(self.pidfd.as_raw_fd(), libc::SIGKILL);
        let _ = sys::wait4(self.pid);
        drop(self.sock);
        if let Err(e) = self.cgroup.destroy() {
            tracing::warn!("cannot remove the pre-warmed cgroup: {e}");
        }
    }
}

/// An error and its causes on one line.
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
