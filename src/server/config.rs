//! Server configuration in two layers: [`RawConfig`] (serde, from the TOML file, then
//! overlaid with flags and environment variables; no logic) and [`ServerConfig`], the
//! immutable result of [`RawConfig::validate`]. Only a `ServerConfig` reaches the server.
//!
//! ```toml
//! listen = "127.0.0.1:8080"          # or "unix:/run/kakoi/kakoi.sock"
//! token_file = "/etc/kakoi/token"    # or KAKOI_TOKEN; no token: no auth (loopback only!)
//! workers = 2                        # concurrent sandboxes (default: cores)
//! queue = 64                         # runs that may wait for a sandbox
//! queue_timeout = 30                 # seconds a run may wait
//! grace_period = 10                  # seconds running sandboxes get on SIGTERM
//! max_upload = "16M"                 # request body limit (checked while streaming)
//! allow_network = false              # may a request ask for network = true
//! allow_commands = false             # may a client run commands, not only Python (MCP)
//! log_format = "text"                # or "json"
//! data_dir = "/var/lib/kakoi"        # env store, toolchain, uv cache (or --data-dir, KAKOI_DATA_DIR)
//! toolchain = "auto"                 # auto | nix | host (as `kakoi env --toolchain`)
//! backend = "native"                 # requests that do not say: native | docker
//!
//! [envs]                             # requirements.txt → content-addressed environments
//! enabled = true
//! build_workers = 1                  # concurrent build sandboxes (a separate launcher pool)
//! build_timeout = 900                # seconds per build step
//! build_memory = "4G"
//!
//! [files]                            # what a run wrote under out/ comes back in `files`
//! max_count = 64
//! max_total = "10M"                  # all files together
//! max_file = "10M"                   # one file
//!
//! [docker]                           # backend = "docker" (for comparison with native runs)
//! enabled = false
//! image = "kakoi-worker:0.1.0"
//!
//! [limits]                           # defaults for requests that do not say
//! timeout = 10
//! memory = "256M"
//!
//! [max_limits]                       # the most a request may ask for (default: [limits])
//! timeout = 60
//! memory = "1G"
//!
//! [sandbox]
//! cgroups = "auto"                   # auto | required | off
//! seccomp = "default"                # default | off | /path/to/policy.json
//! landlock = "strict"                # strict | best-effort | off
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::worker::{CgroupSetting, LandlockChoice, SeccompChoice, WorkerSettings};
use crate::cli::common::parse_size;
use crate::env::{BuildLimits, ToolchainMode};
use crate::spec::{
    Collect, DEFAULT_COLLECT_BYTES, DEFAULT_COLLECT_DIR, DEFAULT_COLLECT_FILES, DEFAULT_CPUS,
    DEFAULT_MEMORY, DEFAULT_OUTPUT_LIMIT, DEFAULT_PIDS, DEFAULT_TIMEOUT, DEFAULT_TMP_SIZE, Limits,
};

/// A size: bytes, or a string with a binary unit (`"256M"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// Bytes.
    Bytes(u64),
    /// `64K`, `256M`, `1G`.
    Text(String),
}

impl SizeValue {
    fn bytes(&self, what: &str) -> Result<u64, ConfigError> {
        match self {
            SizeValue::Bytes(b) => Ok(*b),
            SizeValue::Text(t) => parse_size(t).map_err(|reason| ConfigError::Invalid {
                key: what.to_owned(),
                reason,
            }),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Limits as written in the file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Wall-clock seconds.
    pub timeout: Option<f64>,
    /// Bytes or `256M`.
    pub memory: Option<SizeValue>,
    /// Tasks.
    pub pids: Option<u64>,
    /// Cores.
    pub cpus: Option<f64>,
    /// Per-stream output cap.
    pub output_limit: Option<SizeValue>,
    /// Size of /tmp, /work, /dev/shm.
    pub tmp_size: Option<SizeValue>,
}

/// `[sandbox]` as written in the file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    /// `auto`, `required`, `off`.
    pub cgroups: Option<CgroupSetting>,
    /// `default`, `off`, or a policy path.
    pub seccomp: Option<String>,
    /// `strict`, `best-effort`, `off`.
    pub landlock: Option<LandlockChoice>,
    /// Runtime directory of the sandboxes.
    pub runtime_dir: Option<PathBuf>,
}

/// Which backend runs a request's program.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// kakoi's sandbox (namespaces, cgroups, seccomp, Landlock).
    #[default]
    Native,
    /// A Docker container (for side-by-side comparison; the operator must enable it).
    Docker,
}

impl BackendKind {
    /// `native` or `docker`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Docker => "docker",
        }
    }
}

/// `[envs]` as written in the file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvs {
    /// Build environments for requirements (default true).
    pub enabled: Option<bool>,
    /// Concurrent build sandboxes (default 1).
    pub build_workers: Option<usize>,
    /// Seconds per build step (default 900).
    pub build_timeout: Option<f64>,
    /// Memory of a build sandbox (default 4G).
    pub build_memory: Option<SizeValue>,
}

/// `[files]` as written in the file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    /// Most files returned.
    pub max_count: Option<usize>,
    /// Most bytes returned, all files together.
    pub max_total: Option<SizeValue>,
    /// Largest file returned.
    pub max_file: Option<SizeValue>,
}

/// `[docker]` as written in the file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDocker {
    /// Accept `backend = docker` requests.
    pub enabled: Option<bool>,
    /// Worker image.
    pub image: Option<String>,
}

/// The configuration as written: every field optional, no logic.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `HOST:PORT` or `unix:/path`.
    pub listen: Option<String>,
    /// Bearer token (prefer `token_file` or `KAKOI_TOKEN`).
    pub token: Option<String>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// Concurrent sandboxes.
    pub workers: Option<usize>,
    /// Queue capacity.
    pub queue: Option<usize>,
    /// Seconds a run may wait in the queue.
    pub queue_timeout: Option<f64>,
    /// Seconds running sandboxes get on shutdown.
    pub grace_period: Option<f64>,
    /// Request body limit.
    pub max_upload: Option<SizeValue>,
    /// Whether requests may turn the network on.
    pub allow_network: Option<bool>,
    /// Whether non-Python commands may be run (the MCP `run_command` tool).
    pub allow_commands: Option<bool>,
    /// `text` or `json`.
    pub log_format: Option<LogFormat>,
    /// Replace a launcher after this many runs (0: never).
    pub max_runs_per_worker: Option<u64>,
    /// ruff binary used for `format`/`lint`.
    pub ruff: Option<PathBuf>,
    /// Interpreter for programs without requirements.
    pub python: Option<PathBuf>,
    /// Data directory of the environment store and toolchain.
    pub data_dir: Option<PathBuf>,
    /// Toolchain: `auto`, `nix` or `host`.
    pub toolchain: Option<ToolchainMode>,
    /// Backend of requests that do not name one.
    pub backend: Option<BackendKind>,
    /// Defaults.
    pub limits: Option<RawLimits>,
    /// Maxima.
    pub max_limits: Option<RawLimits>,
    /// Sandbox settings.
    pub sandbox: Option<RawSandbox>,
    /// Environments.
    pub envs: Option<RawEnvs>,
    /// Returned files.
    pub files: Option<RawFiles>,
    /// The Docker backend.
    pub docker: Option<RawDocker>,
    /// The MCP server (`[mcp]`, see `crate::mcp::config`).
    pub mcp: Option<crate::mcp::config::RawMcpConfig>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid configuration file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or malformed.
    #[error("invalid configuration value for {key}: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "http://{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Concrete limit values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct LimitValues {
    /// Wall-clock seconds.
    pub timeout: f64,
    /// Bytes.
    pub memory: u64,
    /// Tasks.
    pub pids: u64,
    /// Cores.
    pub cpus: f64,
    /// Per-stream output cap in bytes.
    pub output_limit: u64,
    /// Size of each tmpfs in bytes.
    pub tmp_size: u64,
}

impl Default for LimitValues {
    fn default() -> Self {
        LimitValues {
            timeout: DEFAULT_TIMEOUT.as_secs_f64(),
            memory: DEFAULT_MEMORY,
            pids: DEFAULT_PIDS,
            cpus: DEFAULT_CPUS,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            tmp_size: DEFAULT_TMP_SIZE,
        }
    }
}

/// Limits a request may ask for (the rest are the operator's).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, serde::Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct RequestedLimits {
    /// Wall-clock seconds.
    pub timeout: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    /// Tasks.
    pub pids: Option<u64>,
    /// Cores.
    pub cpus: Option<f64>,
}

/// The operator's limits: defaults, maxima, and whether the network may be turned on.
///
/// A request may lower any limit and may raise it up to the maximum; asking for more than
/// the maximum is refused (HTTP 400, naming the limit and the maximum), never silently
/// clamped, so a caller never gets less than it believes it got.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Policy {
    /// Used when a request does not say.
    pub defaults: LimitValues,
    /// The most a request may ask for.
    pub max: LimitValues,
    /// Whether `network = true` is allowed.
    pub allow_network: bool,
}

impl Policy {
    /// The limits a run gets, or why the request asks too much.
    pub fn apply(&self, req: &RequestedLimits) -> Result<Limits, String> {
        fn pick<T: PartialOrd + Copy + std::fmt::Display>(
            what: &str,
            unit: &str,
            asked: Option<T>,
            default: T,
            max: T,
        ) -> Result<T, String> {
            match asked {
                Some(v) if v > max => Err(format!(
                    "{what} {v}{unit} is over this server's maximum of {max}{unit}"
                )),
                Some(v) => Ok(v),
                None => Ok(default),
            }
        }
        let d = &self.defaults;
        let m = &self.max;
        Ok(Limits {
            timeout: Some(pick("timeout", " s", req.timeout, d.timeout, m.timeout)?),
            memory: Some(pick("memory", " bytes", req.memory, d.memory, m.memory)?),
            pids: Some(pick("pids", "", req.pids, d.pids, m.pids)?),
            cpus: Some(pick("cpus", "", req.cpus, d.cpus, m.cpus)?),
            output_limit: Some(d.output_limit),
            tmp_size: Some(d.tmp_size),
            cpu_time: None,
            nofile: None,
        })
    }
}

/// How the server provides environments.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvSettings {
    /// Requirements are served (else they are refused with 422).
    pub enabled: bool,
    /// Data directory (`None`: `KAKOI_DATA_DIR`, then the per-user default, as `kakoi env`).
    pub data_dir: Option<PathBuf>,
    /// Toolchain mode.
    pub toolchain: ToolchainMode,
    /// Concurrent build sandboxes.
    pub build_workers: usize,
    /// Limits of a build sandbox.
    pub build_limits: BuildLimits,
}

/// The Docker backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    /// Requests may ask for `backend = docker`.
    pub enabled: bool,
    /// Worker image.
    pub image: String,
}

/// The validated, immutable server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen.
    pub listen: Listen,
    /// Bearer token, if auth is on.
    pub token: Option<String>,
    /// Concurrent sandboxes.
    pub workers: usize,
    /// Queue capacity.
    pub queue: usize,
    /// Queue wait limit.
    pub queue_timeout: Duration,
    /// Shutdown grace period.
    pub grace_period: Duration,
    /// Request body limit in bytes.
    pub max_upload: u64,
    /// Limits and network policy.
    pub policy: Policy,
    /// Whether non-Python commands may be run.
    pub allow_commands: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Launcher recycling (0: never).
    pub max_runs_per_worker: u64,
    /// Configured ruff binary, if any (else `KAKOI_RUFF`, then `PATH`).
    pub ruff: Option<PathBuf>,
    /// Interpreter for programs without requirements.
    pub python: PathBuf,
    /// Sandbox settings for the launchers.
    pub worker: WorkerSettings,
    /// Environments.
    pub envs: EnvSettings,
    /// Caps of returned files (the directory is always `out`).
    pub files: Collect,
    /// Backend of requests that do not name one.
    pub backend: BackendKind,
    /// The Docker backend.
    pub docker: DockerSettings,
    /// The MCP server's settings (`[mcp]`).
    pub mcp: crate::mcp::config::McpConfig,
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default request body limit.
pub const DEFAULT_MAX_UPLOAD: u64 = 16 << 20;

impl RawConfig {
    /// Read a TOML file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// `self` with every field that `over` sets replaced (flags over the file).
    pub fn overlay(mut self, over: RawConfig) -> RawConfig {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            listen,
            token,
            token_file,
            workers,
            queue,
            queue_timeout,
            grace_period,
            max_upload,
            allow_network,
            allow_commands,
            log_format,
            max_runs_per_worker,
            ruff,
            python,
            data_dir,
            toolchain,
            backend,
            limits,
            max_limits
        );
        macro_rules! merge {
            ($section:ident, $default:expr, [$($f:ident),*]) => {
                if let Some(o) = over.$section {
                    let mine = self.$section.get_or_insert_with(|| $default);
                    $( if o.$f.is_some() { mine.$f = o.$f; } )*
                }
            };
        }
        merge!(
            envs,
            RawEnvs::default(),
            [enabled, build_workers, build_timeout, build_memory]
        );
        merge!(files, RawFiles::default(), [max_count, max_total, max_file]);
        merge!(docker, RawDocker::default(), [enabled, image]);
        merge!(
            sandbox,
            RawSandbox::default(),
            [cgroups, seccomp, landlock, runtime_dir]
        );
        if let Some(m) = over.mcp {
            self.mcp = Some(self.mcp.unwrap_or_default().overlay(m));
        }
        self
    }

    /// Check every value and produce the configuration the server runs with.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = match listen_text.strip_prefix("unix:") {
            Some(path) if Path::new(path).is_absolute() => Listen::Unix(path.into()),
            Some(path) => {
                return Err(invalid(
                    "listen",
                    format!("unix socket path {path:?} must be absolute"),
                ));
            }
            None => Listen::Tcp(listen_text.parse().map_err(|_| {
                invalid(
                    "listen",
                    format!("{listen_text:?} is neither HOST:PORT nor unix:/path"),
                )
            })?),
        };
        let token = match (self.token, self.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "token",
                    "give either token or token_file, not both".into(),
                ));
            }
            (Some(t), None) => Some(t),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if let Some(t) = &token
            && t.len() < 16
        {
            return Err(invalid(
                "token",
                "a bearer token must be at least 16 characters".into(),
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.workers.unwrap_or(cores);
        if workers == 0 || workers > 1024 {
            return Err(invalid("workers", format!("{workers} is not in 1..=1024")));
        }
        let seconds = |key: &str, v: Option<f64>, default: f64| -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(default);
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                return Err(invalid(
                    key,
                    format!("{v} is not a number of seconds in 0..=86400"),
                ));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let defaults = limit_values("limits", self.limits.as_ref(), &LimitValues::default())?;
        let max = limit_values("max_limits", self.max_limits.as_ref(), &defaults)?;
        for (what, over) in [
            ("timeout", defaults.timeout > max.timeout),
            ("memory", defaults.memory > max.memory),
            ("pids", defaults.pids > max.pids),
            ("cpus", defaults.cpus > max.cpus),
            ("output_limit", defaults.output_limit > max.output_limit),
            ("tmp_size", defaults.tmp_size > max.tmp_size),
        ] {
            if over {
                return Err(invalid(
                    &format!("limits.{what}"),
                    "the default is over max_limits".into(),
                ));
            }
        }
        let sandbox = self.sandbox.unwrap_or_default();
        let seccomp = match sandbox.seccomp.as_deref() {
            None | Some("default") => SeccompChoice::Default,
            Some("off") => SeccompChoice::Off,
            Some(path) => SeccompChoice::File(path.into()),
        };
        let max_upload = match &self.max_upload {
            Some(s) => s.bytes("max_upload")?,
            None => DEFAULT_MAX_UPLOAD,
        };
        if max_upload < 1024 {
            return Err(invalid("max_upload", format!("{max_upload} is under 1K")));
        }
        let envs = envs_settings(self.envs.unwrap_or_default(), self.data_dir, self.toolchain)?;
        let files = files_caps(self.files.unwrap_or_default())?;
        let raw_docker = self.docker.unwrap_or_default();
        let docker = DockerSettings {
            enabled: raw_docker.enabled.unwrap_or(false),
            image: raw_docker
                .image
                .unwrap_or_else(|| crate::backend::docker::DEFAULT_IMAGE.into()),
        };
        if docker.image.trim().is_empty() {
            return Err(invalid("docker.image", "the image name is empty".into()));
        }
        let backend = self.backend.unwrap_or_default();
        if backend == BackendKind::Docker && !docker.enabled {
            return Err(invalid(
                "backend",
                "docker is the default backend but the docker backend is not enabled ([docker] enabled = true, or --docker)".into(),
            ));
        }
        let mcp = self
            .mcp
            .unwrap_or_default()
            .validate()
            .map_err(|e| invalid(&format!("mcp.{}", e.key), e.reason))?;
        Ok(ServerConfig {
            listen,
            token,
            workers,
            queue: self.queue.unwrap_or(64),
            queue_timeout: seconds("queue_timeout", self.queue_timeout, 30.0)?,
            grace_period: seconds("grace_period", self.grace_period, 10.0)?,
            max_upload,
            policy: Policy {
                defaults,
                max,
                allow_network: self.allow_network.unwrap_or(false),
            },
            allow_commands: self.allow_commands.unwrap_or(false),
            log_format: self.log_format.unwrap_or_default(),
            max_runs_per_worker: self.max_runs_per_worker.unwrap_or(0),
            ruff: self.ruff,
            python: self
                .python
                .unwrap_or_else(|| crate::cli::run::HOST_PYTHON.into()),
            worker: WorkerSettings {
                cgroups: sandbox.cgroups.unwrap_or_default(),
                seccomp,
                landlock: sandbox.landlock.unwrap_or_default(),
                runtime_dir: sandbox.runtime_dir,
                host_id: None,
                manager_pid: 0,
            },
            envs,
            files,
            backend,
            docker,
            mcp,
        })
    }
}

fn envs_settings(
    raw: RawEnvs,
    data_dir: Option<PathBuf>,
    toolchain: Option<ToolchainMode>,
) -> Result<EnvSettings, ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        key: key.to_owned(),
        reason,
    };
    let defaults = BuildLimits::default();
    let build_workers = raw.build_workers.unwrap_or(1);
    if !(1..=64).contains(&build_workers) {
        return Err(invalid(
            "envs.build_workers",
            format!("{build_workers} is not in 1..=64"),
        ));
    }
    let timeout = raw.build_timeout.unwrap_or(defaults.timeout_secs);
    if !(timeout.is_finite() && (1.0..=86_400.0).contains(&timeout)) {
        return Err(invalid(
            "envs.build_timeout",
            format!("{timeout} is not a number of seconds in 1..=86400"),
        ));
    }
    let memory = match &raw.build_memory {
        Some(m) => m.bytes("envs.build_memory")?,
        None => defaults.memory,
    };
    if memory < 64 << 20 {
        return Err(invalid(
            "envs.build_memory",
            format!("{memory} bytes is under 64M"),
        ));
    }
    if let Some(d) = &data_dir
        && !d.is_absolute()
    {
        return Err(invalid(
            "data_dir",
            format!("{} must be an absolute path", d.display()),
        ));
    }
    Ok(EnvSettings {
        enabled: raw.enabled.unwrap_or(true),
        data_dir,
        toolchain: toolchain.unwrap_or_default(),
        build_workers,
        build_limits: BuildLimits {
            timeout_secs: timeout,
            memory,
            ..defaults
        },
    })
}

fn files_caps(raw: RawFiles) -> Result<Collect, ConfigError> {
    let size = |key: &str, v: &Option<SizeValue>| match v {
        Some(s) => s.bytes(key),
        None => Ok(DEFAULT_COLLECT_BYTES),
    };
    let caps = Collect {
        dir: PathBuf::from(DEFAULT_COLLECT_DIR),
        max_files: raw.max_count.unwrap_or(DEFAULT_COLLECT_FILES),
        max_total_bytes: size("files.max_total", &raw.max_total)?,
        max_file_bytes: size("files.max_file", &raw.max_file)?,
    };
    // The sandbox's own ranges (the same check a run gets).
    let probe = crate::spec::RunSpec {
        argv: vec!["/bin/true".into()],
        collect: Some(caps.clone()),
        ..Default::default()
    };
    probe.validate().map_err(|e| ConfigError::Invalid {
        key: "files".into(),
        reason: e.to_string(),
    })?;
    Ok(caps)
}

fn limit_values(
    section: &str,
    raw: Option<&RawLimits>,
    base: &LimitValues,
) -> Result<LimitValues, ConfigError> {
    let Some(raw) = raw else {
        return Ok(*base);
    };
    let key = |k: &str| format!("{section}.{k}");
    let size = |k: &str, v: &Option<SizeValue>, d: u64| match v {
        Some(s) => s.bytes(&key(k)),
        None => Ok(d),
    };
    let out = LimitValues {
        timeout: raw.timeout.unwrap_or(base.timeout),
        memory: size("memory", &raw.memory, base.memory)?,
        pids: raw.pids.unwrap_or(base.pids),
        cpus: raw.cpus.unwrap_or(base.cpus),
        output_limit: size("output_limit", &raw.output_limit, base.output_limit)?,
        tmp_size: size("tmp_size", &raw.tmp_size, base.tmp_size)?,
    };
    // The sandbox's own ranges (the same checks a run gets).
    let probe = crate::spec::RunSpec {
        argv: vec!["/bin/true".into()],
        limits: Limits {
            timeout: Some(out.timeout),
            memory: Some(out.memory),
            pids: Some(out.pids),
            cpus: Some(out.cpus),
            output_limit: Some(out.output_limit),
            tmp_size: Some(out.tmp_size),
            cpu_time: None,
            nofile: None,
        },
        ..Default::default()
    };
    probe.validate().map_err(|e| ConfigError::Invalid {
        key: section.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_flags_and_defaults_combine() {
        let file: RawConfig = toml::from_str(
            r#"
            listen = "unix:/run/kakoi/test.sock"
            workers = 3
            allow_network = true
            [limits]
            timeout = 5
            memory = "128M"
            [max_limits]
            timeout = 60
            [sandbox]
            landlock = "best-effort"
            seccomp = "off"
            "#,
        )
        .unwrap();
        let flags = RawConfig {
            workers: Some(1),
            ..RawConfig::default()
        };
        let c = file.overlay(flags).validate().unwrap();
        assert_eq!(c.listen, Listen::Unix("/run/kakoi/test.sock".into()));
        assert_eq!(c.workers, 1);
        assert!(c.policy.allow_network);
        assert_eq!(c.policy.defaults.timeout, 5.0);
        assert_eq!(c.policy.defaults.memory, 128 << 20);
        assert_eq!(c.policy.max.timeout, 60.0);
        assert_eq!(
            c.policy.max.memory,
            128 << 20,
            "max defaults to the defaults"
        );
        assert_eq!(c.worker.landlock, LandlockChoice::BestEffort);
        assert_eq!(c.worker.seccomp, SeccompChoice::Off);
        assert_eq!(c.max_upload, DEFAULT_MAX_UPLOAD);
    }

    #[test]
    fn bad_values_are_named() {
        let err = |toml_text: &str| {
            let raw: Result<RawConfig, _> = toml::from_str(toml_text);
            match raw {
                Err(e) => e.to_string(),
                Ok(r) => r.validate().unwrap_err().to_string(),
            }
        };
        assert!(err("listen = \"nowhere\"").contains("listen"));
        assert!(err("listen = \"unix:rel.sock\"").contains("absolute"));
        assert!(err("wrokers = 2").contains("unknown field"));
        assert!(err("workers = 0").contains("workers"));
        assert!(err("token = \"short\"").contains("16 characters"));
        assert!(err("[limits]\nmemory = \"lots\"").contains("limits.memory"));
        assert!(
            err("[limits]\ntimeout = 20\n[max_limits]\ntimeout = 10").contains("over max_limits")
        );
        assert!(err("[limits]\npids = 0").contains("pids"));
        assert!(err("queue_timeout = -1").contains("queue_timeout"));
    }

    #[test]
    fn envs_files_and_docker_sections_combine_with_flags() {
        let file: RawConfig = toml::from_str(
            r#"
            data_dir = "/srv/kakoi"
            toolchain = "host"
            [envs]
            build_workers = 2
            build_timeout = 300
            build_memory = "2G"
            [files]
            max_count = 8
            max_total = "1M"
            [docker]
            image = "my-worker:1"
            "#,
        )
        .unwrap();
        let c = file.clone().validate().unwrap();
        assert!(c.envs.enabled);
        assert_eq!(c.envs.data_dir.as_deref(), Some(Path::new("/srv/kakoi")));
        assert_eq!(c.envs.toolchain, ToolchainMode::Host);
        assert_eq!(c.envs.build_workers, 2);
        assert_eq!(c.envs.build_limits.timeout_secs, 300.0);
        assert_eq!(c.envs.build_limits.memory, 2 << 30);
        assert_eq!(c.files.dir, Path::new("out"));
        assert_eq!(c.files.max_files, 8);
        assert_eq!(c.files.max_total_bytes, 1 << 20);
        assert_eq!(c.files.max_file_bytes, DEFAULT_COLLECT_BYTES);
        assert!(!c.docker.enabled);
        assert_eq!(c.docker.image, "my-worker:1");
        assert_eq!(c.backend, BackendKind::Native);
        // Flags: another data dir, no envs, docker on and the default backend; the file's
        // other keys of the same sections stay.
        let flags = RawConfig {
            data_dir: Some("/var/lib/other".into()),
            backend: Some(BackendKind::Docker),
            envs: Some(RawEnvs {
                enabled: Some(false),
                ..RawEnvs::default()
            }),
            docker: Some(RawDocker {
                enabled: Some(true),
                image: None,
            }),
            ..RawConfig::default()
        };
        let c = file.overlay(flags).validate().unwrap();
        assert!(!c.envs.enabled);
        assert_eq!(c.envs.build_workers, 2);
        assert_eq!(
            c.envs.data_dir.as_deref(),
            Some(Path::new("/var/lib/other"))
        );
        assert!(c.docker.enabled);
        assert_eq!(c.docker.image, "my-worker:1");
        assert_eq!(c.backend, BackendKind::Docker);
        // Defaults.
        let d = RawConfig::default().validate().unwrap();
        assert_eq!(d.files, Collect::default());
        assert_eq!(d.envs.build_workers, 1);
        assert!(d.envs.enabled && !d.docker.enabled);
        assert_eq!(d.docker.image, crate::backend::docker::DEFAULT_IMAGE);
    }

    #[test]
    fn bad_envs_files_and_docker_values_are_named() {
        let err = |toml_text: &str| {
            toml::from_str::<RawConfig>(toml_text)
                .map_err(|e| e.to_string())
                .and_then(|r| r.validate().map_err(|e| e.to_string()))
                .unwrap_err()
        };
        assert!(err("backend = \"docker\"").contains("not enabled"));
        assert!(err("backend = \"podman\"").contains("unknown variant"));
        assert!(err("data_dir = \"relative/dir\"").contains("absolute"));
        assert!(err("toolchain = \"conda\"").contains("unknown variant"));
        assert!(err("[envs]\nbuild_workers = 0").contains("envs.build_workers"));
        assert!(err("[envs]\nbuild_timeout = 0").contains("envs.build_timeout"));
        assert!(err("[envs]\nbuild_memory = \"1M\"").contains("envs.build_memory"));
        assert!(err("[envs]\ncolour = 1").contains("unknown field"));
        assert!(err("[files]\nmax_count = 0").contains("files"));
        assert!(err("[files]\nmax_total = \"2G\"").contains("files"));
        assert!(err("[files]\nmax_file = \"lots\"").contains("files.max_file"));
        assert!(err("[docker]\nimage = \" \"").contains("docker.image"));
    }

    #[test]
    fn requests_may_lower_and_raise_to_the_maximum_never_above() {
        let policy = Policy {
            defaults: LimitValues::default(),
            max: LimitValues {
                timeout: 30.0,
                ..LimitValues::default()
            },
            allow_network: false,
        };
        let l = policy.apply(&RequestedLimits::default()).unwrap();
        assert_eq!(l.timeout, Some(10.0));
        assert_eq!(l.memory, Some(DEFAULT_MEMORY));
        let l = policy
            .apply(&RequestedLimits {
                timeout: Some(30.0),
                memory: Some(64 << 20),
                ..Default::default()
            })
            .unwrap();
        assert_eq!((l.timeout, l.memory), (Some(30.0), Some(64 << 20)));
        let e = policy
            .apply(&RequestedLimits {
                timeout: Some(31.0),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e, "timeout 31 s is over this server's maximum of 30 s");
        let e = policy
            .apply(&RequestedLimits {
                memory: Some(DEFAULT_MEMORY + 1),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.starts_with("memory "), "{e}");
    }
}
