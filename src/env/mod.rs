//! Python environments: a toolchain, content-addressed envs built with uv inside the
//! sandbox, and what a run needs to use one.
//!
//! ```text
//!  EnvRequest (requirements.txt + resolution options)
//!      │ normalize (requirements.rs)
//!      ▼
//!  digest = sha256(requirements, toolchain identity, interpreter, platform, options, recipe)
//!      │
//!      ├─ <data>/envs/v1/<digest>/ exists ──▶ cache hit: shared flock ("in use"), no uv, no network
//!      │
//!      └─ otherwise, under an exclusive flock on .locks/<digest>.lock:
//!           build dir .staging/<digest>.<pid>.<n>/ = v1/<digest>/ (the env) + uv-cache/
//!             (the shared cache moved in under a lease), bound writable at <data>/envs, so
//!             the env is at its FINAL path and in one mount with the cache
//!           sandbox run 1 (network on): uv pip compile --no-build → requirements.lock (hashes)
//!           sandbox run 2 (network on): uv venv + uv pip sync --no-build --link-mode hardlink
//!             (a package without a wheel → cache moved back, both runs again with an empty
//!              private uv-cache/ and source builds allowed)
//!           sandbox run 3 (no network, no cache): python -I -S compileall (unchecked-hash pycs)
//!           chown to the store owner, drop write bits, rename(v1/<digest>, <digest>)
//! ```
//!
//! - [`toolchain`]: the interpreter, uv and ruff. With Nix on PATH, `nix-env/` is realised
//!   with `nix build` and only its closure is bound into sandboxes ([`nix`]); otherwise the
//!   host's python3 is used and pinned uv/ruff wheels are downloaded from PyPI on first use,
//!   verified by sha256 and unpacked atomically (`bootstrap.rs`).
//! - [`EnvStore`]: `<data>/envs/v1/<digest>` (the env, its lock file `requirements.lock`
//!   and `kakoi-env.json` beside the venv), `ensure`, `list`, `remove`, `gc`.
//! - [`Env`]: a built env held in use (shared flock) for as long as it lives;
//!   [`Env::apply`] binds it read-only into a [`RunSpec`](crate::RunSpec) at the same path.
//!
//! The env is built at its final absolute path (the staging directory is bound there inside
//! the build sandbox), so scripts, `.pyc` files (`co_filename`) and `RECORD` entries name the
//! path the env is used at. `.pyc` files are written as unchecked-hash pycs (PEP 552): they do
//! not depend on file mtimes, and the env is read-only so nothing can make them stale.

mod bootstrap;
pub mod datadir;
pub mod digest;
mod fsutil;
pub mod nix;
pub mod progress;
pub mod requirements;
mod store;
pub mod toolchain;
mod uv;

use std::path::PathBuf;

pub use bootstrap::{BootstrapError, PINNED_RUFF, PINNED_UV};
pub use datadir::{DataDirError, default_data_dir};
pub use progress::{BuildStep, NoProgress, Progress};
pub use requirements::{Requirements, RequirementsError};
pub use store::{
    BUILD_HOST_ID, BuildLimits, Env, EnvInfo, EnvRequest, EnvStore, GcPolicy, GcReport,
    ResolveOptions, StoreConfig,
};
pub use toolchain::{Interpreter, Toolchain, ToolchainError, ToolchainKind, ToolchainMode};

use crate::result::Status;

/// Why an environment could not be built, found or removed.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The data directory is unusable.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The requirements file was refused before uv ran.
    #[error(transparent)]
    Requirements(#[from] RequirementsError),
    /// A resolution option is invalid.
    #[error("invalid {option} {value:?}: {reason}")]
    Option {
        /// Which option (`--index-url`, ...).
        option: &'static str,
        /// The value given.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The toolchain (python, uv, ruff) is not available.
    #[error(transparent)]
    Toolchain(#[from] ToolchainError),
    /// uv refused the requirements or failed to install them (or, in the compile step, the
    /// interpreter failed); `message` is the program's own.
    #[error("{step} failed: {} exited with {exit_code}:\n{message}", step.program())]
    Uv {
        /// Which step ran uv.
        step: BuildStep,
        /// uv's exit code.
        exit_code: i32,
        /// uv's error output (progress lines removed).
        message: String,
    },
    /// The build sandbox ended in another way (timeout, memory, setup failure).
    #[error("{step} did not finish: {status} ({detail})")]
    BuildSandbox {
        /// Which step.
        step: BuildStep,
        /// How the sandbox run ended (`timeout`, `oom`, `setup_error`, ...).
        status: String,
        /// What the sandbox reported.
        detail: String,
    },
    /// The backend could not start the build sandbox.
    #[error("cannot start the {step} sandbox")]
    Backend {
        /// Which step.
        step: BuildStep,
        /// Cause.
        #[source]
        source: crate::backend::BackendError,
    },
    /// The backend maps the sandbox user to a host id other than the store's build id.
    #[error(
        "the build backend maps the sandbox user to host uid {actual}, but env builds must run as uid {expected} so the shared uv cache stays writable"
    )]
    BuildIdentity {
        /// The id builds must use ([`BUILD_HOST_ID`] as root, the launcher's uid otherwise).
        expected: u32,
        /// The backend's id.
        actual: u32,
    },
    /// A filesystem operation of the store failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was attempted (`create`, `rename`, `lock`, ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No env with this digest exists.
    #[error("no environment {digest} in {store}")]
    NotFound {
        /// The digest (or prefix) asked for.
        digest: String,
        /// The store directory.
        store: PathBuf,
    },
    /// A digest prefix matches more than one env.
    #[error("{prefix:?} matches more than one environment; give more characters")]
    Ambiguous {
        /// The prefix.
        prefix: String,
    },
    /// The env is used by a run right now.
    #[error("environment {digest} is in use by a running sandbox")]
    InUse {
        /// The digest.
        digest: String,
    },
    /// The store holds something kakoi did not write.
    #[error("{path} is not a kakoi environment: {reason}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl EnvError {
    /// The stage name used in a result's `error.stage` for `env_error`.
    pub fn stage(&self) -> &'static str {
        match self {
            EnvError::Requirements(_) | EnvError::Option { .. } => "env-requirements",
            EnvError::Toolchain(_) => "env-toolchain",
            EnvError::Uv { step, .. }
            | EnvError::BuildSandbox { step, .. }
            | EnvError::Backend { step, .. } => step.stage(),
            _ => "env-store",
        }
    }

    /// A remedy, where one is known.
    pub fn hint(&self) -> Option<String> {
        match self {
            EnvError::Uv {
                step: BuildStep::Resolve,
                ..
            } => Some(
                "check the package names and version pins in the requirements (uv's message above names the conflict)".into(),
            ),
            EnvError::Uv {
                step: BuildStep::Install,
                ..
            } => Some(
                "a package failed to build or install; pin a version that ships a wheel for this platform".into(),
            ),
            EnvError::BuildSandbox { status, .. } if status == "timeout" => {
                Some("raise the build timeout with --build-timeout".into())
            }
            EnvError::BuildSandbox { status, .. } if status == "oom" => {
                Some("raise the build memory limit with --build-memory".into())
            }
            EnvError::InUse { .. } => Some("wait for the run to finish, then retry".into()),
            EnvError::BuildIdentity { expected, .. } => Some(format!(
                "create the build sandbox with SandboxConfig {{ host_id: Some({expected}), .. }} (EnvStore::build_sandbox_config)"
            )),
            EnvError::Toolchain(e) => e.hint(),
            EnvError::DataDir(e) => e.hint(),
            _ => None,
        }
    }

    /// The uv exit code, when uv itself failed.
    pub fn uv_exit_code(&self) -> Option<i32> {
        match self {
            EnvError::Uv { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }

    /// The result status this error gives a run (always [`Status::EnvError`]).
    pub fn status(&self) -> Status {
        Status::EnvError
    }

    /// A [`RunResult`](crate::RunResult) with status `env_error` for a run that never
    /// started because its environment could not be prepared.
    pub fn to_result(&self, env_ms: f64) -> crate::RunResult {
        use crate::result::{Isolation, RunResult, SetupFailure, Timings};
        let detail = match self {
            EnvError::Uv {
                step, exit_code, ..
            } => Some(format!("{} exited with {exit_code}", step.command())),
            EnvError::BuildSandbox { status, .. } => Some(status.clone()),
            _ => None,
        };
        RunResult {
            status: Status::EnvError,
            exit_code: None,
            signal: None,
            signal_name: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_base64: None,
            stderr_base64: None,
            stdout_truncated: false,
            stderr_truncated: false,
            wall_ms: 0.0,
            cpu_user_ms: 0.0,
            cpu_sys_ms: 0.0,
            peak_memory_bytes: None,
            oom_killed: false,
            seccomp_syscall: None,
            error: Some(SetupFailure {
                stage: self.stage().into(),
                detail,
                detail_index: None,
                errno: 0,
                errno_name: String::new(),
                message: error_chain(self),
                hint: self.hint(),
            }),
            timings: Timings {
                env_ms,
                ..Timings::default()
            },
            isolation: Isolation::default(),
            backend: "native".into(),
            files: vec![],
            env: None,
            lint: None,
            format: None,
        }
    }
}

/// The error and its causes on one line each.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
