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
//! The rules, order and caps live in [`walk`], over a [`Tree`]: the native tree here (fds),
//! and the Docker backend's listing (`backend::docker::collect`), so both backends return
//! the same entries for the same tree.
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

/// The type of an entry, from `lstat` (a symlink is never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Directory,
    /// A regular file.
    Regular,
    /// A symbolic link.
    Symlink,
    /// A fifo, socket or device.
    Other,
}

/// What a [`Tree`] knows about one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Its type.
    pub kind: Kind,
    /// `st_size` (a symlink's is the length of its target).
    pub size: u64,
    /// `st_dev`: an entry on another device than the output directory is another mount.
    pub device: u64,
    /// `st_ino`.
    pub inode: u64,
}

/// What reading a regular file gave.
#[derive(Debug)]
pub enum Content {
    /// The bytes (never more than the file's listed size).
    Bytes(Vec<u8>),
    /// The file is fetched later, after the walk (the Docker backend reads every chosen file
    /// in one archive); see [`Collected::deferred`].
    Deferred,
}

/// A directory tree that [`walk`] applies the returned-files rules to. The native sandbox
/// walks the workdir tmpfs through fds (`openat2`, never following a link); the Docker backend
/// walks a listing the container printed after its payload ended. Both get the same rules,
/// order and caps from [`walk`].
pub trait Tree {
    /// A directory handle.
    type Dir;
    /// The output directory itself: `Ok(None)` when it does not exist, `Err(reason)` when it
    /// cannot be looked at (e.g. [`reason::SYMLINK`] for a symlink on the way to it).
    fn root(&mut self) -> Result<Option<Meta>, &'static str>;
    /// Open the output directory (after [`Tree::root`] said it is one).
    fn open_root(&mut self) -> Result<Self::Dir, &'static str>;
    /// The names in a directory, in any order, without `.` and `..`; `None` if unreadable.
    fn names(&mut self, dir: &Self::Dir) -> Option<Vec<OsString>>;
    /// `lstat` of an entry; `None` if it cannot be looked at.
    fn stat(&mut self, dir: &Self::Dir, name: &OsStr) -> Option<Meta>;
    /// Open a subdirectory, never through a symlink.
    fn open_dir(&mut self, dir: &Self::Dir, name: &OsStr) -> Result<Self::Dir, &'static str>;
    /// Read a regular file that `stat` described as `meta` (the caps were already checked).
    fn read(&mut self, dir: &Self::Dir, name: &OsStr, meta: &Meta)
    -> Result<Content, &'static str>;
}

/// The outcome of [`walk`].
#[derive(Debug, Default)]
pub struct Collected {
    /// The entries, in the order of the module documentation.
    pub files: Vec<OutputFile>,
    /// Files whose content is still to be filled in ([`Content::Deferred`]): their index in
    /// `files` and their path (always UTF-8). The caps already count their listed size.
    pub deferred: Vec<(usize, String)>,
}

struct Walk<'a> {
    caps: &'a Collect,
    out: Collected,
    total: u64,
    device: u64,
    full: bool,
}

impl Walk<'_> {
    fn push(&mut self, path: String, size: u64, content: Result<Content, &'static str>) {
        if self.full {
            return;
        }
        if self.out.files.len() == self.caps.max_files {
            self.out.files.push(skipped(path, 0, reason::LIMIT));
            self.full = true;
            return;
        }
        let entry = match content {
            Ok(Content::Bytes(bytes)) => OutputFile {
                path,
                size,
                base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                skipped: None,
            },
            Ok(Content::Deferred) => {
                self.out.deferred.push((self.out.files.len(), path.clone()));
                OutputFile {
                    path,
                    size,
                    base64: None,
                    skipped: None,
                }
            }
            Err(why) => skipped(path, size, why),
        };
        self.out.files.push(entry);
    }
}

/// An entry whose content is not returned.
pub fn skipped(path: String, size: u64, why: &str) -> OutputFile {
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
    let mut tree = FdTree {
        workdir,
        dir: &caps.dir,
        handle: None,
    };
    walk(&mut tree, caps).files
}

/// Apply the returned-files rules (module documentation) to `tree`.
pub fn walk<T: Tree>(tree: &mut T, caps: &Collect) -> Collected {
    let mut walk = Walk {
        caps,
        out: Collected::default(),
        total: 0,
        device: 0,
        full: false,
    };
    let root = match tree.root() {
        Ok(Some(meta)) => meta,
        Ok(None) => return walk.out,
        Err(why) => {
            walk.out.files.push(skipped(".".into(), 0, why));
            return walk.out;
        }
    };
    walk.device = root.device;
    match root.kind {
        Kind::Directory => {}
        Kind::Symlink => {
            walk.out.files.push(skipped(".".into(), 0, reason::SYMLINK));
            return walk.out;
        }
        _ => {
            walk.out
                .files
                .push(skipped(".".into(), 0, reason::NOT_REGULAR));
            return walk.out;
        }
    }
    match tree.open_root() {
        Ok(dir) => walk_dir(tree, &mut walk, &dir, &mut Vec::new(), 0),
        Err(why) => walk.out.files.push(skipped(".".into(), 0, why)),
    }
    walk.out
}

fn walk_dir<T: Tree>(
    tree: &mut T,
    walk: &mut Walk<'_>,
    dir: &T::Dir,
    prefix: &mut Vec<u8>,
    depth: usize,
) {
    let Some(mut names) = tree.names(dir) else {
        let path = String::from_utf8_lossy(prefix).into_owned();
        walk.push(path, 0, Err(reason::UNREADABLE));
        return;
    };
    names.sort();
    // Non-directories first, then directories; each group keeps the name order.
    let (dirs, others): (Vec<OsString>, Vec<OsString>) = names.into_iter().partition(|name| {
        tree.stat(dir, name)
            .is_some_and(|m| m.kind == Kind::Directory)
    });
    for name in others.into_iter().chain(dirs) {
        if walk.full {
            return;
        }
        let mark = prefix.len();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(name.as_bytes());
        visit(tree, walk, dir, &name, prefix, depth);
        prefix.truncate(mark);
    }
}

fn visit<T: Tree>(
    tree: &mut T,
    walk: &mut Walk<'_>,
    dir: &T::Dir,
    name: &OsStr,
    path: &mut Vec<u8>,
    depth: usize,
) {
    let shown = String::from_utf8_lossy(path).into_owned();
    let Some(meta) = tree.stat(dir, name) else {
        return walk.push(shown, 0, Err(reason::UNREADABLE));
    };
    let size = meta.size;
    if meta.kind == Kind::Symlink {
        return walk.push(shown, size, Err(reason::SYMLINK));
    }
    if meta.device != walk.device {
        return walk.push(shown, 0, Err(reason::OTHER_MOUNT));
    }
    if std::str::from_utf8(path).is_err() {
        return walk.push(shown, size, Err(reason::NOT_UTF8));
    }
    if meta.kind == Kind::Directory {
        if depth + 1 > COLLECT_MAX_DEPTH {
            return walk.push(shown, 0, Err(reason::DEPTH));
        }
        match tree.open_dir(dir, name) {
            Ok(child) => walk_dir(tree, walk, &child, path, depth + 1),
            Err(why) => walk.push(shown, 0, Err(why)),
        }
        return;
    }
    if meta.kind != Kind::Regular {
        return walk.push(shown, size, Err(reason::NOT_REGULAR));
    }
    if size > walk.caps.max_file_bytes {
        return walk.push(shown, size, Err(reason::TOO_LARGE));
    }
    if walk.total + size > walk.caps.max_total_bytes {
        return walk.push(shown, size, Err(reason::LIMIT));
    }
    match tree.read(dir, name, &meta) {
        Ok(Content::Bytes(bytes)) => {
            walk.total += bytes.len() as u64;
            walk.push(shown, size, Ok(Content::Bytes(bytes)));
        }
        Ok(Content::Deferred) => {
            walk.total += size;
            walk.push(shown, size, Ok(Content::Deferred));
        }
        Err(why) => walk.push(shown, size, Err(why)),
    }
}

/// The native tree: the workdir tmpfs, through fds.
struct FdTree<'a> {
    workdir: BorrowedFd<'a>,
    dir: &'a std::path::Path,
    /// `O_PATH` handle of the output directory, from [`Tree::root`].
    handle: Option<OwnedFd>,
}

fn meta_of(stat: &FileStat) -> Meta {
    let kind = match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => Kind::Directory,
        SFlag::S_IFREG => Kind::Regular,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    };
    Meta {
        kind,
        size: stat.st_size.max(0) as u64,
        device: stat.st_dev,
        inode: stat.st_ino,
    }
}

impl Tree for FdTree<'_> {
    type Dir = OwnedFd;

    fn root(&mut self) -> Result<Option<Meta>, &'static str> {
        let Ok(dir) = CString::new(self.dir.as_os_str().as_bytes()) else {
            return Err(reason::UNREADABLE);
        };
        // O_PATH|O_NOFOLLOW opens a final symlink itself, so its type can be told apart from
        // a file (O_DIRECTORY alone would say ENOTDIR for both).
        let handle = match sys::openat2(
            self.workdir.as_raw_fd(),
            &dir,
            libc::O_PATH | libc::O_NOFOLLOW,
            sys::RESOLVE_STRICT,
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(open_failure(errno)),
        };
        let stat = nix::sys::stat::fstat(&handle).map_err(|_| reason::UNREADABLE)?;
        self.handle = Some(handle);
        Ok(Some(meta_of(&stat)))
    }

    fn open_root(&mut self) -> Result<OwnedFd, &'static str> {
        let handle = self.handle.as_ref().ok_or(reason::UNREADABLE)?;
        sys::openat2(handle.as_raw_fd(), c".", OPEN_DIR, sys::RESOLVE_STRICT).map_err(open_failure)
    }

    fn names(&mut self, dir: &OwnedFd) -> Option<Vec<OsString>> {
        // The iterator gets its own fd; `dir` stays for the lookups.
        let mut dir = nix::dir::Dir::from_fd(dir.try_clone().ok()?).ok()?;
        Some(
            dir.iter()
                .filter_map(Result::ok)
                .map(|entry| OsStr::from_bytes(entry.file_name().to_bytes()).to_owned())
                .filter(|name| name != "." && name != "..")
                .collect(),
        )
    }

    fn stat(&mut self, dir: &OwnedFd, name: &OsStr) -> Option<Meta> {
        nix::sys::stat::fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|stat| meta_of(&stat))
    }

    fn open_dir(&mut self, dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, &'static str> {
        let name = CString::new(name.as_bytes()).map_err(|_| reason::UNREADABLE)?;
        sys::openat2(dir.as_raw_fd(), &name, OPEN_DIR, sys::RESOLVE_STRICT).map_err(open_failure)
    }

    fn read(&mut self, dir: &OwnedFd, name: &OsStr, meta: &Meta) -> Result<Content, &'static str> {
        let name = CString::new(name.as_bytes()).map_err(|_| reason::UNREADABLE)?;
        read_file(dir.as_fd(), &name, meta).map(Content::Bytes)
    }
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

/// Open a regular file found by `fstatat` and read exactly its listed size.
fn read_file(dir: BorrowedFd<'_>, name: &CString, seen: &Meta) -> Result<Vec<u8>, &'static str> {
    let fd = sys::openat2(dir.as_raw_fd(), name, OPEN_FILE, sys::RESOLVE_STRICT)
        .map_err(open_failure)?;
    // The same inode as the one stat'ed (nothing runs any more, but check anyway).
    let opened = nix::sys::stat::fstat(&fd).map_err(|_| reason::UNREADABLE)?;
    let opened = meta_of(&opened);
    if opened.kind != Kind::Regular || opened.inode != seen.inode || opened.device != seen.device {
        return Err(reason::NOT_REGULAR);
    }
    let mut bytes = Vec::with_capacity(seen.size as usize);
    std::fs::File::from(fd)
        .take(seen.size)
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
            let dir: OwnedFd = std::fs::File::open(&out).unwrap().into();
            let caps = caps();
            let mut walk = Walk {
                caps: &caps,
                out: Collected::default(),
                total: 0,
                device: nix::sys::stat::fstat(&dir).unwrap().st_dev,
                full: false,
            };
            let workdir = std::fs::File::open(tmp.path()).unwrap();
            let mut tree = FdTree {
                workdir: workdir.as_fd(),
                dir: Path::new("out"),
                handle: None,
            };
            for name in ["gone", "b"] {
                let mut path = name.as_bytes().to_vec();
                visit(&mut tree, &mut walk, &dir, OsStr::new(name), &mut path, 0);
            }
            let walk = walk.out;
            assert_eq!(walk.files[0].skipped.as_deref(), Some(reason::UNREADABLE));
            assert_eq!(content(&walk.files[1]), b"b");
        }
    }
}
