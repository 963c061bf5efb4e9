//! Everything the child needs, computed before clone: the root filesystem plan as a list of
//! operations on NUL-terminated paths, argv/envp arrays, rlimits, ids and open fds. After
//! clone the child only walks these (style rule: "prepare everything before clone").

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::spec::{Network, SANDBOX_ID, Source, ValidSpec, WORKDIR};

/// Host directories bound read-only at the same path (or recreated as the same symlink).
const TOOLCHAIN: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// Host /etc entries a toolchain needs; each is bound read-only when it exists.
const ETC_BINDS: &[&str] = &[
    // The dynamic loader's cache: without it every program start searches the default paths.
    "ld.so.cache",
    // Debian's alternatives symlinks (/usr/bin/awk -> /etc/alternatives/awk -> ...).
    "alternatives",
    // CA certificates (symlinks into /usr/share) for TLS when the network is on.
    "ssl",
    // Debian's Python site configuration (sitecustomize.py links here).
    "python3.11",
    "python3.12",
    "python3.13",
];

/// Directory of the root tmpfs that holds /tmp, the workdir and /dev/shm (mode 0 once they
/// are bound; the root mount is read-only, so nobody can open it up again).
pub const SCRATCH: &str = "/.kakoi-scratch";

/// Inodes of the root tmpfs: the skeleton, /tmp, the workdir and /dev/shm together.
const ROOT_INODES: u32 = 32_768;

/// Device nodes bound from the host /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// PATH inside the sandbox; also where commands without `/` are looked up.
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// One operation of the root filesystem plan.
#[derive(Debug)]
pub enum Op {
    /// mount(2).
    Mount {
        /// Source (device or fs name).
        source: Option<CString>,
        /// Absolute target under the new root.
        target: CString,
        /// Filesystem type.
        fstype: Option<CString>,
        /// MS_* flags.
        flags: libc::c_ulong,
        /// Mount data (tmpfs options).
        data: Option<CString>,
    },
    /// Bind `source` on `target`, then make it read-only, nosuid and nodev (recursively).
    BindReadOnly {
        /// Host path.
        source: CString,
        /// Target under the new root.
        target: CString,
    },
    /// Bind `source` on `target` writable, then make it nosuid and nodev (recursively).
    BindReadWrite {
        /// Host path.
        source: CString,
        /// Target under the new root.
        target: CString,
    },
    /// Bind a device node read-write (a device is neither executable nor setuid, so the
    /// bind needs no extra flags).
    BindDevice {
        /// Host device path.
        source: CString,
        /// Target file under the new root.
        target: CString,
    },
    /// Bind `source` (a path under the new root) on `target`, keeping the source mount's
    /// flags (the scratch directories of the root tmpfs: nosuid, nodev, writable).
    BindScratch {
        /// Directory under the new root.
        source: CString,
        /// Target under the new root.
        target: CString,
    },
    /// chmod(2), for modes the umask would strip (1777) or to close a directory (0).
    Chmod {
        /// Path.
        path: CString,
        /// Mode.
        mode: libc::mode_t,
    },
    /// Set mount attributes (non-recursive) on a mount point.
    SetAttr {
        /// The mount point.
        target: CString,
        /// MOUNT_ATTR_* to set.
        set: u64,
    },
    /// mkdir.
    Mkdir {
        /// Path.
        path: CString,
        /// Mode.
        mode: libc::mode_t,
    },
    /// mkdir of a directory inside the workdir, owned by the sandbox user.
    MkdirOwned {
        /// Path.
        path: CString,
    },
    /// Create an empty file (bind target).
    Touch {
        /// Path.
        path: CString,
    },
    /// symlink.
    Symlink {
        /// Link content.
        target: CString,
        /// Link path.
        link: CString,
    },
    /// Write a small file from prepared bytes.
    WriteFile {
        /// Path.
        path: CString,
        /// Content.
        data: Vec<u8>,
    },
    /// Copy an input file from an open fd and give it to the sandbox user.
    CopyFile {
        /// Source fd, opened by the launcher.
        fd: OwnedFd,
        /// Length to copy.
        len: u64,
        /// Target path.
        path: CString,
    },
}

/// One rlimit: resource, soft, hard.
pub type Rlimit = (libc::__rlimit_resource_t, u64, u64);

/// The prepared plan. Fields are read by the child only.
#[derive(Debug)]
pub struct Prepared {
    /// Host directory the new root tmpfs is mounted on.
    pub root: CString,
    /// Root filesystem operations, in order.
    pub ops: Vec<Op>,
    /// A label per op for error messages (parent side).
    pub op_labels: Vec<String>,
    /// Whether a new network namespace with `lo` is used.
    pub network_namespace: bool,
    /// Workdir inside the sandbox.
    pub workdir: CString,
    /// The workdir's mount point before pivot_root, when the launcher collects returned files:
    /// the child opens it and hands the fd over the report socket.
    pub collect_workdir: Option<CString>,
    /// rlimits (resource, soft, hard) in order.
    pub rlimits: Vec<Rlimit>,
    /// Names of those rlimits, for the result.
    pub rlimit_names: Vec<(String, u64)>,
    /// Whether supplementary groups can be cleared (setgroups allowed: root launcher).
    pub clear_groups: bool,
    /// Program path as the child execs it.
    pub program: CString,
    /// Owned argv strings (kept alive for `argv_ptrs`).
    #[allow(dead_code)]
    pub argv: Vec<CString>,
    /// Owned envp strings (kept alive for `envp_ptrs`).
    #[allow(dead_code)]
    pub envp: Vec<CString>,
    /// Null-terminated pointer arrays into `argv` / `envp`.
    pub argv_ptrs: Vec<*const libc::c_char>,
    /// Null-terminated pointer array into `envp`.
    pub envp_ptrs: Vec<*const libc::c_char>,
    /// fd that becomes the payload's stdin.
    pub stdin: OwnedFd,
    /// Host paths bound read-only into the sandbox (Landlock read+execute rules).
    pub ro_host_paths: Vec<PathBuf>,
    /// Host paths bound writable into the sandbox (Landlock rules with every right).
    pub rw_host_paths: Vec<PathBuf>,
    /// The launcher's argv and environment areas, which the init erases.
    pub launcher_areas: [(usize, usize); 2],
    /// Signals reset to their default disposition for the payload (the launcher's ignored
    /// ones, SIGPIPE included: Rust programs ignore it).
    pub reset_signals: super::sys::SigSet,
}

/// Preparation failures (before anything is cloned).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// An input file could not be opened.
    #[error("cannot open input file {path}")]
    OpenInput {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating an in-memory file failed.
    #[error("cannot create an in-memory file for {what}")]
    Memfd {
        /// For what.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The command was not found in the sandbox PATH.
    #[error(
        "command {name:?} not found in the sandbox PATH ({SANDBOX_PATH}); give an absolute path"
    )]
    CommandNotFound {
        /// The command.
        name: String,
    },
    /// The root mount point could not be created.
    #[error("cannot create the sandbox mount point {path}")]
    MountPoint {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Inputs of [`prepare`] besides the spec.
#[derive(Debug)]
pub struct PrepareContext<'a> {
    /// Host directory the new root is mounted on (must exist).
    pub root: &'a Path,
    /// Whether supplementary groups can be cleared.
    pub clear_groups: bool,
    /// Extra rlimits replacing missing cgroup controllers (memory → AS, pids → NPROC).
    pub fallback_memory: bool,
    /// See `fallback_memory`.
    pub fallback_pids: bool,
    /// The launcher's argv and environment areas (fixed for the process: read once).
    pub launcher_areas: [(usize, usize); 2],
    /// Signals the launcher ignores (read once), reset to default for the payload.
    pub ignored_signals: &'a [libc::c_int],
}

fn cstr(bytes: &[u8]) -> CString {
    // Validation already refused NUL bytes in user input; host paths cannot hold them.
    CString::new(bytes).expect("no NUL bytes in a validated path")
}

fn path_c(p: &Path) -> CString {
    cstr(p.as_os_str().as_bytes())
}

struct Plan {
    root: PathBuf,
    ro_host_paths: Vec<PathBuf>,
    rw_host_paths: Vec<PathBuf>,
    ops: Vec<Op>,
    labels: Vec<String>,
}

impl Plan {
    fn at(&self, sandbox_path: &str) -> CString {
        let mut p = self.root.as_os_str().as_bytes().to_vec();
        p.extend_from_slice(sandbox_path.as_bytes());
        cstr(&p)
    }

    fn push(&mut self, label: String, op: Op) {
        self.labels.push(label);
        self.ops.push(op);
    }

    fn mkdir(&mut self, path: &str, mode: libc::mode_t) {
        let op = Op::Mkdir {
            path: self.at(path),
            mode,
        };
        self.push(format!("mkdir {path}"), op);
    }

    fn chmod(&mut self, path: &str, mode: libc::mode_t) {
        let op = Op::Chmod {
            path: self.at(path),
            mode,
        };
        self.push(format!("chmod {mode:o} {path}"), op);
    }

    /// `path` becomes a writable view of the root tmpfs's `SCRATCH/<name>` directory.
    fn scratch(&mut self, name: &str, path: &str, mode: libc::mode_t) {
        let dir = format!("{SCRATCH}/{name}");
        self.mkdir(&dir, mode);
        self.chmod(&dir, mode);
        self.mkdir(path, 0o755);
        let op = Op::BindScratch {
            source: self.at(&dir),
            target: self.at(path),
        };
        self.push(format!("scratch bind {dir} -> {path}"), op);
    }

    fn bind_ro(&mut self, host: &Path, sandbox: &str) {
        self.ro_host_paths.push(host.to_path_buf());
        let op = Op::BindReadOnly {
            source: path_c(host),
            target: self.at(sandbox),
        };
        self.push(
            format!("read-only bind {} -> {sandbox}", host.display()),
            op,
        );
    }

    fn bind_rw(&mut self, host: &Path, sandbox: &str) {
        self.rw_host_paths.push(host.to_path_buf());
        let op = Op::BindReadWrite {
            source: path_c(host),
            target: self.at(sandbox),
        };
        self.push(format!("writable bind {} -> {sandbox}", host.display()), op);
    }

    /// mkdir -p of every missing parent of `sandbox` (tracked in `made`).
    fn mkdir_parents(&mut self, sandbox: &Path, made: &mut Vec<PathBuf>) {
        let mut acc = PathBuf::from("/");
        let parents: Vec<_> = sandbox
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
            .collect();
        for c in parents {
            if let std::path::Component::Normal(part) = c {
                acc.push(part);
                if !made.contains(&acc) {
                    made.push(acc.clone());
                    let s = acc.to_string_lossy().into_owned();
                    self.mkdir(&s, 0o755);
                }
            }
        }
    }
}

/// Build the plan for one run.
pub fn prepare(spec: &ValidSpec, ctx: &PrepareContext<'_>) -> Result<Prepared, PrepareError> {
    let mut plan = Plan {
        root: ctx.root.to_path_buf(),
        ro_host_paths: Vec::new(),
        rw_host_paths: Vec::new(),
        ops: Vec::with_capacity(64),
        labels: Vec::with_capacity(64),
    };
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    // The new root: ONE tmpfs for the whole run (a new superblock is the costly part of a
    // mount). Its own mount becomes read-only after pivot_root; /tmp, the workdir and
    // /dev/shm are writable bind mounts of its scratch directories, so the three share its
    // size cap (memory is capped by the cgroup anyway), and the scratch directory itself is
    // closed (mode 0) once bound.
    let size = spec.tmp_size;
    let data = format!("size={size},nr_inodes={ROOT_INODES},mode=0755");
    let op = Op::Mount {
        source: Some(cstr(b"tmpfs")),
        target: path_c(ctx.root),
        fstype: Some(cstr(b"tmpfs")),
        flags: nosuid_nodev,
        data: Some(cstr(data.as_bytes())),
    };
    plan.push(format!("tmpfs on the new root ({data})"), op);
    plan.mkdir(SCRATCH, 0o700);

    // Toolchain: bind real directories, recreate symlinks (merged /usr).
    for dir in TOOLCHAIN {
        let host = Path::new(dir);
        match std::fs::symlink_metadata(host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(host) {
                    let op = Op::Symlink {
                        target: path_c(&target),
                        link: plan.at(dir),
                    };
                    plan.push(format!("symlink {dir} -> {}", target.display()), op);
                }
            }
            Ok(meta) if meta.is_dir() => {
                plan.mkdir(dir, 0o755);
                plan.bind_ro(host, dir);
            }
            _ => {}
        }
    }

    // /etc: generated identity files plus the host entries the toolchain reads.
    plan.mkdir("/etc", 0o755);
    for (name, content) in etc_files(spec.network) {
        let op = Op::WriteFile {
            path: plan.at(&format!("/etc/{name}")),
            data: content.into_bytes(),
        };
        plan.push(format!("write /etc/{name}"), op);
    }
    if let Ok(target) = std::fs::read_link("/etc/localtime") {
        let op = Op::Symlink {
            target: path_c(&target),
            link: plan.at("/etc/localtime"),
        };
        plan.push("symlink /etc/localtime".into(), op);
    }
    for name in ETC_BINDS {
        let host = Path::new("/etc").join(name);
        let Ok(meta) = std::fs::metadata(&host) else {
            continue;
        };
        let sandbox = format!("/etc/{name}");
        if meta.is_dir() {
            plan.mkdir(&sandbox, 0o755);
        } else {
            let op = Op::Touch {
                path: plan.at(&sandbox),
            };
            plan.push(format!("create {sandbox}"), op);
        }
        plan.bind_ro(&host, &sandbox);
    }

    // Writable scratch space: /tmp and the workdir (owned by the sandbox user, who creates
    // everything on this tmpfs).
    plan.scratch("tmp", "/tmp", 0o1777);
    plan.scratch("work", WORKDIR, 0o755);
    let mut made_dirs: Vec<PathBuf> = Vec::new();
    let workdir = Path::new(WORKDIR);
    for file in &spec.files {
        let dest = workdir.join(&file.dest);
        let mut acc = workdir.to_path_buf();
        let comps: Vec<_> = file
            .dest
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
            .collect();
        for c in comps {
            acc.push(c);
            if !made_dirs.contains(&acc) {
                made_dirs.push(acc.clone());
                let op = Op::MkdirOwned {
                    path: plan.at(&acc.to_string_lossy()),
                };
                plan.push(format!("mkdir {}", acc.display()), op);
            }
        }
        let (fd, len) = open_source(&file.source, &file.dest.to_string_lossy())?;
        let op = Op::CopyFile {
            fd,
            len,
            path: plan.at(&dest.to_string_lossy()),
        };
        plan.push(format!("copy input file {}", dest.display()), op);
    }
    // The output directory exists when the payload starts (`savefig("out/plot.png")` works
    // without a makedirs), owned by the sandbox user, unless an input file took its place.
    if let Some(collect) = &spec.collect
        && !spec.files.iter().any(|f| f.dest == collect.dir)
    {
        let mut acc = workdir.to_path_buf();
        for c in collect.dir.components() {
            acc.push(c);
            if !made_dirs.contains(&acc) {
                made_dirs.push(acc.clone());
                let op = Op::MkdirOwned {
                    path: plan.at(&acc.to_string_lossy()),
                };
                plan.push(format!("mkdir {}", acc.display()), op);
            }
        }
    }

    // A new /proc for the new pid namespace. Mounted before the old root is detached: the
    // kernel only allows a proc mount in a user namespace while a fully visible one exists.
    plan.mkdir("/proc", 0o555);
    let op = Op::Mount {
        source: Some(cstr(b"proc")),
        target: plan.at("/proc"),
        fstype: Some(cstr(b"proc")),
        flags: nosuid_nodev | libc::MS_NOEXEC,
        data: None,
    };
    plan.push("mount /proc".into(), op);

    // Minimal /dev on the (read-only) root: a few bound device nodes, the usual symlinks, a
    // fresh /dev/shm.
    plan.mkdir("/dev", 0o755);
    for dev in DEVICES {
        let sandbox = format!("/dev/{dev}");
        let op = Op::Touch {
            path: plan.at(&sandbox),
        };
        plan.push(format!("create {sandbox}"), op);
        let op = Op::BindDevice {
            source: cstr(sandbox.as_bytes()),
            target: plan.at(&sandbox),
        };
        plan.push(format!("bind device {sandbox}"), op);
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let op = Op::Symlink {
            target: cstr(target.as_bytes()),
            link: plan.at(&format!("/dev/{link}")),
        };
        plan.push(format!("symlink /dev/{link}"), op);
    }
    plan.scratch("shm", "/dev/shm", 0o1777);
    let op = Op::SetAttr {
        target: plan.at("/dev/shm"),
        set: super::sys::MOUNT_ATTR_NOEXEC,
    };
    plan.push("make /dev/shm noexec".into(), op);
    // Everything is bound: nobody walks the scratch directory under its own name.
    plan.chmod(SCRATCH, 0);

    // Operator binds last, so they cannot be shadowed by the skeleton.
    let mut made: Vec<PathBuf> = vec!["/usr".into(), "/etc".into(), "/tmp".into()];
    let binds = spec.binds_ro.iter().map(|b| (b, false));
    for (bind, writable) in binds.chain(spec.binds_rw.iter().map(|b| (b, true))) {
        plan.mkdir_parents(&bind.sandbox, &mut made);
        let sandbox = bind.sandbox.to_string_lossy().into_owned();
        if bind.host.is_dir() {
            plan.mkdir(&sandbox, 0o755);
        } else {
            let op = Op::Touch {
                path: plan.at(&sandbox),
            };
            plan.push(format!("create {sandbox}"), op);
        }
        if writable {
            plan.bind_rw(&bind.host, &sandbox);
        } else {
            plan.bind_ro(&bind.host, &sandbox);
        }
    }

    let program = resolve_program(&spec.argv[0])?;
    let argv: Vec<CString> = spec.argv.iter().map(|a| cstr(a.as_bytes())).collect();
    let envp: Vec<CString> = environment(spec)
        .into_iter()
        .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
        .collect();
    let argv_ptrs = pointers(&argv);
    let envp_ptrs = pointers(&envp);

    let stdin = match &spec.stdin {
        None => File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|source| PrepareError::OpenInput {
                path: "/dev/null".into(),
                source,
            })?,
        Some(source) => open_stdin(source)?,
    };

    let (rlimits, rlimit_names) = rlimits(spec, ctx);
    let collect_workdir = spec.collect.as_ref().map(|_| plan.at(WORKDIR));
    Ok(Prepared {
        root: path_c(ctx.root),
        ops: plan.ops,
        op_labels: plan.labels,
        network_namespace: spec.network == Network::None,
        workdir: cstr(WORKDIR.as_bytes()),
        collect_workdir,
        rlimits,
        rlimit_names,
        clear_groups: ctx.clear_groups,
        program,
        argv,
        envp,
        argv_ptrs,
        envp_ptrs,
        stdin,
        ro_host_paths: plan.ro_host_paths,
        rw_host_paths: plan.rw_host_paths,
        launcher_areas: ctx.launcher_areas,
        reset_signals: super::sys::SigSet::of(ctx.ignored_signals),
    })
}

/// `arg_start..arg_end` and `env_start..env_end` of this process (proc(5), /proc/pid/stat
/// fields 48-51), or zeros when the kernel does not say.
pub fn launcher_areas() -> [(usize, usize); 2] {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return [(0, 0); 2];
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return [(0, 0); 2];
    };
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let fields: Vec<usize> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
    [(field(48), field(49)), (field(50), field(51))]
}

impl Prepared {
    /// The stdin fd (raw, for the child).
    pub fn stdin_raw(&self) -> RawFd {
        self.stdin.as_raw_fd()
    }
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The identity files written into the sandbox's /etc. With the host's network the
/// resolver files are the host's (read now, written as copies: nothing else of /etc shows).
fn etc_files(network: Network) -> Vec<(&'static str, String)> {
    let id = SANDBOX_ID;
    let host_file = |name: &str| std::fs::read_to_string(Path::new("/etc").join(name)).ok();
    let (hosts, resolv) = match network {
        Network::Host => (
            host_file("hosts").unwrap_or_else(|| LOCAL_HOSTS.into()),
            host_file("resolv.conf").unwrap_or_default(),
        ),
        Network::None => (LOCAL_HOSTS.into(), String::new()),
    };
    vec![
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                 sandbox:x:{id}:{id}:sandbox:{WORKDIR}:/bin/sh\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        (
            "group",
            format!("root:x:0:\nsandbox:x:{id}:\nnogroup:x:65534:\n"),
        ),
        ("hostname", "sandbox\n".into()),
        ("hosts", hosts),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n".into(),
        ),
        ("resolv.conf", resolv),
    ]
}

/// `/etc/hosts` of a sandbox without the host's network.
const LOCAL_HOSTS: &str =
    "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// The payload's environment: a small fixed base, then the request's variables.
fn environment(spec: &ValidSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("PATH", SANDBOX_PATH),
        ("HOME", WORKDIR),
        ("TMPDIR", "/tmp"),
        ("LANG", "C.UTF-8"),
        ("USER", "sandbox"),
        ("LOGNAME", "sandbox"),
        ("HOSTNAME", "sandbox"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in &spec.env {
        match env.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

/// Look a command up in the sandbox PATH. The toolchain is bound at the same paths, so the
/// host's view of those directories is the sandbox's.
fn resolve_program(program: &OsStr) -> Result<CString, PrepareError> {
    if program.as_bytes().contains(&b'/') {
        return Ok(cstr(program.as_bytes()));
    }
    for dir in SANDBOX_PATH.split(':') {
        let candidate = Path::new(dir).join(program);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt as _;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(path_c(&candidate));
            }
        }
    }
    Err(PrepareError::CommandNotFound {
        name: program.to_string_lossy().into_owned(),
    })
}

/// The payload's stdin: always a sealed in-memory copy, never a host file. A host fd as
/// stdin would let the payload reopen `/proc/self/fd/0` (read-write, if the file's mode
/// allows it and Landlock is off) and would show the host path through its link.
fn open_stdin(source: &Source) -> Result<OwnedFd, PrepareError> {
    let memfd_err = |source| PrepareError::Memfd {
        what: "stdin".to_owned(),
        source,
    };
    let fd = nix::sys::memfd::memfd_create(
        c"kakoi-stdin",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| memfd_err(e.into()))?;
    let mut memfd = File::from(fd);
    match source {
        Source::Bytes(bytes) => memfd.write_all(bytes).map_err(memfd_err)?,
        Source::Path(_) => {
            let (input, _) = open_source(source, "stdin")?;
            std::io::copy(&mut File::from(input), &mut memfd).map_err(memfd_err)?;
        }
    }
    nix::unistd::lseek(&memfd, 0, nix::unistd::Whence::SeekSet).map_err(|e| memfd_err(e.into()))?;
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_SEAL;
    fcntl(&memfd, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| memfd_err(e.into()))?;
    // The payload gets a read-only open of it (a new file description at offset 0).
    let read_only =
        File::open(format!("/proc/self/fd/{}", memfd.as_raw_fd())).map_err(memfd_err)?;
    Ok(read_only.into())
}

/// Open an input: a host file with the launcher's permissions, or bytes in a memfd.
fn open_source(source: &Source, what: &str) -> Result<(OwnedFd, u64), PrepareError> {
    match source {
        Source::Path(path) => {
            let file = File::open(path).map_err(|source| PrepareError::OpenInput {
                path: path.clone(),
                source,
            })?;
            let meta = file.metadata().map_err(|source| PrepareError::OpenInput {
                path: path.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(PrepareError::OpenInput {
                    path: path.clone(),
                    source: std::io::Error::other("not a regular file"),
                });
            }
            Ok((file.into(), meta.len()))
        }
        Source::Bytes(bytes) => {
            let memfd_err = |source| PrepareError::Memfd {
                what: what.to_owned(),
                source,
            };
            let fd = nix::sys::memfd::memfd_create(
                c"kakoi-input",
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )
            .map_err(|e| memfd_err(e.into()))?;
            let mut file = File::from(fd);
            file.write_all(bytes).map_err(memfd_err)?;
            nix::unistd::lseek(&file, 0, nix::unistd::Whence::SeekSet)
                .map_err(|e| memfd_err(e.into()))?;
            Ok((file.into(), bytes.len() as u64))
        }
    }
}

fn rlimits(spec: &ValidSpec, ctx: &PrepareContext<'_>) -> (Vec<Rlimit>, Vec<(String, u64)>) {
    let mut list = vec![
        (libc::RLIMIT_CORE, 0, 0, "core"),
        (libc::RLIMIT_NOFILE, spec.nofile, spec.nofile, "nofile"),
        (libc::RLIMIT_FSIZE, spec.tmp_size, spec.tmp_size, "fsize"),
    ];
    if let Some(cpu) = spec.cpu_time {
        let secs = cpu.as_secs().max(1);
        // The soft limit sends SIGXCPU (reported as cpu_timeout); the hard limit a second
        // later is SIGKILL for programs that catch SIGXCPU.
        list.push((libc::RLIMIT_CPU, secs, secs + 1, "cpu"));
    }
    if ctx.fallback_memory {
        list.push((libc::RLIMIT_AS, spec.memory, spec.memory, "as"));
    }
    if ctx.fallback_pids {
        list.push((libc::RLIMIT_NPROC, spec.pids, spec.pids, "nproc"));
    }
    let names = list
        .iter()
        .map(|(_, s, _, n)| (n.to_string(), *s))
        .collect();
    (
        list.into_iter().map(|(r, s, h, _)| (r, s, h)).collect(),
        names,
    )
}
