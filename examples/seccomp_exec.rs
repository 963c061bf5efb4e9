//! Test helper: run a command under a kakoi seccomp policy, with a tiny supervisor.
//!
//! `seccomp_exec [--policy FILE] [--no-notify] -- CMD ARGS...`
//!
//! Forks (this process is single-threaded); the child sets `PR_SET_NO_NEW_PRIVS`, installs the
//! policy, passes the listener to the parent over a socketpair and execs CMD. The parent polls
//! the listener and the child's pidfd; on a notification it prints `VIOLATION <name>` to stderr
//! and kills the child. It exits with the child's code, or 128 + signal.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use kakoi::sandbox::seccomp::{self, SeccompPolicy};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut policy_file: Option<PathBuf> = None;
    let mut notify = true;
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--policy" => policy_file = args.next().map(PathBuf::from),
            "--no-notify" => notify = false,
            "--" => {
                command.extend(args.by_ref());
                break;
            }
            other => {
                eprintln!("seccomp_exec: unexpected argument {other}");
                std::process::exit(2);
            }
        }
    }
    if command.is_empty() {
        eprintln!("usage: seccomp_exec [--policy FILE] [--no-notify] -- CMD ARGS...");
        std::process::exit(2);
    }
    let mut policy = match &policy_file {
        Some(path) => SeccompPolicy::from_file(path),
        None => SeccompPolicy::default_policy(),
    }
    .unwrap_or_else(|e| {
        eprintln!("seccomp_exec: {e}");
        std::process::exit(2);
    });
    policy.set_notify(notify);
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_str()).expect("no NUL in arguments"))
        .collect();
    let (parent_socket, child_socket) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");

    // SAFETY: this example is single-threaded; the child only makes syscalls on data prepared
    // above (no allocation) until execvp or _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(parent_socket);
            run_child(&policy, &argv, child_socket.as_raw_fd())
        }
        ForkResult::Parent { child } => {
            drop(child_socket);
            std::process::exit(supervise(child, parent_socket))
        }
    }
}

fn run_child(policy: &SeccompPolicy, argv: &[CString], socket: i32) -> ! {
    // no_new_privs first: seccomp(2) requires it without CAP_SYS_ADMIN.
    if nix::sys::prctl::set_no_new_privs().is_err() {
        child_fail(b"seccomp_exec: PR_SET_NO_NEW_PRIVS failed\n");
    }
    match policy.install() {
        Ok(Some(listener)) => {
            if seccomp::send_listener(socket, listener).is_err() {
                child_fail(b"seccomp_exec: cannot send the listener\n");
            }
            // The payload must never hold its own listener.
            let _ = nix::unistd::close(listener);
        }
        Ok(None) => {}
        Err(_) => child_fail(b"seccomp_exec: seccomp install failed\n"),
    }
    let _ = nix::unistd::execvp(&argv[0], argv);
    child_fail(b"seccomp_exec: exec failed\n")
}

fn child_fail(message: &[u8]) -> ! {
    let _ = nix::unistd::write(std::io::stderr(), message);
    // SAFETY: _exit is async-signal-safe and ends the forked child without unwinding.
    unsafe { nix::libc::_exit(125) }
}

fn supervise(child: Pid, socket: OwnedFd) -> i32 {
    let listener = seccomp::receive_listener(socket.as_fd()).expect("receive listener");
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, child.as_raw(), 0) };
    assert!(raw >= 0, "pidfd_open failed");
    // SAFETY: `raw` is a fresh pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    loop {
        let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        if let Some(listener) = &listener {
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
            Ok(_) => {}
        }
        let listener_ready = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        let child_exited = fds[0].revents().is_some_and(|r| !r.is_empty());
        if listener_ready && let Some(listener) = &listener {
            match seccomp::receive_violation(listener.as_fd()) {
                Ok(violation) => {
                    eprintln!("VIOLATION {}", violation.syscall);
                    let _ = kill(Pid::from_raw(violation.pid as i32), Signal::SIGKILL);
                    let _ = kill(child, Signal::SIGKILL);
                }
                Err(e) => eprintln!("seccomp_exec: {e}"),
            }
            continue;
        }
        if child_exited {
            break;
        }
    }
    match waitpid(child, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        _ => 1,
    }
}
