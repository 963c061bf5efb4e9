//! What to run and under which limits: a raw, serde-friendly [`RunSpec`] and the immutable
//! [`ValidSpec`] that [`RunSpec::validate`] produces. Only a `ValidSpec` reaches the sandbox.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default wall-clock timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default memory limit (swap is always zero).
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Default maximum number of tasks.
pub const DEFAULT_PIDS: u64 = 64;
/// Default CPU bandwidth: one core.
pub const DEFAULT_CPUS: f64 = 1.0;
/// Default cap per output stream.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 1 << 20;
/// Default size of the sandbox's tmpfs (/tmp, the workdir and /dev/shm together).
pub const DEFAULT_TMP_SIZE: u64 = 64 << 20;
/// Default RLIMIT_NOFILE.
pub const DEFAULT_NOFILE: u64 = 256;
/// Default output directory collected after a run, relative to the workdir.
pub const DEFAULT_COLLECT_DIR: &str = "out";
/// Default cap on the number of entries [`Collect`] returns.
pub const DEFAULT_COLLECT_FILES: usize = 64;
/// Default cap on the bytes [`Collect`] returns, all files together (10 MiB).
pub const DEFAULT_COLLECT_BYTES: u64 = 10 << 20;
/// Deepest directory level [`Collect`] descends into (`out/a/b/...`, `out` itself is 0).
pub const COLLECT_MAX_DEPTH: usize = 16;

/// Where the workdir is mounted inside the sandbox.
pub const WORKDIR: &str = "/work";
/// uid and gid of the payload inside the sandbox.
pub const SANDBOX_ID: u32 = 1000;

/// Network policy of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A new network namespace with only `lo`, up.
    #[default]
    None,
    /// The host's network namespace (no network isolation at all).
    Host,
}

/// Resource limits of a run. `None` fields take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock timeout in seconds.
    pub timeout: Option<f64>,
    /// CPU time limit per process in seconds (RLIMIT_CPU).
    pub cpu_time: Option<f64>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
    /// CPU bandwidth in cores (0.5 = half a core).
    pub cpus: Option<f64>,
    /// Cap per output stream in bytes.
    pub output_limit: Option<u64>,
    /// Size of the sandbox's writable space in bytes: /tmp, the workdir and /dev/shm
    /// together (one tmpfs), and the largest file (RLIMIT_FSIZE).
    pub tmp_size: Option<u64>,
    /// Maximum number of open files per process.
    pub nofile: Option<u64>,
}

/// Where an input file comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A file on the host, opened by the launcher with its own permissions.
    Path(PathBuf),
    /// Bytes given in the request.
    Bytes(Vec<u8>),
}

/// A file copied into the workdir before the payload starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// The content.
    pub source: Source,
    /// Path relative to the workdir.
    pub dest: PathBuf,
}

/// A bind of a host path into the sandbox (read-only in [`RunSpec::binds_ro`], writable in
/// [`RunSpec::binds_rw`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    /// Host path.
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub sandbox: PathBuf,
}

/// The historical name of [`Bind`].
pub type BindRo = Bind;

/// Files to return after the run: what the payload left under `dir` in its workdir.
///
/// The launcher walks the directory after every process of the run is gone (nothing can race
/// it), never follows a symlink, never leaves the workdir's filesystem, reads regular files
/// only and stops at the caps; see [`crate::result::OutputFile`] for what each entry says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Collect {
    /// Directory relative to the workdir (default `out`).
    pub dir: PathBuf,
    /// Most entries returned (default 64); more are cut off with one `limit` entry.
    pub max_files: usize,
    /// Most content bytes returned, all files together (default 10 MiB).
    pub max_total_bytes: u64,
    /// Largest single file returned (default 10 MiB; never more than `max_total_bytes`).
    pub max_file_bytes: u64,
}

impl Default for Collect {
    fn default() -> Self {
        Collect {
            dir: PathBuf::from(DEFAULT_COLLECT_DIR),
            max_files: DEFAULT_COLLECT_FILES,
            max_total_bytes: DEFAULT_COLLECT_BYTES,
            max_file_bytes: DEFAULT_COLLECT_BYTES,
        }
    }
}

/// A request to run one command. Build it directly or with [`RunSpec::command`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSpec {
    /// Program and arguments. A program without `/` is looked up in the sandbox's PATH.
    pub argv: Vec<OsString>,
    /// Extra environment variables (added to the sandbox's small default environment).
    pub env: Vec<(String, String)>,
    /// Limits.
    pub limits: Limits,
    /// Standard input; `None` is `/dev/null`.
    pub stdin: Option<Source>,
    /// Files placed in the workdir.
    pub files: Vec<InputFile>,
    /// Extra read-only binds.
    pub binds_ro: Vec<Bind>,
    /// Extra writable binds (for example an environment's staging directory and the uv
    /// cache while an environment is built). Landlock grants write access beneath them.
    pub binds_rw: Vec<Bind>,
    /// Network policy.
    pub network: Network,
    /// Files to return after the run (`None`: none).
    pub collect: Option<Collect>,
}

impl RunSpec {
    /// A spec running `argv` with default limits.
    pub fn command<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        RunSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            ..RunSpec::default()
        }
    }

    /// Check every field and produce the immutable spec the sandbox runs.
    pub fn validate(&self) -> Result<ValidSpec, SpecError> {
        let Some(program) = self.argv.first() else {
            return Err(SpecError::EmptyCommand);
        };
        if program.is_empty() {
            return Err(SpecError::EmptyCommand);
        }
        for arg in &self.argv {
            if arg.as_bytes().contains(&0) {
                return Err(SpecError::Nul { what: "argument" });
            }
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(SpecError::EnvKey { key: key.clone() });
            }
            if value.contains('\0') {
                return Err(SpecError::Nul {
                    what: "environment value",
                });
            }
        }
        let l = &self.limits;
        let timeout = seconds("timeout", l.timeout, DEFAULT_TIMEOUT, 0.001, 86_400.0)?;
        let cpu_time = match l.cpu_time {
            None => None,
            Some(s) => Some(seconds(
                "cpu-time",
                Some(s),
                DEFAULT_TIMEOUT,
                1.0,
                86_400.0,
            )?),
        };
        let memory = range(
            "memory",
            l.memory.unwrap_or(DEFAULT_MEMORY),
            4 << 20,
            1 << 44,
        )?;
        let pids = range("pids", l.pids.unwrap_or(DEFAULT_PIDS), 1, 1 << 22)?;
        let cpus = l.cpus.unwrap_or(DEFAULT_CPUS);
        if !(cpus.is_finite() && (0.01..=4096.0).contains(&cpus)) {
            return Err(SpecError::Range {
                what: "cpus",
                value: cpus.to_string(),
                min: "0.01".into(),
                max: "4096".into(),
            });
        }
        let output_limit = range(
            "output-limit",
            l.output_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT),
            0,
            1 << 32,
        )?;
        let tmp_size = range(
            "tmp-size",
            l.tmp_size.unwrap_or(DEFAULT_TMP_SIZE),
            1 << 20,
            1 << 40,
        )?;
        let nofile = range("nofile", l.nofile.unwrap_or(DEFAULT_NOFILE), 16, 1 << 20)?;

        let mut files = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let dest = relative_dest(&file.dest)?;
            if files.iter().any(|f: &InputFile| f.dest == dest) {
                return Err(SpecError::DuplicateDest { dest });
            }
            files.push(InputFile {
                source: file.source.clone(),
                dest,
            });
        }
        let mut binds_ro = Vec::with_capacity(self.binds_ro.len());
        for bind in &self.binds_ro {
            binds_ro.push(validate_bind(bind)?);
        }
        let mut binds_rw = Vec::with_capacity(self.binds_rw.len());
        for bind in &self.binds_rw {
            binds_rw.push(validate_bind(bind)?);
        }
        for (i, a) in binds_ro.iter().chain(&binds_rw).enumerate() {
            if binds_ro
                .iter()
                .chain(&binds_rw)
                .skip(i + 1)
                .any(|b| b.sandbox == a.sandbox)
            {
                return Err(SpecError::BindTarget {
                    path: a.sandbox.clone(),
                    reason: "is the target of two binds",
                });
            }
        }
        let collect = match &self.collect {
            None => None,
            Some(c) => Some(validate_collect(c)?),
        };
        Ok(ValidSpec {
            argv: self.argv.clone(),
            env: self.env.clone(),
            timeout,
            cpu_time,
            memory,
            pids,
            cpu_millicores: (cpus * 1000.0).round() as u64,
            output_limit,
            tmp_size,
            nofile,
            stdin: self.stdin.clone(),
            files,
            binds_ro,
            binds_rw,
            network: self.network,
            collect,
        })
    }
}

/// A validated, immutable run request. Produced only by [`RunSpec::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    /// Program and arguments (non-empty, no NUL).
    pub argv: Vec<OsString>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Wall-clock timeout.
    pub timeout: Duration,
    /// RLIMIT_CPU, if any.
    pub cpu_time: Option<Duration>,
    /// Memory limit in bytes.
    pub memory: u64,
    /// Task limit.
    pub pids: u64,
    /// CPU bandwidth in thousandths of a core.
    pub cpu_millicores: u64,
    /// Cap per output stream.
    pub output_limit: u64,
    /// Size of the sandbox's tmpfs (/tmp, the workdir and /dev/shm together).
    pub tmp_size: u64,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// Standard input.
    pub stdin: Option<Source>,
    /// Input files with normalized relative destinations.
    pub files: Vec<InputFile>,
    /// Read-only binds with canonical host paths.
    pub binds_ro: Vec<Bind>,
    /// Writable binds with canonical host paths.
    pub binds_rw: Vec<Bind>,
    /// Network policy.
    pub network: Network,
    /// Files to return, with a normalized relative directory and consistent caps.
    pub collect: Option<Collect>,
}

/// Why a [`RunSpec`] was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// No program was given.
    #[error("no command given")]
    EmptyCommand,
    /// A string holds a NUL byte.
    #[error("{what} contains a NUL byte")]
    Nul {
        /// Which field.
        what: &'static str,
    },
    /// An environment variable name is not valid.
    #[error("invalid environment variable name {key:?}")]
    EnvKey {
        /// The name.
        key: String,
    },
    /// A limit is out of range.
    #[error("{what} {value} is out of range ({min}..={max})")]
    Range {
        /// Which limit.
        what: &'static str,
        /// The given value.
        value: String,
        /// Smallest accepted value.
        min: String,
        /// Largest accepted value.
        max: String,
    },
    /// A workdir destination escapes the workdir or is empty.
    #[error("file destination {dest:?} must be a relative path inside the workdir without '..'")]
    BadDest {
        /// The destination.
        dest: PathBuf,
    },
    /// Two files have the same destination.
    #[error("two input files have the destination {dest:?}")]
    DuplicateDest {
        /// The destination.
        dest: PathBuf,
    },
    /// A bind's host path does not exist.
    #[error("bind source {path:?} does not exist or cannot be resolved")]
    BindSource {
        /// The host path.
        path: PathBuf,
    },
    /// The collect directory escapes the workdir or is empty.
    #[error("collect directory {dir:?} must be a relative path inside the workdir without '..'")]
    BadCollectDir {
        /// The directory.
        dir: PathBuf,
    },
    /// A bind's sandbox path is not acceptable.
    #[error("bind target {path:?} {reason}")]
    BindTarget {
        /// The sandbox path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
}

fn seconds(
    what: &'static str,
    value: Option<f64>,
    default: Duration,
    min: f64,
    max: f64,
) -> Result<Duration, SpecError> {
    let Some(value) = value else {
        return Ok(default);
    };
    if !(value.is_finite() && (min..=max).contains(&value)) {
        return Err(SpecError::Range {
            what,
            value: value.to_string(),
            min: min.to_string(),
            max: max.to_string(),
        });
    }
    Ok(Duration::from_secs_f64(value))
}

/// Largest `collect.max_files`.
const COLLECT_FILES_MAX: u64 = 100_000;
/// Largest `collect.max_total_bytes` (results carry the bytes in memory, base64).
const COLLECT_BYTES_MAX: u64 = 1 << 30;

fn validate_collect(c: &Collect) -> Result<Collect, SpecError> {
    let dir = relative_dest(&c.dir).map_err(|_| SpecError::BadCollectDir { dir: c.dir.clone() })?;
    let max_files = range(
        "collect.max-files",
        c.max_files as u64,
        1,
        COLLECT_FILES_MAX,
    )?;
    let max_total_bytes = range(
        "collect.max-total-bytes",
        c.max_total_bytes,
        0,
        COLLECT_BYTES_MAX,
    )?;
    let max_file_bytes = range(
        "collect.max-file-bytes",
        c.max_file_bytes,
        0,
        COLLECT_BYTES_MAX,
    )?;
    Ok(Collect {
        dir,
        max_files: max_files as usize,
        max_total_bytes,
        max_file_bytes: max_file_bytes.min(max_total_bytes),
    })
}

fn range(what: &'static str, value: u64, min: u64, max: u64) -> Result<u64, SpecError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(SpecError::Range {
            what,
            value: value.to_string(),
            min: min.to_string(),
            max: max.to_string(),
        })
    }
}

/// Normalize a workdir destination: relative, no `..`, no root, not empty.
fn relative_dest(dest: &Path) -> Result<PathBuf, SpecError> {
    let mut out = PathBuf::new();
    for component in dest.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return Err(SpecError::BadDest { dest: dest.into() }),
        }
    }
    if out.as_os_str().is_empty() || out.as_os_str().as_bytes().contains(&0) {
        return Err(SpecError::BadDest { dest: dest.into() });
    }
    Ok(out)
}

/// Sandbox paths a bind may not cover: the skeleton kakoi builds itself.
const RESERVED_TARGETS: &[&str] = &[
    "/",
    "/proc",
    "/dev",
    "/tmp",
    "/etc",
    WORKDIR,
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/.kakoi-scratch",
];

fn validate_bind(bind: &Bind) -> Result<Bind, SpecError> {
    let host = std::fs::canonicalize(&bind.host).map_err(|_| SpecError::BindSource {
        path: bind.host.clone(),
    })?;
    let target = &bind.sandbox;
    if !target.is_absolute() {
        return Err(SpecError::BindTarget {
            path: target.clone(),
            reason: "must be absolute",
        });
    }
    let mut normal = PathBuf::from("/");
    for component in target.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => normal.push(part),
            _ => {
                return Err(SpecError::BindTarget {
                    path: target.clone(),
                    reason: "must not contain '..'",
                });
            }
        }
    }
    let reserved = normal == Path::new("/")
        || RESERVED_TARGETS
            .iter()
            .any(|r| *r != "/" && normal.starts_with(r));
    if reserved {
        return Err(SpecError::BindTarget {
            path: target.clone(),
            reason: "is reserved by the sandbox layout (/, /proc, /dev, /tmp, /etc, /work, /usr, /bin, /sbin, /lib*)",
        });
    }
    Ok(Bind {
        host,
        sandbox: normal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec::command(["/bin/true"])
    }

    #[test]
    fn defaults_match_the_design() {
        let v = spec().validate().unwrap();
        assert_eq!(v.timeout, Duration::from_secs(10));
        assert_eq!(v.memory, 256 << 20);
        assert_eq!(v.pids, 64);
        assert_eq!(v.cpu_millicores, 1000);
        assert_eq!(v.output_limit, 1 << 20);
        assert_eq!(v.tmp_size, 64 << 20);
        assert_eq!(v.network, Network::None);
    }

    #[test]
    fn empty_command_is_refused() {
        assert_eq!(RunSpec::default().validate(), Err(SpecError::EmptyCommand));
        assert_eq!(
            RunSpec::command([""]).validate(),
            Err(SpecError::EmptyCommand)
        );
    }

    #[test]
    fn limits_out_of_range_name_the_limit() {
        let mut s = spec();
        s.limits.timeout = Some(0.0);
        assert!(matches!(
            s.validate(),
            Err(SpecError::Range {
                what: "timeout",
                ..
            })
        ));
        let mut s = spec();
        s.limits.timeout = Some(f64::NAN);
        assert!(matches!(
            s.validate(),
            Err(SpecError::Range {
                what: "timeout",
                ..
            })
        ));
        let mut s = spec();
        s.limits.memory = Some(1024);
        assert!(matches!(
            s.validate(),
            Err(SpecError::Range { what: "memory", .. })
        ));
        let mut s = spec();
        s.limits.pids = Some(0);
        assert!(matches!(
            s.validate(),
            Err(SpecError::Range { what: "pids", .. })
        ));
        let mut s = spec();
        s.limits.cpus = Some(-1.0);
        assert!(matches!(
            s.validate(),
            Err(SpecError::Range { what: "cpus", .. })
        ));
    }

    #[test]
    fn env_names_and_nul_bytes_are_checked() {
        let mut s = spec();
        s.env.push(("A=B".into(), "x".into()));
        assert!(matches!(s.validate(), Err(SpecError::EnvKey { .. })));
        let mut s = spec();
        s.env.push(("A".into(), "x\0y".into()));
        assert!(matches!(s.validate(), Err(SpecError::Nul { .. })));
        let mut s = spec();
        s.argv.push(OsString::from("a\0b"));
        assert!(matches!(s.validate(), Err(SpecError::Nul { .. })));
    }

    #[test]
    fn file_destinations_stay_in_the_workdir() {
        for bad in ["../x", "/etc/passwd", "", ".", "a/../../b"] {
            let mut s = spec();
            s.files.push(InputFile {
                source: Source::Bytes(vec![]),
                dest: bad.into(),
            });
            assert!(
                matches!(s.validate(), Err(SpecError::BadDest { .. })),
                "{bad:?} accepted"
            );
        }
        let mut s = spec();
        s.files.push(InputFile {
            source: Source::Bytes(vec![]),
            dest: "./data//x.csv".into(),
        });
        assert_eq!(
            s.validate().unwrap().files[0].dest,
            PathBuf::from("data/x.csv")
        );
        s.files.push(InputFile {
            source: Source::Bytes(vec![1]),
            dest: "data/x.csv".into(),
        });
        assert!(matches!(s.validate(), Err(SpecError::DuplicateDest { .. })));
    }

    #[test]
    fn collect_is_validated_and_normalized() {
        let mut s = spec();
        s.collect = Some(Collect::default());
        let c = s.validate().unwrap().collect.unwrap();
        assert_eq!(c.dir, PathBuf::from("out"));
        assert_eq!(
            (c.max_files, c.max_total_bytes, c.max_file_bytes),
            (64, 10 << 20, 10 << 20)
        );
        for bad in ["../out", "/work/out", "", ".", "out/../../x"] {
            s.collect = Some(Collect {
                dir: bad.into(),
                ..Collect::default()
            });
            assert!(
                matches!(s.validate(), Err(SpecError::BadCollectDir { .. })),
                "{bad:?} accepted"
            );
        }
        s.collect = Some(Collect {
            dir: "./results//png".into(),
            max_total_bytes: 1000,
            ..Collect::default()
        });
        let c = s.validate().unwrap().collect.unwrap();
        assert_eq!(c.dir, PathBuf::from("results/png"));
        // The per-file cap never exceeds the total.
        assert_eq!(c.max_file_bytes, 1000);
        s.collect = Some(Collect {
            max_files: 0,
            ..Collect::default()
        });
        assert!(matches!(
            s.validate(),
            Err(SpecError::Range {
                what: "collect.max-files",
                ..
            })
        ));
        assert!(serde_json::from_str::<Collect>(r#"{"dir": "plots", "bogus": 1}"#).is_err());
        let parsed: Collect = serde_json::from_str(r#"{"max_files": 3}"#).unwrap();
        assert_eq!(parsed.dir, PathBuf::from("out"));
        assert_eq!(parsed.max_files, 3);
        assert_eq!(parsed.max_file_bytes, DEFAULT_COLLECT_BYTES);
    }

    #[test]
    fn binds_cannot_cover_the_skeleton() {
        for target in [
            "/",
            "/proc/x",
            "/dev",
            "/tmp",
            "/work/a",
            "relative",
            "/a/../proc",
        ] {
            let mut s = spec();
            s.binds_ro.push(BindRo {
                host: "/usr".into(),
                sandbox: target.into(),
            });
            assert!(
                matches!(s.validate(), Err(SpecError::BindTarget { .. })),
                "{target:?} accepted"
            );
        }
        let mut s = spec();
        s.binds_ro.push(BindRo {
            host: "/nonexistent/kakoi".into(),
            sandbox: "/data".into(),
        });
        assert!(matches!(s.validate(), Err(SpecError::BindSource { .. })));
        let mut s = spec();
        s.binds_ro.push(BindRo {
            host: "/usr/share".into(),
            sandbox: "/opt/data".into(),
        });
        assert_eq!(
            s.validate().unwrap().binds_ro[0].sandbox,
            PathBuf::from("/opt/data")
        );
    }
}
