//! The content-addressed env store: `<data>/envs/v1/<digest>`.
//!
//! ```text
//! <data>/
//!   toolchain/            host-uv<V>-ruff<V>-<arch>/bin/{uv,ruff}, python-*.json, nix-env/, nix.json
//!   uv-cache/             uv's shared cache (uid BUILD_HOST_ID), moved into a wheel-only
//!                         build's directory while it runs (uv alone writes it there)
//!   envs/v1/
//!     <digest>/           one env: venv/, requirements.in, requirements.lock, kakoi-env.json
//!     .locks/<digest>.lock  flock: exclusive while building or deleting, shared while in use
//!     .staging/<digest>.<pid>.<n>/   a build in progress (or a dead one, swept):
//!                         v1/<digest>/ (the env being built) and, while uv runs, uv-cache/
//!                         (the shared cache moved in, or a source build's private one)
//!     .trash/             envs being deleted (renamed here first, so deletion is atomic)
//! ```
//!
//! "In use" means a shared flock on `.locks/<digest>.lock`, held by every [`Env`] for as long
//! as it lives (a run holds its `Env` until the sandbox exits). `gc` and `rm` take the
//! exclusive lock without waiting and skip (or refuse) an env whose lock is held.
//! The lock file's mtime records the last use.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::digest::{DigestInput, RECIPE, is_digest_prefix};
use super::fsutil::{self, io};
use super::progress::{BuildStep, Progress};
use super::requirements::Requirements;
use super::toolchain::{Interpreter, Toolchain, ToolchainKind, ToolchainMode};
use super::uv::{self, BuildContext, CacheMode, REQUIREMENTS_IN, REQUIREMENTS_LOCK, VENV};
use super::{EnvError, datadir};
use crate::backend::Backend;
use crate::result::{EnvUse, RunResult, Status};
use crate::sandbox::{RunOptions, SANDBOX_PATH, SandboxConfig};
use crate::spec::{Bind, DEFAULT_CPUS, DEFAULT_PIDS, RunSpec};

/// Host uid and gid that build sandboxes map their user to when kakoi runs as root. Fixed
/// (unlike the per-launcher ids of runs, which lie in 2_000_000_000..2_100_000_000) so that
/// every build can write the shared uv cache; never used by host accounts or by runs.
pub const BUILD_HOST_ID: u32 = 2_100_000_000;

/// Metadata file of an env.
const META: &str = "kakoi-env.json";

/// Limits of the sandbox that builds an env (uv resolves and downloads with many threads,
/// and a package's build may compile C).
#[derive(Debug, Clone, PartialEq)]
pub struct BuildLimits {
    /// Wall clock per build step, in seconds.
    pub timeout_secs: f64,
    /// Memory in bytes.
    pub memory: u64,
    /// Tasks (processes and threads).
    pub pids: u64,
    /// CPU bandwidth in cores.
    pub cpus: f64,
    /// Size of /tmp, the workdir and /dev/shm, and RLIMIT_FSIZE (the largest file written).
    pub tmp_size: u64,
}

impl Default for BuildLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        BuildLimits {
            timeout_secs: 900.0,
            memory: 4 << 30,
            pids: 1024,
            cpus: cores as f64,
            tmp_size: 2 << 30,
        }
    }
}

/// Resolution options; every one of them is part of the digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolveOptions {
    /// Interpreter: a version (`3.11`) or an absolute path; default: the toolchain's python3.
    pub python: Option<String>,
    /// `--index-url` (replaces PyPI).
    pub index_url: Option<String>,
    /// `--extra-index-url`s.
    pub extra_index_urls: Vec<String>,
    /// `--exclude-newer`: ignore distributions uploaded after this time (RFC 3339 or date).
    pub exclude_newer: Option<String>,
}

impl ResolveOptions {
    fn validate(&self) -> Result<(), EnvError> {
        let url_ok = |u: &str| {
            (u.starts_with("https://") || u.starts_with("http://"))
                && u.len() <= 2048
                && !u.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        for (option, url) in self.index_url.iter().map(|u| ("--index-url", u)).chain(
            self.extra_index_urls
                .iter()
                .map(|u| ("--extra-index-url", u)),
        ) {
            if !url_ok(url) {
                return Err(EnvError::Option {
                    option,
                    value: url.clone(),
                    reason: "expected an http:// or https:// URL without spaces",
                });
            }
        }
        if let Some(t) = &self.exclude_newer {
            let ok = !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":+-.".contains(c));
            if !ok {
                return Err(EnvError::Option {
                    option: "--exclude-newer",
                    value: t.clone(),
                    reason: "expected a date (2025-01-31) or an RFC 3339 timestamp",
                });
            }
        }
        Ok(())
    }
}

/// What to build: normalized requirements and resolution options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRequest {
    /// The requirements.
    pub requirements: Requirements,
    /// The options.
    pub options: ResolveOptions,
}

impl EnvRequest {
    /// Normalize a requirements text and check the options.
    pub fn new(requirements: &[u8], options: ResolveOptions) -> Result<EnvRequest, EnvError> {
        options.validate()?;
        Ok(EnvRequest {
            requirements: Requirements::parse(requirements)?,
            options,
        })
    }
}

/// How to open a store.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// Data directory; default: [`datadir::resolve`] (`KAKOI_DATA_DIR`, then per-user default).
    pub data_dir: Option<PathBuf>,
    /// Which toolchain.
    pub toolchain: ToolchainMode,
    /// Limits of build sandboxes.
    pub build_limits: BuildLimits,
}

/// What `kakoi-env.json` records about an env (plus `last_used`/`in_use`, read live).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvInfo {
    /// The digest.
    pub digest: String,
    /// The env directory.
    pub path: PathBuf,
    /// The interpreter to run (`<path>/venv/bin/python`).
    pub python: PathBuf,
    /// Normalized requirements.
    pub requirements: Vec<String>,
    /// Pinned packages from the lock (`name==version`).
    pub packages: Vec<String>,
    /// Toolchain identity.
    pub toolchain: String,
    /// Interpreter it was built against.
    pub interpreter: Interpreter,
    /// Resolution options.
    pub options: ResolveOptions,
    /// Build time, seconds since the epoch.
    pub created: u64,
    /// How long the build took.
    pub build_ms: f64,
    /// Disk use in bytes.
    pub size_bytes: u64,
    /// Number of files and directories.
    pub files: u64,
    /// The uv cache the build used: `shared` (wheels only, no package code ran while the
    /// shared cache was writable) or `private` (a source build, in a cache of its own).
    #[serde(default)]
    pub build_cache: String,
    /// Last use, seconds since the epoch (mtime of the lock file).
    #[serde(default)]
    pub last_used: u64,
    /// A run holds it right now.
    #[serde(default)]
    pub in_use: bool,
}

/// A built environment, held in use (shared flock) until dropped.
#[derive(Debug)]
pub struct Env {
    digest: String,
    path: PathBuf,
    cache_hit: bool,
    build_ms: f64,
    runtime_binds: Vec<PathBuf>,
    _in_use: Flock<File>,
}

impl Env {
    /// The digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The env directory (bound read-only at this same path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The interpreter of the env.
    pub fn python(&self) -> PathBuf {
        self.path.join(VENV).join("bin/python")
    }

    /// The env existed; this call built nothing and used no network.
    pub fn cache_hit(&self) -> bool {
        self.cache_hit
    }

    /// Build time (0 on a cache hit).
    pub fn build_ms(&self) -> f64 {
        self.build_ms
    }

    /// The `env` object of a result.
    pub fn usage(&self) -> EnvUse {
        EnvUse {
            digest: self.digest.clone(),
            cache_hit: self.cache_hit,
            build_ms: self.build_ms,
        }
    }

    /// Make a run use this env: bind it (and, for a Nix toolchain, the interpreter's
    /// closure) read-only at the same path, put its `bin/` first on PATH, and size the
    /// thread pools of OpenMP/OpenBLAS/MKL/numexpr to the run's CPU limit (and at most a
    /// quarter of its pids limit) so they fit. Variables the spec already sets are kept.
    /// The run's argv is not changed: use [`Env::python`] as the interpreter.
    pub fn apply(&self, spec: &mut RunSpec) {
        for path in std::iter::once(&self.path).chain(&self.runtime_binds) {
            let bound = spec
                .binds_ro
                .iter()
                .chain(&spec.binds_rw)
                .any(|b| b.sandbox == *path);
            if !bound {
                spec.binds_ro.push(Bind {
                    host: path.clone(),
                    sandbox: path.clone(),
                });
            }
        }
        let threads = thread_count(
            spec.limits.cpus.unwrap_or(DEFAULT_CPUS),
            spec.limits.pids.unwrap_or(DEFAULT_PIDS),
        )
        .to_string();
        let venv = self.path.join(VENV);
        let vars = [
            ("VIRTUAL_ENV", venv.display().to_string()),
            (
                "PATH",
                format!("{}:{SANDBOX_PATH}", venv.join("bin").display()),
            ),
            // The env is read-only: never try to write bytecode (it is precompiled).
            ("PYTHONDONTWRITEBYTECODE", "1".into()),
            ("OMP_NUM_THREADS", threads.clone()),
            ("OPENBLAS_NUM_THREADS", threads.clone()),
            ("MKL_NUM_THREADS", threads.clone()),
            ("NUMEXPR_NUM_THREADS", threads.clone()),
            ("NUMEXPR_MAX_THREADS", threads),
        ];
        for (key, value) in vars {
            if !spec.env.iter().any(|(k, _)| k == key) {
                spec.env.push((key.to_string(), value));
            }
        }
    }
}

/// Threads a numeric library may start: the CPU limit rounded up, at least 1, and at most a
/// quarter of the pids limit (the rest is left for the program's own processes).
pub fn thread_count(cpus: f64, pids: u64) -> u64 {
    let by_cpu = if cpus.is_finite() && cpus > 0.0 {
        cpus.ceil() as u64
    } else {
        1
    };
    by_cpu.clamp(1, (pids / 4).max(1))
}

/// What `gc` may remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPolicy {
    /// Remove envs not used for this long.
    pub older_than: Option<Duration>,
    /// Then remove least recently used envs until the store is at most this large.
    pub max_total_bytes: Option<u64>,
    /// Also empty the uv cache (skipped while a build is running; builds hold a shared
    /// lock on it). Envs never need the cache: they hold copies.
    pub uv_cache: bool,
    /// Report only.
    pub dry_run: bool,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Digests removed (or that would be, with `dry_run`).
    pub removed: Vec<String>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Digests that matched the policy but were in use.
    pub kept_in_use: Vec<String>,
    /// Stale staging directories of dead builds that were removed.
    pub swept_staging: usize,
    /// Total size of the envs left.
    pub remaining_bytes: u64,
    /// Bytes of uv cache removed (with [`GcPolicy::uv_cache`]).
    pub uv_cache_freed_bytes: u64,
    /// The uv cache was kept because a build was using it.
    pub uv_cache_busy: bool,
}

/// The env store of one data directory.
#[derive(Debug)]
pub struct EnvStore {
    data: PathBuf,
    envs: PathBuf,
    mode: ToolchainMode,
    limits: BuildLimits,
    toolchain: Mutex<Option<Toolchain>>,
}

impl EnvStore {
    /// Open (creating) the store. Cheap: no download, no interpreter probe.
    pub fn open(config: StoreConfig) -> Result<EnvStore, EnvError> {
        let data = datadir::prepare(&datadir::resolve(config.data_dir.as_deref())?)?;
        let envs = data.join("envs/v1");
        for (dir, mode) in [
            ("", datadir::TRAVERSE_MODE),
            (".locks", 0o700),
            (".staging", datadir::TRAVERSE_MODE),
            (".trash", 0o700),
        ] {
            let path = envs.join(dir);
            if !path.is_dir() {
                fsutil::create_dir(&data.join("envs"), datadir::TRAVERSE_MODE)?;
                fsutil::create_dir(&path, mode)?;
            }
        }
        Ok(EnvStore {
            data,
            envs,
            mode: config.toolchain,
            limits: config.build_limits,
            toolchain: Mutex::new(None),
        })
    }

    /// The data directory (canonical).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `<data>/envs/v1`.
    pub fn envs_dir(&self) -> &Path {
        &self.envs
    }

    /// `<data>/uv-cache`.
    pub fn uv_cache_dir(&self) -> PathBuf {
        self.data.join("uv-cache")
    }

    /// `<data>/toolchain`.
    pub fn toolchain_dir(&self) -> PathBuf {
        self.data.join("toolchain")
    }

    /// The toolchain, located once per store (bootstrapping uv/ruff on first use). Its
    /// `ruff` field is the binary to lint and format with.
    pub fn toolchain(&self, progress: &mut dyn Progress) -> Result<Toolchain, EnvError> {
        let mut slot = self.toolchain.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let toolchain = Toolchain::locate(&self.toolchain_dir(), self.mode, progress)?;
        *slot = Some(toolchain.clone());
        Ok(toolchain)
    }

    /// Sandbox settings for the backend that builds envs: `base` with the sandbox user
    /// mapped to [`BUILD_HOST_ID`] when running as root.
    pub fn build_sandbox_config(base: SandboxConfig) -> SandboxConfig {
        let root = nix::unistd::geteuid().is_root();
        SandboxConfig {
            host_id: if root {
                Some(BUILD_HOST_ID)
            } else {
                base.host_id
            },
            ..base
        }
    }

    /// The digest of a request (locates the toolchain).
    pub fn digest(
        &self,
        request: &EnvRequest,
        progress: &mut dyn Progress,
    ) -> Result<String, EnvError> {
        let toolchain = self.toolchain(progress)?;
        let interpreter = toolchain.interpreter(request.options.python.as_deref())?;
        Ok(digest_of(request, &toolchain, &interpreter))
    }

    /// Return the env for `request`, building it (inside a sandbox run by `backend`) when
    /// it does not exist yet. Concurrent calls for one digest build it once; the others
    /// wait and reuse it. The returned [`Env`] keeps the env in use until dropped.
    pub fn ensure(
        &self,
        request: &EnvRequest,
        backend: &dyn Backend,
        progress: &mut dyn Progress,
    ) -> Result<Env, EnvError> {
        let toolchain = self.toolchain(progress)?;
        let interpreter = toolchain.interpreter(request.options.python.as_deref())?;
        let digest = digest_of(request, &toolchain, &interpreter);
        let final_dir = self.envs.join(&digest);
        let lock_path = self.lock_path(&digest);
        for _attempt in 0..3 {
            // Fast path: a shared lock waits for a build in progress, then finds the env.
            let shared = fsutil::lock(&lock_path, FlockArg::LockShared)?;
            if final_dir.join(META).is_file() {
                return Ok(self.hold(&digest, &toolchain, shared, true, 0.0));
            }
            drop(shared);
            let exclusive = fsutil::lock(&lock_path, FlockArg::LockExclusive)?;
            let (built, build_ms) = if final_dir.join(META).is_file() {
                (false, 0.0) // built by another process while we waited
            } else {
                let started = Instant::now();
                self.build(
                    request,
                    &toolchain,
                    &interpreter,
                    &digest,
                    backend,
                    progress,
                )?;
                (true, started.elapsed().as_secs_f64() * 1000.0)
            };
            // Downgrade to shared. flock(2) may drop the lock during the conversion, so
            // check again that no gc removed the env in between.
            exclusive
                .relock(FlockArg::LockShared)
                .map_err(|e| EnvError::Io {
                    action: "lock",
                    path: lock_path.clone(),
                    source: e.into(),
                })?;
            if final_dir.join(META).is_file() {
                let build_ms = (build_ms * 1000.0).round() / 1000.0;
                return Ok(self.hold(&digest, &toolchain, exclusive, !built, build_ms));
            }
        }
        Err(EnvError::Corrupt {
            path: final_dir,
            reason: "the environment disappeared three times while it was being prepared (a concurrent gc?)".into(),
        })
    }

    fn hold(
        &self,
        digest: &str,
        toolchain: &Toolchain,
        lock: Flock<File>,
        cache_hit: bool,
        build_ms: f64,
    ) -> Env {
        // Record the use for `gc --older-than` (one futimens on the open lock file).
        let _ = lock.set_modified(std::time::SystemTime::now());
        Env {
            digest: digest.into(),
            path: self.envs.join(digest),
            cache_hit,
            build_ms,
            runtime_binds: match toolchain.kind {
                ToolchainKind::Nix => toolchain.binds.clone(),
                // The host interpreter lives in /usr, which every sandbox has.
                ToolchainKind::Host => vec![],
            },
            _in_use: lock,
        }
    }

    fn lock_path(&self, digest: &str) -> PathBuf {
        self.envs.join(".locks").join(format!("{digest}.lock"))
    }

    fn uv_cache_lock_path(&self) -> PathBuf {
        self.envs.join(".locks").join("uv-cache.lock")
    }

    /// Exclusive while a build has the shared uv cache moved into its directory.
    fn uv_cache_lease_path(&self) -> PathBuf {
        self.envs.join(".locks").join("uv-cache-lease.lock")
    }

    /// Build one env (the caller holds the digest's exclusive lock).
    fn build(
        &self,
        request: &EnvRequest,
        toolchain: &Toolchain,
        interpreter: &Interpreter,
        digest: &str,
        backend: &dyn Backend,
        progress: &mut dyn Progress,
    ) -> Result<(), EnvError> {
        let started = Instant::now();
        let build_ids = build_ids(backend)?;
        self.sweep_staging(Some(digest));
        // The build's own directory: it holds the env at `v1/<digest>` and, while uv runs,
        // a uv cache at `uv-cache`; it is bound at `<data>/envs` in the sandbox, so the env
        // is at its final path and the cache in the same mount (uv can hard-link).
        let build_root = self
            .envs
            .join(".staging")
            .join(format!("{digest}.{}", fsutil::unique_suffix()));
        let staging = build_root.join(self.envs_version_dir()).join(digest);
        let final_dir = self.envs.join(digest);
        let job = BuildJob {
            request,
            toolchain,
            interpreter,
            digest,
            build_root: &build_root,
            staging: &staging,
            final_dir: &final_dir,
            ids: build_ids,
        };
        let result = self.build_in(&job, backend, progress, started);
        let result = result.and_then(|()| {
            std::fs::rename(&staging, &final_dir).map_err(io("rename into place", &staging))
        });
        let _ = fsutil::remove_tree(&build_root);
        result
    }

    /// `v1`: the last component of the envs directory, repeated inside a build's directory.
    fn envs_version_dir(&self) -> &std::ffi::OsStr {
        self.envs.file_name().unwrap_or(std::ffi::OsStr::new("v1"))
    }

    fn build_in(
        &self,
        job: &BuildJob<'_>,
        backend: &dyn Backend,
        progress: &mut dyn Progress,
        started: Instant,
    ) -> Result<(), EnvError> {
        let BuildJob {
            request,
            toolchain,
            interpreter,
            digest,
            build_root,
            staging,
            final_dir,
            ids: _,
        } = *job;
        // Keeps `gc --uv-cache` from emptying the cache under a running build.
        let _cache_in_use = fsutil::lock(&self.uv_cache_lock_path(), FlockArg::LockShared)?;
        let version_dir = build_root.join(self.envs_version_dir());
        for dir in [build_root, version_dir.as_path(), staging] {
            job.make_dir(dir, 0o755)?;
        }
        let requirements_in = staging.join(REQUIREMENTS_IN);
        std::fs::write(&requirements_in, request.requirements.to_text())
            .map_err(io("write", &requirements_in))?;
        let mode = self.build_steps(job, backend, progress)?;
        let lock_path = staging.join(REQUIREMENTS_LOCK);
        let lock = std::fs::read_to_string(&lock_path).map_err(io("read", &lock_path))?;
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        // The env becomes the store owner's and read-only for everyone else, whatever the
        // build sandbox wrote.
        fsutil::own_tree(staging, euid, egid)?;
        let (size_bytes, files) = fsutil::tree_size(staging);
        let info = EnvInfo {
            digest: digest.into(),
            path: final_dir.to_path_buf(),
            python: final_dir.join(VENV).join("bin/python"),
            requirements: request.requirements.lines().to_vec(),
            packages: uv::locked_packages(&lock),
            toolchain: toolchain.identity.clone(),
            interpreter: interpreter.clone(),
            options: request.options.clone(),
            created: fsutil::now_secs(),
            build_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1000.0,
            size_bytes,
            files,
            build_cache: mode.name().into(),
            last_used: 0,
            in_use: false,
        };
        let json = serde_json::to_vec_pretty(&info).expect("serializable");
        fsutil::write_atomic(&staging.join(META), &json, 0o644)
    }

    /// The sandboxed steps: resolve and install from wheels with the shared cache; when a
    /// package has no wheel, again from the start with a private cache and source builds
    /// allowed; then compile the bytecode. Returns the cache mode that built the env.
    ///
    /// The shared cache is *moved* into the build's directory for the wheel-only attempt
    /// (under an exclusive lease: one build uses it at a time) and moved back after it, so
    /// that it lies in the same mount as the env inside the sandbox and uv hard-links the
    /// installed files instead of copying them. The env then shares inodes with the cache;
    /// that is safe because only uv writes the shared cache (no package code runs while it
    /// is mounted) and uv never rewrites a cached file in place, and because the env is
    /// chowned to the store's owner and made read-only afterwards, which the cache's links
    /// see too.
    fn build_steps(
        &self,
        job: &BuildJob<'_>,
        backend: &dyn Backend,
        progress: &mut dyn Progress,
    ) -> Result<CacheMode, EnvError> {
        let count = job.request.requirements.lines().len();
        let texts = [
            format!(
                "resolving {count} requirement{} with uv {} for python {}",
                if count == 1 { "" } else { "s" },
                job.toolchain.uv_version,
                job.interpreter.version
            ),
            format!("installing environment {}", &job.digest[..12]),
        ];
        let cache_here = job.build_root.join(uv::BUILD_CACHE);
        let ctx = |mode| BuildContext {
            toolchain: job.toolchain,
            interpreter: job.interpreter,
            options: &job.request.options,
            limits: &self.limits,
            final_dir: job.final_dir,
            staging: job.staging,
            build_root: job.build_root,
            mode,
        };

        // Wheels only, with the shared cache.
        let shared = self.uv_cache_dir();
        let lease = fsutil::lock(&self.uv_cache_lease_path(), FlockArg::LockExclusive)?;
        if !shared.is_dir() {
            job.make_dir(&shared, 0o700)?;
        }
        let attempt = match std::fs::rename(&shared, &cache_here) {
            Ok(()) => {
                let attempt =
                    self.resolve_and_install(&ctx(CacheMode::Shared), &texts, backend, progress);
                let back = std::fs::rename(&cache_here, &shared)
                    .map_err(io("move the uv cache back to", &shared));
                drop(lease);
                back?;
                attempt?
            }
            Err(e) => {
                // Not on the same filesystem as the store (a separate mount or a symlink):
                // no wheel-only attempt, a private cache instead.
                drop(lease);
                tracing::warn!(
                    "cannot move the shared uv cache {} into the build ({e}): using a private cache",
                    shared.display()
                );
                Attempt::NeedsSource
            }
        };
        if attempt == Attempt::Installed {
            self.compile(&ctx(CacheMode::Shared), backend, progress)?;
            return Ok(CacheMode::Shared);
        }

        // A source build: a cache of its own, removed after it.
        progress.message(
            "a package has no wheel for this platform: building from source, in a uv cache of this build's own",
        );
        tracing::info!("no wheel-only resolution: building with a private uv cache");
        fsutil::remove_tree(&job.staging.join(VENV))?;
        let lock = job.staging.join(REQUIREMENTS_LOCK);
        match std::fs::remove_file(&lock) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove", &lock)(e));
            }
            _ => {}
        }
        job.make_dir(&cache_here, 0o700)?;
        let attempt = self.resolve_and_install(&ctx(CacheMode::Private), &texts, backend, progress);
        let _ = fsutil::remove_tree(&cache_here);
        attempt?;
        self.compile(&ctx(CacheMode::Private), backend, progress)?;
        Ok(CacheMode::Private)
    }

    /// Resolve, then install. In a wheel-only attempt, a package without a wheel is
    /// [`Attempt::NeedsSource`], not an error.
    fn resolve_and_install(
        &self,
        ctx: &BuildContext<'_>,
        texts: &[String; 2],
        backend: &dyn Backend,
        progress: &mut dyn Progress,
    ) -> Result<Attempt, EnvError> {
        for (step, text) in [BuildStep::Resolve, BuildStep::Install].iter().zip(texts) {
            let result = run_step(ctx, *step, text, backend, progress)?;
            if ctx.mode == CacheMode::Shared
                && result.status == Status::RuntimeError
                && uv::needs_source_build(&result.stderr)
            {
                tracing::info!(stage = step.stage(), "a package has no wheel");
                return Ok(Attempt::NeedsSource);
            }
            check_step(*step, &result)?;
        }
        Ok(Attempt::Installed)
    }

    /// The bytecode step.
    fn compile(
        &self,
        ctx: &BuildContext<'_>,
        backend: &dyn Backend,
        progress: &mut dyn Progress,
    ) -> Result<(), EnvError> {
        let result = run_step(
            ctx,
            BuildStep::Compile,
            "compiling bytecode",
            backend,
            progress,
        )?;
        check_step(BuildStep::Compile, &result)
    }

    /// Remove staging directories whose build is gone: their digest's lock is free (or, for
    /// `held`, whose lock the caller holds). Returns how many were removed.
    fn sweep_staging(&self, held: Option<&str>) -> usize {
        let mut swept = 0;
        let staging = self.envs.join(".staging");
        let Ok(entries) = std::fs::read_dir(&staging) else {
            return 0;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = name.split('.').next().unwrap_or_default().to_string();
            let stale = if Some(digest.as_str()) == held {
                true
            } else if is_digest_prefix(&digest) {
                matches!(
                    fsutil::try_lock_exclusive(&self.lock_path(&digest)),
                    Ok(Some(_))
                )
            } else {
                false
            };
            if stale && fsutil::remove_tree(&entry.path()).is_ok() {
                swept += 1;
            }
        }
        if let Ok(trash) = std::fs::read_dir(self.envs.join(".trash")) {
            for entry in trash.flatten() {
                let _ = fsutil::remove_tree(&entry.path());
            }
        }
        swept
    }

    /// Every env of the store, newest use first.
    pub fn list(&self) -> Result<Vec<EnvInfo>, EnvError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.envs).map_err(io("read", &self.envs))? {
            let entry = entry.map_err(io("read", &self.envs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !is_digest_prefix(&name) {
                continue;
            }
            out.push(self.info(&name)?);
        }
        out.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.digest.cmp(&b.digest)));
        Ok(out)
    }

    /// The metadata of one env (full digest).
    pub fn info(&self, digest: &str) -> Result<EnvInfo, EnvError> {
        let dir = self.envs.join(digest);
        let meta = dir.join(META);
        let bytes = std::fs::read(&meta).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EnvError::NotFound {
                digest: digest.into(),
                store: self.envs.clone(),
            },
            _ => EnvError::Io {
                action: "read",
                path: meta.clone(),
                source: e,
            },
        })?;
        let mut info: EnvInfo = serde_json::from_slice(&bytes).map_err(|e| EnvError::Corrupt {
            path: meta.clone(),
            reason: e.to_string(),
        })?;
        let lock = self.lock_path(digest);
        info.last_used = fsutil::mtime_secs(&lock).unwrap_or(info.created);
        info.in_use = matches!(fsutil::try_lock_exclusive(&lock), Ok(None));
        Ok(info)
    }

    /// The full digest for a unique prefix.
    pub fn resolve_digest(&self, prefix: &str) -> Result<String, EnvError> {
        let not_found = || EnvError::NotFound {
            digest: prefix.into(),
            store: self.envs.clone(),
        };
        if !is_digest_prefix(prefix) {
            return Err(not_found());
        }
        let mut found = None;
        for entry in std::fs::read_dir(&self.envs).map_err(io("read", &self.envs))? {
            let name = entry.map_err(io("read", &self.envs))?.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with('.') && name.starts_with(prefix) {
                if found.is_some() {
                    return Err(EnvError::Ambiguous {
                        prefix: prefix.into(),
                    });
                }
                found = Some(name.into_owned());
            }
        }
        found.ok_or_else(not_found)
    }

    /// Remove one env; refused while it is in use.
    pub fn remove(&self, digest: &str) -> Result<u64, EnvError> {
        let digest = self.resolve_digest(digest)?;
        let Some(_lock) = fsutil::try_lock_exclusive(&self.lock_path(&digest))? else {
            return Err(EnvError::InUse { digest });
        };
        let dir = self.envs.join(&digest);
        let (size, _) = fsutil::tree_size(&dir);
        fsutil::discard(&dir, &self.envs.join(".trash"))?;
        Ok(size)
    }

    /// Remove envs by age and total size, never one in use; sweep dead builds.
    pub fn gc(&self, policy: &GcPolicy) -> Result<GcReport, EnvError> {
        let mut report = GcReport {
            swept_staging: if policy.dry_run {
                0
            } else {
                self.sweep_staging(None)
            },
            ..GcReport::default()
        };
        let mut envs = self.list()?;
        // Oldest use first.
        envs.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.digest.cmp(&b.digest)));
        let now = fsutil::now_secs();
        let mut total: u64 = envs.iter().map(|e| e.size_bytes).sum();
        for env in &envs {
            let too_old = policy
                .older_than
                .is_some_and(|age| now.saturating_sub(env.last_used) >= age.as_secs());
            let too_big = policy.max_total_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                continue;
            }
            let Some(lock) = fsutil::try_lock_exclusive(&self.lock_path(&env.digest))? else {
                report.kept_in_use.push(env.digest.clone());
                continue;
            };
            if !policy.dry_run {
                fsutil::discard(&self.envs.join(&env.digest), &self.envs.join(".trash"))?;
            }
            drop(lock);
            total = total.saturating_sub(env.size_bytes);
            report.freed_bytes += env.size_bytes;
            report.removed.push(env.digest.clone());
        }
        report.remaining_bytes = total;
        if policy.uv_cache {
            let cache = self.uv_cache_dir();
            match fsutil::try_lock_exclusive(&self.uv_cache_lock_path())? {
                Some(_lock) if cache.exists() => {
                    report.uv_cache_freed_bytes = fsutil::tree_size(&cache).0;
                    if !policy.dry_run {
                        fsutil::discard(&cache, &self.envs.join(".trash"))?;
                    }
                }
                Some(_) => {}
                None => report.uv_cache_busy = true,
            }
        }
        Ok(report)
    }
}

/// The host ids build sandboxes must use, checked against the backend.
fn build_ids(backend: &dyn Backend) -> Result<(u32, u32), EnvError> {
    let euid = nix::unistd::geteuid().as_raw();
    let expected = if euid == 0 {
        (BUILD_HOST_ID, BUILD_HOST_ID)
    } else {
        (euid, nix::unistd::getegid().as_raw())
    };
    match backend.host_ids() {
        Some((uid, _)) if uid != expected.0 => Err(EnvError::BuildIdentity {
            expected: expected.0,
            actual: uid,
        }),
        _ => Ok(expected),
    }
}

fn digest_of(request: &EnvRequest, toolchain: &Toolchain, interpreter: &Interpreter) -> String {
    DigestInput {
        recipe: RECIPE,
        requirements: request.requirements.lines(),
        toolchain: &toolchain.identity,
        interpreter: &interpreter.identity(),
        platform: &interpreter.platform,
        index_url: request.options.index_url.as_deref(),
        extra_index_urls: &request.options.extra_index_urls,
        exclude_newer: request.options.exclude_newer.as_deref(),
    }
    .digest()
}

/// One env build: what to build, and where.
#[derive(Clone, Copy)]
struct BuildJob<'a> {
    request: &'a EnvRequest,
    toolchain: &'a Toolchain,
    interpreter: &'a Interpreter,
    digest: &'a str,
    /// The build's directory (`.staging/<digest>.<pid>.<n>`).
    build_root: &'a Path,
    /// The env being built, `<build_root>/v1/<digest>`.
    staging: &'a Path,
    /// Where the env goes, `<data>/envs/v1/<digest>`.
    final_dir: &'a Path,
    /// The host uid and gid build sandboxes run as.
    ids: (u32, u32),
}

impl BuildJob<'_> {
    /// Create a directory the build sandboxes write: as root, it is the build ids'.
    fn make_dir(&self, dir: &Path, mode: u32) -> Result<(), EnvError> {
        fsutil::create_dir(dir, mode)?;
        if nix::unistd::geteuid().is_root() {
            let (uid, gid) = self.ids;
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io("chown", dir))?;
        }
        Ok(())
    }
}

/// How a resolve-and-install attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Installed,
    /// Wheel-only, and some package has none.
    NeedsSource,
}

/// Run one build step in the sandbox, with progress.
fn run_step(
    ctx: &BuildContext<'_>,
    step: BuildStep,
    text: &str,
    backend: &dyn Backend,
    progress: &mut dyn Progress,
) -> Result<RunResult, EnvError> {
    let spec = ctx.spec(step);
    let live = progress.step_started(step, text);
    let outcome = backend.run_with(
        &spec,
        &RunOptions {
            passthrough: live,
            ..RunOptions::default()
        },
    );
    let ok = matches!(&outcome, Ok(r) if r.status == Status::Ok);
    progress.step_finished(step, ok);
    outcome.map_err(|source| EnvError::Backend { step, source })
}

/// Turn a build step's sandbox result into an error when it did not succeed.
fn check_step(step: BuildStep, result: &RunResult) -> Result<(), EnvError> {
    match result.status {
        Status::Ok => Ok(()),
        Status::RuntimeError => Err(EnvError::Uv {
            step,
            exit_code: result.exit_code.unwrap_or(-1),
            message: uv::error_message(&result.stderr),
        }),
        Status::SetupError => Err(EnvError::BuildSandbox {
            step,
            status: "setup_error".into(),
            detail: result
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
        }),
        other => {
            let status = serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| format!("{other:?}"));
            let tail: Vec<&str> = result.stderr.lines().rev().take(5).collect();
            Err(EnvError::BuildSandbox {
                step,
                status,
                detail: format!(
                    "after {:.0} ms; peak memory {} MiB; last output: {}",
                    result.wall_ms,
                    result.peak_memory_bytes.unwrap_or(0) >> 20,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_pools_follow_the_cpu_limit_and_fit_the_pids_limit() {
        assert_eq!(thread_count(1.0, 64), 1);
        assert_eq!(thread_count(0.5, 64), 1);
        assert_eq!(thread_count(2.0, 64), 2);
        assert_eq!(thread_count(2.5, 64), 3);
        assert_eq!(thread_count(16.0, 16), 4);
        assert_eq!(thread_count(4.0, 2), 1);
        assert_eq!(thread_count(f64::NAN, 64), 1);
    }

    #[test]
    fn resolve_options_are_checked() {
        let ok = ResolveOptions {
            index_url: Some("https://pypi.org/simple".into()),
            exclude_newer: Some("2025-01-31T00:00:00Z".into()),
            ..ResolveOptions::default()
        };
        ok.validate().unwrap();
        for bad in [
            ResolveOptions {
                index_url: Some("file:///etc".into()),
                ..ResolveOptions::default()
            },
            ResolveOptions {
                extra_index_urls: vec!["https://a b".into()],
                ..ResolveOptions::default()
            },
            ResolveOptions {
                exclude_newer: Some("tomorrow; rm -rf /".into()),
                ..ResolveOptions::default()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(EnvError::Option { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn apply_binds_the_env_and_sets_thread_variables() {
        let dir = tempfile::tempdir().unwrap();
        let lock = fsutil::lock(&dir.path().join("l"), FlockArg::LockShared).unwrap();
        let env = Env {
            digest: "0123".into(),
            path: "/var/lib/kakoi/envs/v1/0123".into(),
            cache_hit: true,
            build_ms: 0.0,
            runtime_binds: vec![],
            _in_use: lock,
        };
        let mut spec = RunSpec::command(["python3"]);
        spec.limits.cpus = Some(2.0);
        spec.env.push(("OMP_NUM_THREADS".into(), "7".into()));
        env.apply(&mut spec);
        env.apply(&mut spec); // idempotent
        assert_eq!(spec.binds_ro.len(), 1);
        assert_eq!(spec.binds_ro[0].host, spec.binds_ro[0].sandbox);
        let get = |k: &str| {
            spec.env
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("OMP_NUM_THREADS").as_deref(),
            Some("7"),
            "caller's value kept"
        );
        assert_eq!(get("OPENBLAS_NUM_THREADS").as_deref(), Some("2"));
        assert!(
            get("PATH")
                .unwrap()
                .starts_with("/var/lib/kakoi/envs/v1/0123/venv/bin:")
        );
        assert_eq!(
            env.python(),
            PathBuf::from("/var/lib/kakoi/envs/v1/0123/venv/bin/python")
        );
        assert_eq!(spec.env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }
}
