//! Pre-made network namespaces: a small pool of empty network namespaces (only `lo`, up) that
//! a root launcher joins before clone instead of creating and destroying one per run.
//!
//! Creating a network namespace is the largest kernel cost of a launch (`copy_net_ns`:
//! registering `lo`, per-namespace sysctl tables, protocol state) and destroying it costs as
//! much again in the `cleanup_net` worker after every run. A slot is made once:
//!
//! ```text
//! /run/kakoi/netns-v1/<n>       an nsfs bind mount holding the namespace (like `ip netns add`)
//! /run/kakoi/netns-v1/<n>.lock  flock'ed by the run that uses slot n; "D" while in use
//! ```
//!
//! # Why sharing a namespace across runs keeps the isolation
//!
//! - **Exclusive while in use.** A run holds `flock(LOCK_EX)` on the slot's lock file from
//!   before clone until the sandbox init has been reaped. Two runs never share a namespace at
//!   the same time; when every slot is busy the run gets a fresh namespace instead.
//! - **Nothing of a run survives it.** The init is reaped only after the kernel has killed and
//!   reaped every other process of the run's pid namespace (`zap_pid_namespace`), and a
//!   socket lives only as long as an fd of some process refers to it, so when the lock is
//!   released no socket, bound port or pending datagram of the run is left. TCP is denied by
//!   Landlock anyway (no bind, no connect, so no listener and no TIME_WAIT carrying data), and
//!   abstract unix sockets are scoped to the run's Landlock domain (ABI 6).
//! - **Nothing in the namespace can be changed by a run.** The namespace is owned by the
//!   host's user namespace, not the sandbox's: the sandbox never holds `CAP_NET_ADMIN` (or any
//!   capability) over it, not even before it drops its capabilities. Interfaces, addresses,
//!   routes, netfilter and `/proc/sys/net` stay as the launcher made them (`lo` up, nothing
//!   else). With a fresh per-run namespace the sandbox's own user namespace owns it.
//! - **A launcher that dies in the middle** (SIGKILL) releases the lock with its last fd, while
//!   the kernel may still be tearing down the run. Such a slot still says "D"; the next run
//!   that takes it discards it (unmounts it; the old namespace lives on only as long as a dying
//!   process holds it) and makes a new one in its place.
//! - **What remains shared between runs of one slot, one after the other:** the namespace's
//!   counters (`/proc/net/snmp`, `/proc/net/dev` of `lo`), the namespace's inode number, and
//!   the state of its ephemeral port allocator. A run can see how much loopback traffic earlier
//!   runs made. That is a side channel of the same kind as the host-wide counters every
//!   sandbox already sees (`/proc/stat`, `/proc/meminfo`, `/proc/loadavg`); it carries no
//!   data a run wrote, only volumes. An operator who does not accept it sets
//!   `SandboxConfig::netns_pool` to 0, and every run gets a fresh namespace.
//!
//! A run says which kind it got in `isolation.net_namespace` (`pooled` or `fresh`).
//! Non-root launchers cannot join a namespace owned by the host's user namespace, so they
//! always use a fresh one.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::sys;

/// Directory of the pool under the runtime directory; the version changes with the layout.
pub const POOL_DIR: &str = "netns-v1";
/// Largest pool a launcher uses.
pub const MAX_POOL: usize = 256;

/// Errors of the pool. A run that cannot use the pool gets a fresh namespace instead; only a
/// failure to return to the launcher's own namespace is fatal.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A file or directory of the pool could not be created or opened.
    #[error("cannot open {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A namespace syscall failed.
    #[error("{what} failed for {path}")]
    Syscall {
        /// What was attempted.
        what: &'static str,
        /// The slot.
        path: PathBuf,
        /// errno.
        #[source]
        source: Errno,
    },
    /// The launcher could not return to its own network namespace.
    #[error("cannot return the launcher to its own network namespace")]
    Restore(#[source] Errno),
}

/// The pool of one launcher: where the slots are, how many it may use, and an fd of the
/// launcher's own network namespace to return to.
#[derive(Debug)]
pub struct NetnsPool {
    dir: PathBuf,
    size: usize,
    own: OwnedFd,
}

/// The network namespace one run gets.
#[derive(Debug)]
pub enum NetnsLease {
    /// A pool slot, held exclusively until the lease is dropped.
    Pooled {
        /// Slot number.
        slot: usize,
        /// The namespace (nsfs fd) to join before clone.
        namespace: OwnedFd,
        /// The locked lock file; dropping it marks the slot clean and unlocks it.
        lock: Flock<File>,
    },
    /// A new namespace created by clone (`CLONE_NEWNET`).
    Fresh,
}

impl NetnsLease {
    /// The namespace to join before clone, for a pooled lease.
    pub fn namespace(&self) -> Option<BorrowedFd<'_>> {
        match self {
            NetnsLease::Pooled { namespace, .. } => Some(namespace.as_fd()),
            NetnsLease::Fresh => None,
        }
    }

    /// `pooled` or `fresh`, for `isolation.net_namespace`.
    pub fn kind(&self) -> &'static str {
        match self {
            NetnsLease::Pooled { .. } => "pooled",
            NetnsLease::Fresh => "fresh",
        }
    }

    /// Give the slot back. Call only when every process of the run is gone (the sandbox init
    /// was reaped); dropping the lease does the same.
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for NetnsLease {
    fn drop(&mut self) {
        if let NetnsLease::Pooled { lock, .. } = self {
            // Clean again; the lock goes when the file is closed.
            let _ = lock.set_len(0);
        }
    }
}

impl NetnsPool {
    /// The pool under `runtime_dir` with up to `size` slots, for a root launcher; `Ok(None)`
    /// when `size` is 0.
    pub fn open(runtime_dir: &Path, size: usize) -> Result<Option<NetnsPool>, NetnsError> {
        if size == 0 {
            return Ok(None);
        }
        let dir = runtime_dir.join(POOL_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| NetnsError::Open {
            path: dir.clone(),
            source,
        })?;
        let own_path = Path::new("/proc/thread-self/ns/net");
        let own = File::open(own_path)
            .map_err(|source| NetnsError::Open {
                path: own_path.to_owned(),
                source,
            })?
            .into();
        Ok(Some(NetnsPool {
            dir,
            size: size.min(MAX_POOL),
            own,
        }))
    }

    /// The pool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Take the first free slot (making or remaking its namespace when needed), or a fresh
    /// namespace when every slot is busy or a slot cannot be used.
    pub fn acquire(&self) -> Result<NetnsLease, NetnsError> {
        for slot in 0..self.size {
            match self.try_slot(slot) {
                Ok(Some(lease)) => return Ok(lease),
                Ok(None) => continue,
                Err(NetnsError::Restore(e)) => return Err(NetnsError::Restore(e)),
                Err(error) => {
                    tracing::warn!("network namespace slot {slot} unusable: {error}");
                    continue;
                }
            }
        }
        Ok(NetnsLease::Fresh)
    }

    fn try_slot(&self, slot: usize) -> Result<Option<NetnsLease>, NetnsError> {
        let lock_path = self.dir.join(format!("{slot}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(|source| NetnsError::Open {
                path: lock_path.clone(),
                source,
            })?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, source)) => {
                return Err(NetnsError::Syscall {
                    what: "flock",
                    path: lock_path,
                    source,
                });
            }
        };
        let mut mark = [0u8; 1];
        // "D": the last run using this slot never gave it back (its launcher died).
        let dirty = lock
            .read_at(&mut mark, 0)
            .is_ok_and(|n| n == 1 && mark[0] == b'D');
        let ns_path = self.dir.join(slot.to_string());
        let namespace = match (dirty, open_namespace(&ns_path)) {
            (false, Some(fd)) => fd,
            _ => {
                self.make_namespace(&ns_path)?;
                open_namespace(&ns_path).ok_or_else(|| NetnsError::Syscall {
                    what: "reopening the new network namespace",
                    path: ns_path.clone(),
                    source: Errno::ENOENT,
                })?
            }
        };
        lock.write_at(b"D", 0).map_err(|source| NetnsError::Open {
            path: lock_path,
            source,
        })?;
        Ok(Some(NetnsLease::Pooled {
            slot,
            namespace,
            lock,
        }))
    }

    /// (Re)make the namespace of a slot: a new network namespace with `lo` up, bind-mounted on
    /// `path`. The launcher enters the new namespace for this and returns to its own.
    fn make_namespace(&self, path: &Path) -> Result<(), NetnsError> {
        let syscall = |what: &'static str| {
            move |source| NetnsError::Syscall {
                what,
                path: path.to_owned(),
                source,
            }
        };
        // An old namespace (a dead launcher's slot, or a plain file after a reboot of a
        // persistent /run) goes first; its processes, if any, keep it alive on their own.
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(source) => return Err(syscall("umount of the old namespace")(source)),
        }
        if let Err(source) = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o400)
            .open(path)
        {
            return Err(NetnsError::Open {
                path: path.to_owned(),
                source,
            });
        }
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(syscall("unshare(CLONE_NEWNET)"))?;
        let made = sys::loopback_up()
            .map_err(syscall("bringing lo up"))
            .and_then(|()| {
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(syscall("bind mount of the namespace"))
            });
        self.restore()?;
        made
    }

    /// Join a slot's namespace before clone; [`NetnsPool::restore`] right after.
    pub fn enter(&self, namespace: BorrowedFd<'_>) -> Result<(), Errno> {
        nix::sched::setns(namespace, CloneFlags::CLONE_NEWNET)
    }

    /// Return the launcher to its own network namespace.
    pub fn restore(&self) -> Result<(), NetnsError> {
        nix::sched::setns(self.own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Restore)
    }

    /// Unmount and remove the namespace of every slot that no run holds (for operators who
    /// turn the pool off, and tests). The small lock files stay: removing one could let two
    /// launchers lock two different files of the same slot. Returns how many were removed.
    pub fn remove_idle(&self) -> usize {
        let mut removed = 0;
        for slot in 0..MAX_POOL {
            let lock_path = self.dir.join(format!("{slot}.lock"));
            let Ok(file) = File::options().read(true).write(true).open(&lock_path) else {
                continue;
            };
            let Ok(_lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            let ns_path = self.dir.join(slot.to_string());
            let unmounted = nix::mount::umount2(&ns_path, MntFlags::MNT_DETACH).is_ok();
            if std::fs::remove_file(&ns_path).is_ok() && unmounted {
                removed += 1;
            }
        }
        removed
    }

    /// Slots whose namespace exists, and how many of them a run holds right now.
    pub fn census(&self) -> (usize, usize) {
        let (mut made, mut busy) = (0, 0);
        for slot in 0..MAX_POOL {
            if open_namespace(&self.dir.join(slot.to_string())).is_none() {
                continue;
            }
            made += 1;
            let lock_path = self.dir.join(format!("{slot}.lock"));
            if let Ok(file) = File::open(&lock_path)
                && Flock::lock(file, FlockArg::LockSharedNonblock).is_err()
            {
                busy += 1;
            }
        }
        (made, busy)
    }
}

/// Open a slot's namespace file; `None` unless it is a mounted network namespace.
fn open_namespace(path: &Path) -> Option<OwnedFd> {
    let fd: OwnedFd = File::open(path).ok()?.into();
    let is_nsfs = nix::sys::statfs::fstatfs(&fd)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
    let is_net = sys::namespace_type(fd.as_raw_fd()) == Ok(libc::CLONE_NEWNET);
    (is_nsfs && is_net).then_some(fd)
}
