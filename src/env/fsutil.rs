//! Small filesystem helpers of the store: flock, ownership, atomic files, sizes.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::EnvError;

pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EnvError {
    let path = path.to_path_buf();
    move |source| EnvError::Io {
        action,
        path,
        source,
    }
}

/// Open (creating) a lock file.
pub(crate) fn open_lock_file(path: &Path) -> Result<File, EnvError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io("open the lock file", path))
}

/// Take a flock, blocking. Interrupted waits are retried.
pub(crate) fn lock(path: &Path, arg: FlockArg) -> Result<Flock<File>, EnvError> {
    let mut file = open_lock_file(path)?;
    loop {
        match Flock::lock(file, arg) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => {
                return Err(EnvError::Io {
                    action: "lock",
                    path: path.into(),
                    source: errno.into(),
                });
            }
        }
    }
}

/// Try an exclusive flock without waiting: `Ok(None)` when someone holds the lock.
pub(crate) fn try_lock_exclusive(path: &Path) -> Result<Option<Flock<File>>, EnvError> {
    let file = open_lock_file(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(EnvError::Io {
            action: "lock",
            path: path.into(),
            source: errno.into(),
        }),
    }
}

/// Create a directory (and parents) with `mode`.
pub(crate) fn create_dir(path: &Path, mode: u32) -> Result<(), EnvError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io("create", path))
}

/// A name no other process or thread of this host uses at the same time.
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}.{}.{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Write a file atomically: a temp file in the same directory, then rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EnvError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        unique_suffix()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io("write", path))
}

/// `lchown` every entry of a tree (symlinks themselves, never their targets) and remove
/// group/other write permission from regular files and directories.
pub(crate) fn own_tree(root: &Path, uid: u32, gid: u32) -> Result<(), EnvError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(io("inspect", &path))?;
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io("chown", &path))?;
        }
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let wanted = mode & !0o022 & !0o7000;
        if wanted != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted))
                .map_err(io("chmod", &path))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io("read", &path))? {
                stack.push(entry.map_err(io("read", &path))?.path());
            }
        }
    }
    Ok(())
}

/// Total size in bytes (allocated blocks) and number of entries of a tree; symlinks are
/// not followed.
pub(crate) fn tree_size(root: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut count = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        bytes += meta.blocks() * 512;
        count += 1;
        if meta.is_dir()
            && let Ok(dir) = std::fs::read_dir(&path)
        {
            stack.extend(dir.flatten().map(|e| e.path()));
        }
    }
    (bytes, count)
}

/// Remove a tree that may be half-written; a missing tree is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<(), EnvError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EnvError::Io {
            action: "remove",
            path: path.into(),
            source: e,
        }),
    }
}

/// Move a tree out of sight (atomically) into `trash`, then delete it.
pub(crate) fn discard(path: &Path, trash: &Path) -> Result<(), EnvError> {
    create_dir(trash, 0o700)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target: PathBuf = trash.join(format!("{name}.{}", unique_suffix()));
    std::fs::rename(path, &target).map_err(io("move away", path))?;
    remove_tree(&target)
}

/// Seconds since the epoch of a file's mtime.
pub(crate) fn mtime_secs(path: &Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    u64::try_from(meta.mtime()).ok()
}

/// Now, in seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_lock_is_exclusive_across_open_file_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = lock(&path, FlockArg::LockShared).unwrap();
        assert!(
            try_lock_exclusive(&path).unwrap().is_none(),
            "shared holder blocks"
        );
        drop(held);
        let ex = try_lock_exclusive(&path).unwrap();
        assert!(ex.is_some());
    }

    #[test]
    fn write_atomic_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"{}", 0o644).unwrap();
        write_atomic(&path, b"{\"a\":1}", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn discard_removes_through_the_trash() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("env");
        std::fs::create_dir_all(victim.join("a/b")).unwrap();
        std::fs::write(victim.join("a/b/f"), b"x").unwrap();
        discard(&victim, &dir.path().join(".trash")).unwrap();
        assert!(!victim.exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join(".trash"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn own_tree_drops_group_and_other_write() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("dangling")).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        own_tree(dir.path(), uid, gid).unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
}
