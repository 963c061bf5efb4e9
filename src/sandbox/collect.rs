//! Returned files: after a run, the launcher walks `<workdir>/<dir>` and returns what the
//! payload left there (`RunSpec::collect`).
//!
//! The sandbox child hands the launcher an `O_PATH` fd of its workdir tmpfs over the report
//! socket before anything untrusted runs. The walk happens after the sandbox init was reaped:
//! every process of the pid namespace is dead by then, so nothing can change the tree while it
//! is read (no time-of-check race), and the fd keeps the tmpfs alive until the walk is done.
//!
//! Every lookup is `openat2` relative to an fd already inside the workdir with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV` and
//! `O_NOFOLLOW | O_NONBLOCK`, after an `fstatat(AT_SYMLINK_NOFOLLOW)` decided the entry's type:
//!
//! - regular files are read, never more than their size and the caps (a sparse 1 TB file is
//!   `too_large` from its size alone; nothing is read);
//! - hard links are regular files: a hard link cannot cross filesystems, so it names a file of
//!   the workdir tmpfs, which the payload could have copied anyway;
//! - symlinks are listed as `symlink` and never followed (neither is `out` itself);
//! - fifos, sockets and devices are `not_regular` (and are never opened);
//! - a directory deeper than [`COLLECT_MAX_DEPTH`] is `depth`; another filesystem mounted in
//!   the tree is `other_mount`;
//! - a name that is not UTF-8 is `not_utf8`: its path is shown with U+FFFD replacements (JSON
//!   strings cannot carry the bytes) and its content is not returned, because a lossy name
//!   could collide with another file's;
//! - after `max_files` entries the walk stops and adds one `limit` entry naming the first entry
//!   left out; a file that would take the total over `max_total_bytes` is listed as `limit`.
//!
//! In each directory its files (and other non-directories) come first, sorted by name, then
//! its subdirectories, sorted by name, each walked the same way: a program's top-level results
//! (`out/plot.png`) are returned before the count cap can be used up by a deep tree next to
//! them. Paths are relative to the output directory and `/`-separated. Directories are walked,
//! not listed.

use std::ffi::{CString, OsStr, OsString};
use std::io::Read as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use base64::Engine as _;
use nix::errno::Errno;
use nix::sys::stat::{FileStat, SFlag};

use super::sys;
use crate::result::OutputFile;
use crate::spec::{COLLECT_MAX_DEPTH, Collect};

/// Why an entry's content is not returned (the `skipped` field of [`OutputFile`]).
pub mod reason {
    /// A symbolic link (never followed).
    pub const SYMLINK: &str = "symlink";
    /// A fifo, socket or device, or an output "directory" that is not one.
    pub const NOT_REGULAR: &str = "not_regular";
    /// Larger than `max_file_bytes`.
    pub const TOO_LARGE: &str = "too_large";
    /// The count cap or the total byte cap was reached.
    pub const LIMIT: &str = "limit";
    /// A directory deeper than the depth cap.
    pub const DEPTH: &str = "depth";
    /// The name is not UTF-8.
    pub const NOT_UTF8: &str = "not_utf8";
    /// Another filesystem is mounted there.
    pub const OTHER_MOUNT: &str = "other_mount";
    /// The launcher could not open or read it.
    pub const UNREADABLE: &str = "unreadable";
}

/// Flags of every lookup: see the module documentation.
const OPEN_DIR: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
const OPEN_FILE: libc::c_int = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;

struct Walk<'a> {
    caps: &'a Collect,
    files: Vec<OutputFile>,
    total: u64,
    device: u64,
    full: bool,
}

impl Walk<'_> {
    fn push(&mut self, path: String, size: u64, content: Result<Vec<u8>, &'static str>) {
        if self.full {
            return;
        }
        if self.files.len() == self.caps.max_files {
            self.files.push(skipped(path, 0, reason::LIMIT));
            self.full = true;
            return;
        }
        self.files.push(match content {
            Ok(bytes) => OutputFile {
                path,
                size,
                base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                skipped: None,
            },
            Err(why) => skipped(path, size, why),
        });
    }
}

fn skipped(path: String, size: u64, why: &str) -> OutputFile {
    OutputFile {
        path,
        size,
        base64: None,
        skipped: Some(why.to_owned()),
    }
}

/// Walk `<workdir>/<caps.dir>` and return its files under the caps. `workdir` is an fd of the
/// workdir's root (any open mode, `O_PATH` included). A missing directory gives no entries.
pub fn collect(workdir: BorrowedFd<'_>, caps: &Collect) -> Vec<OutputFile> {
    let mut walk = Walk {
        caps,
        files: Vec::new(),
        total: 0,
        device: 0,
        full: false,
    };
    let Ok(dir) = CString::new(caps.dir.as_os_str().as_bytes()) else {
        return vec![skipped(".".into(), 0, reason::UNREADABLE)];
    };
    // O_PATH|O_NOFOLLOW opens a final symlink itself, so its type can be told apart from a
    // file (O_DIRECTORY alone would say ENOTDIR for both).
    let handle = match sys::openat2(
        workdir.as_raw_fd(),
        &dir,
        libc::O_PATH | libc::O_NOFOLLOW,
        sys::RESOLVE_STRICT,
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Vec::new(),
        Err(errno) => return vec![skipped(".".into(), 0, open_failure(errno))],
    };
    let kind = match nix::sys::stat::fstat(&handle) {
        Ok(stat) => {
            walk.device = stat.st_dev;
            SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
        }
        Err(_) => return vec![skipped(".".into(), 0, reason::UNREADABLE)],
    };
    match kind {
        SFlag::S_IFDIR => {}
        SFlag::S_IFLNK => return vec![skipped(".".into(), 0, reason::SYMLINK)],
        _ => return vec![skipped(".".into(), 0, reason::NOT_REGULAR)],
    }
    match sys::openat2(handle.as_raw_fd(), c".", OPEN_DIR, sys::RESOLVE_STRICT) {
        Ok(fd) => walk_dir(&mut walk, fd, &mut Vec::new(), 0),
        Err(errno) => return vec![skipped(".".into(), 0, open_failure(errno))],
    }
    walk.files
}

/// What a failed `openat2` of an entry means.
fn open_failure(errno: Errno) -> &'static str {
    match errno {
        // RESOLVE_NO_SYMLINKS / O_NOFOLLOW on a symlink.
        Errno::ELOOP => reason::SYMLINK,
        Errno::ENOTDIR => reason::NOT_REGULAR,
        Errno::EXDEV => reason::OTHER_MOUNT,
        _ => reason::UNREADABLE,
    }
}

/// Names in a directory, sorted by bytes, without `.` and `..`.
fn read_names(dir: OwnedFd) -> Option<Vec<OsString>> {
    let mut dir = nix::dir::Dir::from_fd(dir).ok()?;
    let mut names: Vec<OsString> = dir
        .iter()
        .filter_map(Result::ok)
        .map(|entry| OsStr::from_bytes(entry.file_name().to_bytes()).to_owned())
        .filter(|name| name != "." && name != "..")
        .collect();
    names.sort();
    Some(names)
}

fn walk_dir(walk: &mut Walk<'_>, dir: OwnedFd, prefix: &mut Vec<u8>, depth: usize) {
    // Keep an fd for lookups; the original goes to the directory iterator.
    let Ok(lookup) = dir.try_clone() else {
        return;
    };
    let Some(names) = read_names(dir) else {
        let path = String::from_utf8_lossy(prefix).into_owned();
        walk.push(path, 0, Err(reason::UNREADABLE));
        return;
    };
    // Non-directories first, then directories; each group keeps the name order.
    let is_dir = |name: &OsString| {
        nix::sys::stat::fstatat(
            lookup.as_fd(),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|s| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
    };
    let (dirs, others): (Vec<OsString>, Vec<OsString>) = names.into_iter().partition(is_dir);
    for name in others.into_iter().chain(dirs) {
        if walk.full {
            return;
        }
        let mark = prefix.len();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(name.as_bytes());
        visit(walk, lookup.as_fd(), &name, prefix, depth);
        prefix.truncate(mark);
    }
}

fn visit(walk: &mut Walk<'_>, dir: BorrowedFd<'_>, name: &OsStr, path: &mut Vec<u8>, depth: usize) {
    let shown = String::from_utf8_lossy(path).into_owned();
    let stat = match nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(_) => return walk.push(shown, 0, Err(reason::UNREADABLE)),
    };
    let size = stat.st_size.max(0) as u64;
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFLNK {
        return walk.push(shown, size, Err(reason::SYMLINK));
    }
    if stat.st_dev != walk.device {
        return walk.push(shown, 0, Err(reason::OTHER_MOUNT));
    }
    if std::str::from_utf8(path).is_err() {
        return walk.push(shown, size, Err(reason::NOT_UTF8));
    }
    let Ok(c_name) = CString::new(name.as_bytes()) else {
        return walk.push(shown, size, Err(reason::UNREADABLE));
    };
    if kind == SFlag::S_IFDIR {
        if depth + 1 > COLLECT_MAX_DEPTH {
            return walk.push(shown, 0, Err(reason::DEPTH));
        }
        match sys::openat2(dir.as_raw_fd(), &c_name, OPEN_DIR, sys::RESOLVE_STRICT) {
            Ok(child) => walk_dir(walk, child, path, depth + 1),
            Err(errno) => walk.push(shown, 0, Err(open_failure(errno))),
        }
        return;
    }
    if kind != SFlag::S_IFREG {
        return walk.push(shown, size, Err(reason::NOT_REGULAR));
    }
    if size > walk.caps.max_file_bytes {
        return walk.push(shown, size, Err(reason::TOO_LARGE));
    }
    if walk.total + size > walk.caps.max_total_bytes {
        return walk.push(shown, size, Err(reason::LIMIT));
    }
    match read_file(dir, &c_name, &stat, size) {
        Ok(bytes) => {
            walk.total += bytes.len() as u64;
            walk.push(shown, size, Ok(bytes));
        }
        Err(why) => walk.push(shown, size, Err(why)),
    }
}

/// Open a regular file found by `fstatat` and read exactly its `size` bytes.
fn read_file(
    dir: BorrowedFd<'_>,
    name: &CString,
    seen: &FileStat,
    size: u64,
) -> Result<Vec<u8>, &'static str> {
    let fd = sys::openat2(dir.as_raw_fd(), name, OPEN_FILE, sys::RESOLVE_STRICT)
        .map_err(open_failure)?;
    // The same inode as the one stat'ed (nothing runs any more, but check anyway).
    let opened = nix::sys::stat::fstat(&fd).map_err(|_| reason::UNREADABLE)?;
    let kind = SFlag::from_bits_truncate(opened.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG || opened.st_ino != seen.st_ino || opened.st_dev != seen.st_dev {
        return Err(reason::NOT_REGULAR);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    std::fs::File::from(fd)
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(|_| reason::UNREADABLE)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt as _, symlink};
    use std::path::Path;

    fn caps() -> Collect {
        Collect::default()
    }

    fn run(root: &Path, caps: &Collect) -> Vec<OutputFile> {
        let dir = std::fs::File::open(root).unwrap();
        collect(dir.as_fd(), caps)
    }

    fn find<'a>(files: &'a [OutputFile], path: &str) -> &'a OutputFile {
        files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{path} not in {files:#?}"))
    }

    fn content(file: &OutputFile) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(file.base64.as_ref().expect("content"))
            .unwrap()
    }

    #[test]
    fn returns_files_and_skips_what_it_must() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(out.join("nested/deeper")).unwrap();
        let png: Vec<u8> = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"
            .iter()
            .copied()
            .chain((0..=255).cycle().take(3000))
            .collect();
        std::fs::write(out.join("plot.png"), &png).unwrap();
        std::fs::write(out.join("nested/deeper/a.txt"), "a\n").unwrap();
        std::fs::write(tmp.path().join("secret"), "not in out").unwrap();
        symlink("/etc/passwd", out.join("passwd")).unwrap();
        symlink("../..", out.join("up")).unwrap();
        std::fs::hard_link(out.join("nested/deeper/a.txt"), out.join("hard.txt")).unwrap();
        nix::unistd::mkfifo(
            &out.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let listener = std::os::unix::net::UnixListener::bind(out.join("sock")).unwrap();
        let sparse = std::fs::File::create(out.join("sparse")).unwrap();
        sparse.set_len(1 << 40).unwrap();
        std::fs::write(out.join("empty"), "").unwrap();
        let files = run(tmp.path(), &caps());
        drop(listener);
        assert_eq!(content(find(&files, "plot.png")), png);
        assert_eq!(find(&files, "plot.png").size, png.len() as u64);
        assert_eq!(content(find(&files, "nested/deeper/a.txt")), b"a\n");
        assert_eq!(content(find(&files, "hard.txt")), b"a\n");
        assert_eq!(content(find(&files, "empty")), b"");
        for (path, why) in [
            ("passwd", reason::SYMLINK),
            ("up", reason::SYMLINK),
            ("fifo", reason::NOT_REGULAR),
            ("sock", reason::NOT_REGULAR),
            ("sparse", reason::TOO_LARGE),
        ] {
            let file = find(&files, path);
            assert_eq!(file.skipped.as_deref(), Some(why), "{file:?}");
            assert!(file.base64.is_none());
        }
        assert_eq!(find(&files, "sparse").size, 1 << 40);
        assert!(files.iter().all(|f| !f.path.contains("secret")));
        // A directory's files first (by name), then its subdirectories (by name).
        let order: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            order,
            [
                "empty",
                "fifo",
                "hard.txt",
                "passwd",
                "plot.png",
                "sock",
                "sparse",
                "up",
                "nested/deeper/a.txt"
            ]
        );
    }

    #[test]
    fn top_level_files_come_before_a_deep_tree_that_fills_the_count_cap() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(out.join("a-cache")).unwrap();
        for i in 0..200 {
            std::fs::write(out.join(format!("a-cache/{i:03}")), "x").unwrap();
        }
        std::fs::write(out.join("z-plot.png"), "png").unwrap();
        let files = run(tmp.path(), &caps());
        assert_eq!(content(find(&files, "z-plot.png")), b"png");
        assert_eq!(files[0].path, "z-plot.png");
        assert_eq!(
            files.last().unwrap().skipped.as_deref(),
            Some(reason::LIMIT)
        );
    }

    #[test]
    fn count_and_byte_caps_hold() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        for i in 0..10_000 {
            std::fs::write(out.join(format!("f{i:05}")), "x").unwrap();
        }
        let files = run(tmp.path(), &caps());
        assert_eq!(files.len(), 65);
        assert!(files[..64].iter().all(|f| f.skipped.is_none()));
        assert_eq!(files[64].path, "f00064");
        assert_eq!(files[64].skipped.as_deref(), Some(reason::LIMIT));

        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(out.join(name), vec![b'x'; 400]).unwrap();
        }
        std::fs::write(out.join("d"), vec![b'x'; 50]).unwrap();
        let limited = Collect {
            max_total_bytes: 900,
            max_file_bytes: 500,
            ..caps()
        };
        let files = run(tmp.path(), &limited);
        let returned: u64 = files
            .iter()
            .filter(|f| f.skipped.is_none())
            .map(|f| f.size)
            .sum();
        assert_eq!(returned, 850);
        assert_eq!(find(&files, "c").skipped.as_deref(), Some(reason::LIMIT));
        assert_eq!(content(find(&files, "d")).len(), 50);
        let small = Collect {
            max_file_bytes: 100,
            ..caps()
        };
        assert_eq!(
            find(&run(tmp.path(), &small), "a").skipped.as_deref(),
            Some(reason::TOO_LARGE)
        );
    }

    #[test]
    fn out_missing_symlinked_or_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(run(tmp.path(), &caps()).is_empty());
        std::fs::create_dir(tmp.path().join("elsewhere")).unwrap();
        std::fs::write(tmp.path().join("elsewhere/x"), "x").unwrap();
        symlink("elsewhere", tmp.path().join("out")).unwrap();
        let files = run(tmp.path(), &caps());
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].path, ".");
        assert_eq!(files[0].skipped.as_deref(), Some(reason::SYMLINK));
        std::fs::remove_file(tmp.path().join("out")).unwrap();
        std::fs::write(tmp.path().join("out"), "a file").unwrap();
        let files = run(tmp.path(), &caps());
        assert_eq!(files[0].skipped.as_deref(), Some(reason::NOT_REGULAR));
        // An intermediate symlink in a nested collect dir is refused as well.
        std::fs::remove_file(tmp.path().join("out")).unwrap();
        symlink("elsewhere", tmp.path().join("link")).unwrap();
        let nested = Collect {
            dir: "link/.".into(),
            ..caps()
        };
        assert_eq!(
            run(tmp.path(), &nested)[0].skipped.as_deref(),
            Some(reason::SYMLINK)
        );
    }

    #[test]
    fn depth_and_names_that_are_not_utf8() {
        let tmp = tempfile::tempdir().unwrap();
        let mut deep = tmp.path().join("out");
        for level in 0..20 {
            deep.push(format!("d{level:02}"));
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("bottom"), "b").unwrap();
        let odd = tmp
            .path()
            .join("out")
            .join(OsStr::from_bytes(b"bad\xffname"));
        std::fs::write(&odd, "x").unwrap();
        let files = run(tmp.path(), &caps());
        let odd_entry = find(&files, &String::from_utf8_lossy(b"bad\xffname"));
        assert_eq!(odd_entry.skipped.as_deref(), Some(reason::NOT_UTF8));
        let depth: Vec<_> = files
            .iter()
            .filter(|f| f.skipped.as_deref() == Some(reason::DEPTH))
            .collect();
        assert_eq!(depth.len(), 1, "{files:#?}");
        // `out/d00` is level 1; the first directory not entered is level 17.
        assert_eq!(depth[0].path.matches('/').count(), COLLECT_MAX_DEPTH);
        assert!(files.iter().all(|f| !f.path.ends_with("bottom")));
    }

    #[test]
    fn unreadable_entries_do_not_stop_the_walk() {
        if !nix::unistd::geteuid().is_root() {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("out");
            std::fs::create_dir(&out).unwrap();
            std::fs::write(out.join("a"), "a").unwrap();
            std::fs::write(out.join("b"), "b").unwrap();
            std::fs::set_permissions(out.join("a"), std::fs::Permissions::from_mode(0o0)).unwrap();
            let files = run(tmp.path(), &caps());
            assert_eq!(
                find(&files, "a").skipped.as_deref(),
                Some(reason::UNREADABLE)
            );
            assert_eq!(content(find(&files, "b")), b"b");
        } else {
            // Root reads a mode-0 file anyway: check the walk goes on past a vanished entry
            // instead (fstatat fails on a name that was removed after the listing).
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("out");
            std::fs::create_dir(&out).unwrap();
            std::fs::write(out.join("b"), "b").unwrap();
            let dir = std::fs::File::open(&out).unwrap();
            let caps = caps();
            let mut walk = Walk {
                caps: &caps,
                files: Vec::new(),
                total: 0,
                device: dir
                    .metadata()
                    .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
                    .unwrap(),
                full: false,
            };
            visit(
                &mut walk,
                dir.as_fd(),
                OsStr::new("gone"),
                &mut b"gone".to_vec(),
                0,
            );
            visit(
                &mut walk,
                dir.as_fd(),
                OsStr::new("b"),
                &mut b"b".to_vec(),
                0,
            );
            assert_eq!(walk.files[0].skipped.as_deref(), Some(reason::UNREADABLE));
            assert_eq!(content(&walk.files[1]), b"b");
        }
    }
}
