//! The toolchain envs are built with and run on: an interpreter, uv and ruff.
//!
//! - **nix**: `nix-env/` realised with `nix build` ([`super::nix`]); python3, uv and ruff
//!   come from that one closure, and sandboxes bind exactly its store paths.
//! - **host**: the host's `/usr/bin/python3` (visible in every sandbox through `/usr`), and
//!   uv/ruff downloaded from PyPI on first use at pinned versions, checked by sha256
//!   (`bootstrap.rs`).
//!
//! The identity (`nix <store path>` or `host uv=<v> ruff=<v>`) and the interpreter's
//! identity go into every env digest.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::bootstrap::{self, BootstrapError, PINNED_RUFF, PINNED_UV};
use super::fsutil;
use super::nix::{self, NixError, NixToolchain};
use super::progress::Progress;

/// The interpreter of the host toolchain when none is asked for.
pub const HOST_PYTHON: &str = "/usr/bin/python3";

/// Which toolchain to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(clap::ValueEnum)]
pub enum ToolchainMode {
    /// Nix when `nix` is on PATH, the host otherwise.
    #[default]
    Auto,
    /// Nix; an error when Nix is missing.
    Nix,
    /// The host's python3 with bootstrapped uv and ruff.
    Host,
}

/// Which kind of toolchain is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolchainKind {
    /// A Nix closure.
    Nix,
    /// Host python + bootstrapped uv/ruff.
    Host,
}

/// Why no toolchain is available.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    /// `--toolchain nix` without Nix.
    #[error("the nix toolchain was requested but `nix` is not on PATH")]
    NixMissing,
    /// Realising the Nix toolchain failed.
    #[error("cannot realise the nix toolchain (nix-env/)")]
    Nix(#[from] NixError),
    /// Installing uv/ruff failed.
    #[error("cannot install the host toolchain (uv {PINNED_UV}, ruff {PINNED_RUFF})")]
    Bootstrap(#[from] BootstrapError),
    /// The interpreter is unusable.
    #[error("python interpreter {path}: {reason}")]
    Interpreter {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The requested Python is not available in this toolchain.
    #[error("python {requested:?} is not available: {reason}")]
    PythonNotFound {
        /// What was asked for.
        requested: String,
        /// Why not.
        reason: String,
    },
}

impl ToolchainError {
    /// A remedy, where one is known.
    pub fn hint(&self) -> Option<String> {
        match self {
            ToolchainError::Bootstrap(_) => Some(
                "the first env build downloads uv and ruff from PyPI (files.pythonhosted.org); check the network, or set KAKOI_PYPI_FILES_URL to a mirror".into(),
            ),
            ToolchainError::Interpreter { .. } | ToolchainError::PythonNotFound { .. } => Some(
                "install python3 (apt-get install python3) or pass --python with a version installed under /usr/bin".into(),
            ),
            ToolchainError::NixMissing => Some("install Nix or use --toolchain host".into()),
            ToolchainError::Nix(_) => {
                Some("run `nix build ./nix-env` to see Nix's full output, or use --toolchain host".into())
            }
        }
    }
}

/// A Python interpreter envs are built against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interpreter {
    /// Canonical path of the executable.
    pub path: PathBuf,
    /// `3.11.2`.
    pub version: String,
    /// `cpython`.
    pub implementation: String,
    /// `cpython-311-x86_64-linux-gnu`.
    pub soabi: String,
    /// `x86_64-linux-glibc2.36`.
    pub platform: String,
}

impl Interpreter {
    /// The interpreter's part of an env digest.
    pub fn identity(&self) -> String {
        format!(
            "{} {}-{} {}",
            self.path.display(),
            self.implementation,
            self.version,
            self.soabi
        )
    }

    /// `3.11` from `3.11.2`.
    pub fn minor_version(&self) -> String {
        self.version
            .splitn(3, '.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// A located toolchain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// Nix or host.
    pub kind: ToolchainKind,
    /// What goes into env digests (`nix /nix/store/...` or `host uv=0.13.9 ruff=0.17.6`).
    pub identity: String,
    /// uv.
    pub uv: PathBuf,
    /// uv's version.
    pub uv_version: String,
    /// ruff (for `ruff format` / `ruff check` of programs).
    pub ruff: PathBuf,
    /// ruff's version.
    pub ruff_version: String,
    /// The default interpreter.
    pub python: PathBuf,
    /// Host paths every sandbox using this toolchain needs, bound read-only at the same path
    /// (the Nix closure; the directory holding uv and ruff for the host toolchain).
    pub binds: Vec<PathBuf>,
    toolchain_dir: PathBuf,
}

impl Toolchain {
    /// Locate the toolchain, realising (Nix) or bootstrapping (host) it when needed.
    pub fn locate(
        toolchain_dir: &Path,
        mode: ToolchainMode,
        progress: &mut dyn Progress,
    ) -> Result<Toolchain, ToolchainError> {
        let use_nix = match mode {
            ToolchainMode::Nix if !nix::available() => return Err(ToolchainError::NixMissing),
            ToolchainMode::Nix => true,
            ToolchainMode::Host => false,
            ToolchainMode::Auto => nix::available(),
        };
        if use_nix {
            let realised = match nix::cached(toolchain_dir) {
                Some(t) => t,
                None => {
                    progress.message("realising the nix toolchain (nix-env/)");
                    nix::realise(toolchain_dir)?
                }
            };
            return Self::from_nix(toolchain_dir, realised);
        }
        let tools = bootstrap::ensure(toolchain_dir, progress)?;
        Ok(Toolchain {
            kind: ToolchainKind::Host,
            identity: format!("host uv={PINNED_UV} ruff={PINNED_RUFF}"),
            uv: tools.uv,
            uv_version: PINNED_UV.into(),
            ruff: tools.ruff,
            ruff_version: PINNED_RUFF.into(),
            python: PathBuf::from(HOST_PYTHON),
            binds: vec![tools.dir],
            toolchain_dir: toolchain_dir.into(),
        })
    }

    fn from_nix(toolchain_dir: &Path, realised: NixToolchain) -> Result<Toolchain, ToolchainError> {
        let versions = cached_versions(toolchain_dir, &realised)?;
        Ok(Toolchain {
            kind: ToolchainKind::Nix,
            identity: format!("nix {}", realised.out.display()),
            uv: realised.uv(),
            uv_version: versions.0,
            ruff: realised.ruff(),
            ruff_version: versions.1,
            python: realised.python(),
            binds: realised.closure.clone(),
            toolchain_dir: toolchain_dir.into(),
        })
    }

    /// The interpreter for a request: the default one, a version (`3.12` → `python3.12`
    /// next to the default), or an absolute path (host toolchain only, under `/usr`).
    pub fn interpreter(&self, requested: Option<&str>) -> Result<Interpreter, ToolchainError> {
        let path = match requested {
            None => self.python.clone(),
            Some(req) if req.starts_with('/') => {
                if self.kind == ToolchainKind::Nix {
                    return Err(ToolchainError::PythonNotFound {
                        requested: req.into(),
                        reason: "the nix toolchain provides one interpreter; omit --python".into(),
                    });
                }
                PathBuf::from(req)
            }
            Some(req) => {
                let valid = !req.is_empty()
                    && req
                        .split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                if !valid {
                    return Err(ToolchainError::PythonNotFound {
                        requested: req.into(),
                        reason: "expected a version such as 3.11 or an absolute path".into(),
                    });
                }
                let dir = self.python.parent().unwrap_or(Path::new("/usr/bin"));
                dir.join(format!("python{req}"))
            }
        };
        let canonical =
            std::fs::canonicalize(&path).map_err(|e| ToolchainError::PythonNotFound {
                requested: requested.unwrap_or(HOST_PYTHON).into(),
                reason: format!("{}: {e}", path.display()),
            })?;
        if self.kind == ToolchainKind::Host && !visible_in_sandbox(&canonical) {
            return Err(ToolchainError::PythonNotFound {
                requested: requested.unwrap_or(HOST_PYTHON).into(),
                reason: format!(
                    "{} is not under /usr, /bin or /lib*, so sandboxes cannot see it",
                    canonical.display()
                ),
            });
        }
        let interpreter = probe_cached(&self.toolchain_dir, &canonical)?;
        if let Some(req) = requested.filter(|r| !r.starts_with('/'))
            && interpreter.version != req
            && !interpreter.version.starts_with(&format!("{req}."))
        {
            return Err(ToolchainError::PythonNotFound {
                requested: req.into(),
                reason: format!("{} is python {}", canonical.display(), interpreter.version),
            });
        }
        Ok(interpreter)
    }

    /// The directory of this toolchain's files (`<data>/toolchain`).
    pub fn dir(&self) -> &Path {
        &self.toolchain_dir
    }

    /// Bind the toolchain read-only into a run at its host paths, so the run can execute
    /// [`Toolchain::ruff`] (or uv) — e.g. `ruff check` of an untrusted program inside the
    /// sandbox. Paths already bound are skipped.
    pub fn bind_into(&self, spec: &mut crate::spec::RunSpec) {
        for path in &self.binds {
            let bound = spec
                .binds_ro
                .iter()
                .chain(&spec.binds_rw)
                .any(|b| b.sandbox == *path);
            if !bound {
                spec.binds_ro.push(crate::spec::Bind {
                    host: path.clone(),
                    sandbox: path.clone(),
                });
            }
        }
    }
}

/// Whether a host path is inside the toolchain part of every sandbox's root.
fn visible_in_sandbox(path: &Path) -> bool {
    ["/usr", "/bin", "/lib", "/lib64"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// What a doctor line says about the toolchain, without downloading or building anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolchainStatus {
    /// `nix` or `host`.
    pub kind: ToolchainKind,
    /// The identity, when the toolchain is ready.
    pub identity: Option<String>,
    /// Whether uv/ruff (host) or the closure (nix) are already present.
    pub ready: bool,
    /// The default interpreter, when it could be probed.
    pub python: Option<Interpreter>,
    /// uv and ruff paths when present.
    pub uv: Option<PathBuf>,
    /// ruff.
    pub ruff: Option<PathBuf>,
    /// A problem with the interpreter, if any.
    pub problem: Option<String>,
}

/// Describe the toolchain this data directory would use, without side effects beyond the
/// interpreter probe cache.
pub fn status(toolchain_dir: &Path, mode: ToolchainMode) -> ToolchainStatus {
    let nix_wanted = match mode {
        ToolchainMode::Nix => true,
        ToolchainMode::Host => false,
        ToolchainMode::Auto => nix::available(),
    };
    if nix_wanted {
        let cached = nix::cached(toolchain_dir);
        return ToolchainStatus {
            kind: ToolchainKind::Nix,
            identity: cached.as_ref().map(|t| format!("nix {}", t.out.display())),
            ready: cached.is_some(),
            python: None,
            uv: cached.as_ref().map(|t| t.uv()),
            ruff: cached.as_ref().map(|t| t.ruff()),
            problem: None,
        };
    }
    let tools = bootstrap::installed(toolchain_dir);
    let (python, problem) = match std::fs::canonicalize(HOST_PYTHON)
        .map_err(|e| format!("{HOST_PYTHON}: {e}"))
        .and_then(|p| probe(&p).map_err(|e| e.to_string()))
    {
        Ok(i) => (Some(i), None),
        Err(e) => (None, Some(e)),
    };
    ToolchainStatus {
        kind: ToolchainKind::Host,
        identity: tools
            .as_ref()
            .map(|_| format!("host uv={PINNED_UV} ruff={PINNED_RUFF}")),
        ready: tools.is_some(),
        python,
        uv: tools.as_ref().map(|t| t.uv.clone()),
        ruff: tools.map(|t| t.ruff),
        problem,
    }
}

/// The Python snippet that describes an interpreter (run with `-I -S`: no site, no user
/// paths, nothing from the current directory).
const PROBE: &str = "import json, platform, sys, sysconfig\n\
libc, libc_version = platform.libc_ver()\n\
print(json.dumps({'version': platform.python_version(), \
'implementation': sys.implementation.name, \
'soabi': sysconfig.get_config_var('SOABI') or '', \
'machine': platform.machine(), 'libc': libc, 'libc_version': libc_version}))";

#[derive(Debug, Deserialize)]
struct ProbeOutput {
    version: String,
    implementation: String,
    soabi: String,
    machine: String,
    libc: String,
    libc_version: String,
}

/// Run the interpreter once and describe it.
pub fn probe(path: &Path) -> Result<Interpreter, ToolchainError> {
    let fail = |reason: String| ToolchainError::Interpreter {
        path: path.into(),
        reason,
    };
    let output = Command::new(path)
        .args(["-I", "-S", "-c", PROBE])
        .env_clear()
        .output()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "it exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    parse_probe(path, &output.stdout).map_err(fail)
}

fn parse_probe(path: &Path, stdout: &[u8]) -> Result<Interpreter, String> {
    let out: ProbeOutput =
        serde_json::from_slice(stdout).map_err(|e| format!("unexpected probe output: {e}"))?;
    let libc = if out.libc == "glibc" {
        format!("glibc{}", out.libc_version)
    } else if out.libc.is_empty() {
        "unknown-libc".into()
    } else {
        format!("{}{}", out.libc, out.libc_version)
    };
    Ok(Interpreter {
        path: path.into(),
        version: out.version,
        implementation: out.implementation,
        soabi: out.soabi,
        platform: format!("{}-linux-{libc}", out.machine),
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct ProbeCache {
    key: String,
    interpreter: Interpreter,
}

/// [`probe`], cached under `<toolchain>/python-<hash of path>.json` and keyed by the
/// executable's inode, size and mtime: a python upgrade probes again (and changes the
/// digest), an unchanged interpreter costs one `stat` and one small read.
fn probe_cached(toolchain_dir: &Path, path: &Path) -> Result<Interpreter, ToolchainError> {
    let meta = std::fs::metadata(path).map_err(|e| ToolchainError::Interpreter {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let key = format!(
        "{}:{}:{}:{}:{}",
        path.display(),
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000
    );
    use sha2::Digest as _;
    let name = hex::encode(sha2::Sha256::digest(path.as_os_str().as_encoded_bytes()));
    let cache_path = toolchain_dir.join(format!("python-{}.json", &name[..16]));
    if let Ok(bytes) = std::fs::read(&cache_path)
        && let Ok(cache) = serde_json::from_slice::<ProbeCache>(&bytes)
        && cache.key == key
    {
        return Ok(cache.interpreter);
    }
    let interpreter = probe(path)?;
    let cache = ProbeCache {
        key,
        interpreter: interpreter.clone(),
    };
    if fsutil::create_dir(toolchain_dir, super::datadir::TRAVERSE_MODE).is_ok() {
        let _ = fsutil::write_atomic(
            &cache_path,
            &serde_json::to_vec(&cache).expect("serializable"),
            0o644,
        );
    }
    Ok(interpreter)
}

/// uv and ruff versions of a realised Nix toolchain, cached beside it.
fn cached_versions(
    toolchain_dir: &Path,
    realised: &NixToolchain,
) -> Result<(String, String), ToolchainError> {
    let cache_path = toolchain_dir.join("nix-versions.json");
    if let Ok(bytes) = std::fs::read(&cache_path)
        && let Ok((out, uv, ruff)) = serde_json::from_slice::<(PathBuf, String, String)>(&bytes)
        && out == realised.out
    {
        return Ok((uv, ruff));
    }
    let version = |program: PathBuf| -> Result<String, ToolchainError> {
        let output = Command::new(&program)
            .arg("--version")
            .output()
            .map_err(|e| ToolchainError::Interpreter {
                path: program.clone(),
                reason: e.to_string(),
            })?;
        nix::parse_version(&String::from_utf8_lossy(&output.stdout)).ok_or_else(|| {
            ToolchainError::Interpreter {
                path: program,
                reason: "--version printed no version".into(),
            }
        })
    };
    let uv = version(realised.uv())?;
    let ruff = version(realised.ruff())?;
    let _ = fsutil::write_atomic(
        &cache_path,
        &serde_json::to_vec(&(&realised.out, &uv, &ruff)).expect("serializable"),
        0o644,
    );
    Ok((uv, ruff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_becomes_an_interpreter() {
        let out = br#"{"version": "3.11.2", "implementation": "cpython", "soabi": "cpython-311-x86_64-linux-gnu", "machine": "x86_64", "libc": "glibc", "libc_version": "2.36"}"#;
        let i = parse_probe(Path::new("/usr/bin/python3.11"), out).unwrap();
        assert_eq!(i.platform, "x86_64-linux-glibc2.36");
        assert_eq!(i.minor_version(), "3.11");
        assert_eq!(
            i.identity(),
            "/usr/bin/python3.11 cpython-3.11.2 cpython-311-x86_64-linux-gnu"
        );
        assert!(parse_probe(Path::new("/x"), b"not json").is_err());
    }

    #[test]
    fn only_sandbox_visible_interpreters_are_accepted() {
        assert!(visible_in_sandbox(Path::new("/usr/bin/python3.11")));
        assert!(!visible_in_sandbox(Path::new(
            "/root/.pyenv/versions/3.11.7/bin/python3.11"
        )));
        assert!(!visible_in_sandbox(Path::new("/opt/python/bin/python3")));
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A host toolchain as `locate` would return it for `/var/lib/kakoi` (nothing checked).
    pub(crate) fn host_toolchain() -> Toolchain {
        let dir = PathBuf::from("/var/lib/kakoi/toolchain");
        let tools = dir.join(bootstrap::tools_dir_name("x86_64"));
        Toolchain {
            kind: ToolchainKind::Host,
            identity: format!("host uv={PINNED_UV} ruff={PINNED_RUFF}"),
            uv: tools.join("bin/uv"),
            uv_version: PINNED_UV.into(),
            ruff: tools.join("bin/ruff"),
            ruff_version: PINNED_RUFF.into(),
            python: PathBuf::from(HOST_PYTHON),
            binds: vec![tools],
            toolchain_dir: dir,
        }
    }
}
